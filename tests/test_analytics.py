"""Analytics endpoints over a small hand-built ledger, checked against sums worked out by hand.

The ledger (`LEDGER`) is 27 events in March 2026: two teams, four features, five users, three
priced models and an unpriced one, a request retried twice with a fallback, errors, cache hits,
two agent runs, a `tenant` property, unattributed calls, and one event before the window. Each
expected figure below is written out from that table, not recomputed by the code under test.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from meterline.analytics.params import BadParameter, NotFound, Scope
from meterline.analytics.queries import Analytics
from meterline.config import ModelConfig, StoreConfig
from meterline.events.schema import UsageEvent, events_to_arrow
from meterline.pricing.table import PriceTable
from meterline.store.base import Store
from meterline.store.clickhouse import ClickHouseStore
from meterline.store.duckdb import DuckDBStore

MINI, HAIKU, LLAMA, MYSTERY = "gpt-4o-mini", "claude-haiku-4-5", "llama-local", "mystery-7b"
PROVIDER = {MINI: "openai", HAIKU: "anthropic", LLAMA: "local", MYSTERY: "local"}
RESPONSE_MODEL = {MINI: "gpt-4o-mini-2024-07-18", HAIKU: "claude-haiku-4-5-20251001"}
PRICING_IDS = {"openai": "openai", "anthropic": "anthropic", "local": None}
MARCH = {"since": "2026-03-01T00:00:00Z", "until": "2026-03-15T00:00:00Z"}


def at(day: int, hour: int, minute: int = 0, second: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def event(
    number: int,
    request: int,
    started_at: datetime,
    model: str,
    cost: float | None,
    input_tokens: int,
    feature: str | None = None,
    user: str | None = None,
    team: str | None = None,
    *,
    attempt: int = 1,
    duration_ms: float = 1000.0,
    **fields: Any,
) -> UsageEvent:
    """One attempt; output tokens are a tenth of the input tokens."""
    return UsageEvent(
        event_id=f"e{number:02d}",
        request_id=f"r{request:02d}",
        attempt=attempt,
        started_at=started_at,
        ended_at=started_at + timedelta(milliseconds=duration_ms),
        duration_ms=duration_ms,
        operation="chat",
        provider=PROVIDER[model],
        requested_model=model,
        response_model=RESPONSE_MODEL.get(model),
        status_code=STATUS[fields.get("error_class", "none")],
        cost_usd=cost,
        input_tokens=input_tokens,
        output_tokens=input_tokens // 10,
        feature=feature,
        user=user,
        team=team,
        **fields,
    )


STATUS = {"none": 200, "rate_limit": 429, "timeout": 504, "context_length": 400, "server_error": 500}
ACME, GLOBEX = {"tenant": "acme"}, {"tenant": "globex"}
RUN_1 = {"agent_run_id": "run-1"}

# fmt: off
LEDGER = [
    # number, request, started, model, cost, input tokens, feature, user, team, ...
    event(1, 1, at(2, 9), MINI, 0.10, 1000, "search", "alice", "a", duration_ms=100, ttft_ms=50, properties=ACME),
    event(2, 2, at(2, 10), MINI, 0.20, 2000, "search", "bob", "a", duration_ms=200, ttft_ms=60, properties=ACME),
    event(3, 3, at(2, 11), HAIKU, 0.30, 3000, "chat", "alice", "a", properties=GLOBEX),
    event(4, 4, at(3, 9), HAIKU, 0.40, 4000, "chat", "carol", "b", properties=GLOBEX),
    event(5, 5, at(3, 10), MINI, 0.50, 5000, "summarize", "carol", "b"),
    event(6, 6, at(3, 11), LLAMA, None, 6000, "summarize", "dave", "b", duration_ms=600),
    event(7, 7, at(4, 9), LLAMA, None, 1000, "chat", None, "b", duration_ms=700, cache_read_tokens=400),
    event(8, 8, at(4, 10), MINI, 0.25, 2500),  # no attribution at all
    event(9, 9, at(4, 11), HAIKU, 0.15, 1500, "search", None, "a"),
    # request r10: rate limited, timed out after streaming 500 tokens in, then answered by a fallback model
    event(10, 10, at(5, 9), MINI, 0.0, 0, "chat", "bob", "a", duration_ms=50, error_class="rate_limit"),
    event(11, 10, at(5, 9, 0, 1), MINI, 0.05, 500, "chat", "bob", "a", attempt=2, error_class="timeout"),
    event(12, 10, at(5, 9, 0, 3), HAIKU, 0.60, 6000, "chat", "bob", "a", attempt=3),
    event(13, 11, at(5, 10), MINI, 0.0, 0, "summarize", "carol", "b", duration_ms=30, error_class="context_length"),
    event(14, 12, at(5, 11), MINI, 0.0, 3000, "search", "alice", "a", duration_ms=5, cache_status="hit",
          saved_usd=0.30),
    event(15, 13, at(5, 12), MINI, 0.0, 2000, "search", "bob", "a", duration_ms=8, cache_status="hit_semantic",
          saved_usd=0.20),
    event(16, 14, at(5, 13), MINI, 0.35, 3500, "search", "alice", "a", cache_status="miss"),
    # agent run-1: step 1, step 2 (a server error, then success), step 3
    event(17, 15, at(6, 9, 0), MINI, 0.05, 500, "chat", "alice", "a", agent_step=1, **RUN_1),
    event(18, 16, at(6, 9, 1), MINI, 0.0, 0, "chat", "alice", "a", agent_step=2, error_class="server_error", **RUN_1),
    event(19, 16, at(6, 9, 2), MINI, 0.15, 1500, "chat", "alice", "a", attempt=2, agent_step=2, **RUN_1),
    event(20, 17, at(6, 9, 3), HAIKU, 0.25, 2500, "chat", "alice", "a", agent_step=3, **RUN_1),
    event(21, 18, at(6, 10), HAIKU, 0.70, 7000, "summarize", "carol", "b", agent_run_id="run-2", agent_step=1),
    event(22, 19, at(7, 9), MINI, 0.45, 4500, "search", "erin", "a", properties={"tenant": "initech"}),
    event(23, 20, at(7, 10), HAIKU, 0.55, 5500, "chat", "alice", "a", properties=ACME),
    event(24, 21, at(8, 9), MINI, 0.65, 6500, "search", "bob", "a"),
    event(25, 22, at(20, 9, month=2), MINI, 9.00, 90000, "search", "alice", "a"),  # before the March window
    event(26, 23, at(4, 12), MYSTERY, None, 800, "chat", "dave", "b"),
    event(27, 24, at(7, 12), LLAMA, None, 1000, "summarize", "dave", "b", duration_ms=2000),
]
# fmt: on

# In March (all but e25): 26 attempts of 23 requests; errors e10, e11, e13, e18; unpriced e06, e07, e26, e27;
# priced: .10 + .20 + .30 + .40 + .50 + .25 + .15 + .05 + .60 + .35 + .05 + .15 + .25 + .70 + .45 + .55 + .65 = $5.70


@pytest.fixture(scope="module", params=["duckdb", "clickhouse"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, chdb_folder: Path
) -> Iterator[Store]:
    """The ledger in each store: every analytics test runs on DuckDB and on ClickHouse (chdb) alike."""
    folder = tmp_path_factory.mktemp("analytics")
    if request.param == "duckdb":
        store: Store = DuckDBStore(StoreConfig(path=folder / "meterline.duckdb", spool_dir=folder / "spool"))
    else:
        config = StoreConfig(kind="clickhouse", url=f"chdb://{chdb_folder}", database="analytics", spool_dir=folder)
        store = ClickHouseStore(config)
    store.open()
    store.insert_events(events_to_arrow(LEDGER))
    yield store
    store.close()


@pytest.fixture(scope="module")
def analytics(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Analytics:
    overrides = tmp_path_factory.mktemp("prices") / "prices.yaml"
    overrides.write_text(
        """
models:
  - {provider: local, model: llama-local, input_mtok: 1.0, output_mtok: 2.0, cache_read_mtok: 0.5,
     tier_threshold: 5000, tier_input_mtok: 2.0, tier_output_mtok: 4.0, tier_cache_read_mtok: 1.0}
  - {provider: local, model: llama-local, effective_from: 2026-03-06, input_mtok: 3.0, output_mtok: 6.0}
"""
    )
    models = [
        ModelConfig(name=MINI, provider="openai"),
        ModelConfig(name="fast", provider="openai", upstream_model=MINI),
        ModelConfig(name=LLAMA, provider="local"),
        ModelConfig(name=MYSTERY, provider="local"),
    ]
    return Analytics(store, PriceTable.load(overrides, PRICING_IDS), models)


EVERYTHING = Scope()


def run(analytics: Analytics, endpoint: str, scope: Scope = EVERYTHING, **params: str) -> dict[str, Any]:
    return analytics.run(endpoint, {**MARCH, **params}, scope)


def by(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    return {row[key]: row for row in rows}


def test_spend_totals_and_group_by_feature(analytics: Analytics) -> None:
    result = run(analytics, "spend", group_by="feature")
    assert result["cost_basis"] == "request"
    totals = result["totals"]
    assert totals["cost_usd"] == pytest.approx(5.70)
    expected_totals = {"requests": 23, "attempts": 26, "errors": 4, "unpriced_attempts": 4, "input_tokens": 70_800}
    assert {name: totals[name] for name in expected_totals} == expected_totals
    assert (totals["output_tokens"], totals["cache_read_tokens"], totals["reasoning_tokens"]) == (7_080, 400, 0)

    rows = result["rows"]
    assert [row["feature"] for row in rows] == ["chat", "search", "summarize", None]  # by cost, unattributed too
    chat, search, summarize, unattributed = rows
    # chat: e03 .30 + e04 .40 + e11 .05 + e12 .60 + e17 .05 + e19 .15 + e20 .25 + e23 .55; e07, e26 unpriced
    assert chat["cost_usd"] == pytest.approx(2.35)
    assert (chat["requests"], chat["attempts"], chat["errors"], chat["unpriced_attempts"]) == (9, 12, 3, 2)
    # search: e01 .10 + e02 .20 + e09 .15 + e16 .35 + e22 .45 + e24 .65, and two cache hits at $0
    assert search["cost_usd"] == pytest.approx(1.90)
    assert (search["requests"], search["attempts"]) == (8, 8)
    assert summarize["cost_usd"] == pytest.approx(0.50 + 0.70)
    assert (summarize["requests"], summarize["unpriced_attempts"], summarize["errors"]) == (5, 2, 1)
    assert unattributed["cost_usd"] == pytest.approx(0.25) and unattributed["requests"] == 1


def test_spend_by_property_and_filters(analytics: Analytics) -> None:
    rows = by(run(analytics, "spend", group_by="property.tenant")["rows"], "property.tenant")
    assert rows["acme"]["cost_usd"] == pytest.approx(0.10 + 0.20 + 0.55)
    assert rows["globex"]["cost_usd"] == pytest.approx(0.30 + 0.40)
    assert rows["initech"]["cost_usd"] == pytest.approx(0.45)
    assert rows[None]["cost_usd"] == pytest.approx(5.70 - 0.85 - 0.70 - 0.45)

    alice_search = run(analytics, "spend", **{"filter[feature]": "search", "filter[user]": "alice"})["totals"]
    assert alice_search["cost_usd"] == pytest.approx(0.10 + 0.35)  # e01, e14 (a cache hit), e16
    assert alice_search["requests"] == 3
    acme = run(analytics, "spend", **{"filter[property.tenant]": "acme"})["totals"]
    assert acme["cost_usd"] == pytest.approx(0.85) and acme["attempts"] == 3


def test_spend_buckets_by_day_hour_and_week(analytics: Analytics) -> None:
    team_a = run(analytics, "spend", granularity="day", **{"filter[team]": "a"})
    days = {row["bucket"]: row for row in team_a["rows"]}
    assert list(days) == [f"2026-03-0{day}T00:00:00Z" for day in (2, 4, 5, 6, 7, 8)]
    assert [round(row["cost_usd"], 6) for row in days.values()] == [0.60, 0.15, 1.00, 0.45, 1.00, 0.65]
    assert (days["2026-03-05T00:00:00Z"]["requests"], days["2026-03-05T00:00:00Z"]["attempts"]) == (4, 6)
    assert team_a["totals"]["cost_usd"] == pytest.approx(3.85)

    bob = run(analytics, "spend", granularity="hour", **{"filter[user]": "bob"})["rows"]
    assert [(row["bucket"], round(row["cost_usd"], 6), row["requests"], row["attempts"]) for row in bob] == [
        ("2026-03-02T10:00:00Z", 0.20, 1, 1),
        ("2026-03-05T09:00:00Z", 0.65, 1, 3),  # r10's three attempts
        ("2026-03-05T12:00:00Z", 0.0, 1, 1),  # a cache hit
        ("2026-03-08T09:00:00Z", 0.65, 1, 1),
    ]

    weeks = run(analytics, "spend", granularity="week", group_by="team")["rows"]
    assert [(row["bucket"], row["team"]) for row in weeks] == [("2026-03-02T00:00:00Z", team) for team in "ab"] + [
        ("2026-03-02T00:00:00Z", None)
    ]  # Monday 2 March starts the week of every March event
    assert [round(row["cost_usd"], 6) for row in weeks] == [3.85, 1.60, 0.25]


def test_spend_limit_keeps_the_costliest_groups_with_all_their_buckets(analytics: Analytics) -> None:
    result = run(analytics, "spend", group_by="feature", granularity="day", limit="1")
    rows = result["rows"]
    assert {row["feature"] for row in rows} == {"chat"}
    assert [(row["bucket"][:10], round(row["cost_usd"], 6)) for row in rows] == [
        ("2026-03-02", 0.30),
        ("2026-03-03", 0.40),
        ("2026-03-04", 0.0),  # e07 and e26, both unpriced
        ("2026-03-05", 0.65),
        ("2026-03-06", 0.45),
        ("2026-03-07", 0.55),
    ]
    assert rows[2]["unpriced_attempts"] == 2
    assert result["totals"]["cost_usd"] == pytest.approx(5.70)  # totals cover every group


def test_top_users_with_unattributed_share(analytics: Analytics) -> None:
    result = run(analytics, "top", by="user", limit="2")
    assert result["by"] == "user"
    assert result["total_cost_usd"] == pytest.approx(5.70)
    # alice: e01 .10 + e03 .30 + e16 .35 + e17 .05 + e19 .15 + e20 .25 + e23 .55; carol: .40 + .50 + .70
    assert [(row["value"], round(row["cost_usd"], 6), row["requests"]) for row in result["rows"]] == [
        ("alice", 1.75, 8),
        ("carol", 1.60, 4),
    ]
    assert result["rows"][0]["share"] == pytest.approx(1.75 / 5.70)
    # no user: e07 (unpriced), e08 .25, e09 .15
    assert result["unattributed"]["cost_usd"] == pytest.approx(0.40)
    assert result["unattributed"]["share"] == pytest.approx(0.40 / 5.70)


def test_unattributed_by_dimension(analytics: Analytics) -> None:
    result = run(analytics, "unattributed")
    assert result["total_cost_usd"] == pytest.approx(5.70)
    dimensions = result["dimensions"]
    assert dimensions["feature"]["cost_usd"] == pytest.approx(0.25)  # e08
    assert dimensions["user"]["cost_usd"] == pytest.approx(0.40)  # e07, e08, e09
    assert dimensions["team"]["share"] == pytest.approx(0.25 / 5.70)
    assert dimensions["app"]["share"] == pytest.approx(1.0)  # no event names an app


def test_latency_percentiles_and_error_rate(analytics: Analytics) -> None:
    rows = {(row["provider"], row["model"]): row for row in run(analytics, "latency")["rows"]}
    llama = rows[("local", LLAMA)]  # durations 600, 700, 2000 ms
    assert llama["attempts"] == 3
    # quantile_cont: linear between the nearest ranks, rank = q * (n - 1)
    assert llama["duration_ms_p50"] == pytest.approx(700)
    assert llama["duration_ms_p95"] == pytest.approx(700 + 0.9 * 1300)
    assert llama["duration_ms_p99"] == pytest.approx(700 + 0.98 * 1300)
    assert llama["ttft_ms_p50"] is None and llama["error_rate"] == 0
    mini = rows[("openai", MINI)]
    assert mini["attempts"] == 15 and mini["error_rate"] == pytest.approx(4 / 15)  # e10, e11, e13, e18
    assert mini["ttft_ms_p50"] == pytest.approx(55)  # only e01 (50) and e02 (60) streamed


def test_user_distribution(analytics: Analytics) -> None:
    result = run(analytics, "users/distribution", bins="2", limit="2")
    # per user: alice 1.75, carol 1.60, bob 1.50, erin 0.45, dave 0 (only unpriced calls)
    assert result["users"] == 5
    assert result["total_cost_usd"] == pytest.approx(5.30)
    assert result["percentiles"]["p50"] == pytest.approx(1.50)
    assert result["percentiles"]["p90"] == pytest.approx(1.60 + 0.6 * 0.15)  # rank 3.6 of 0..4
    assert result["top_1pct_share"] == pytest.approx(1.75 / 5.30)  # the top 1% of 5 users is one user
    assert result["top_10pct_share"] == pytest.approx(1.75 / 5.30)
    assert result["top"] == [
        {"user": "alice", "cost_usd": pytest.approx(1.75), "requests": 8},
        {"user": "carol", "cost_usd": pytest.approx(1.60), "requests": 4},
    ]
    middle = (0.45 * 1.75) ** 0.5  # two bins, equally wide on a log scale from 0.45 to 1.75
    assert result["histogram"] == [
        {"lo": 0.0, "hi": 0.0, "users": 1},
        {"lo": pytest.approx(0.45), "hi": pytest.approx(middle), "users": 1},
        {"lo": pytest.approx(middle), "hi": pytest.approx(1.75), "users": 3},
    ]


def test_errors_retries_and_cache(analytics: Analytics) -> None:
    errors = run(analytics, "errors")["rows"]
    assert [(row["error_class"], row["attempts"], round(row["cost_usd"], 6)) for row in errors] == [
        ("context_length", 1, 0.0),
        ("rate_limit", 1, 0.0),
        ("server_error", 1, 0.0),
        ("timeout", 1, 0.05),
    ]

    retries = run(analytics, "retries", group_by="model")["rows"]
    assert [(row["model"], row["requests"], row["attempts"]) for row in retries] == [
        (MINI, 13, 15),  # r10 and r16 retried on it
        (HAIKU, 6, 7),  # r10's third attempt fell back to it, so it has one attempt more than requests
        (LLAMA, 3, 3),
        (MYSTERY, 1, 1),
    ]
    assert retries[0]["amplification"] == pytest.approx(15 / 13)
    assert run(analytics, "retries")["rows"][0]["amplification"] == pytest.approx(26 / 23)

    cache = by(run(analytics, "cache", group_by="feature")["rows"], "feature")
    assert cache["search"] == {"feature": "search", "requests": 8, "hits": 2, "hit_rate": 0.25, "saved_usd": 0.5}
    assert cache["chat"]["hits"] == 0 and cache["chat"]["hit_rate"] == 0


def test_agent_runs_and_one_runs_steps(analytics: Analytics) -> None:
    runs = run(analytics, "agents/runs")["rows"]
    assert [row["agent_run_id"] for row in runs] == ["run-2", "run-1"]  # by cost
    run_1 = runs[1]
    assert run_1["cost_usd"] == pytest.approx(0.05 + 0.15 + 0.25)
    assert (run_1["feature"], run_1["user"], run_1["steps"], run_1["attempts"], run_1["errors"]) == (
        "chat",
        "alice",
        3,
        4,
        1,
    )
    assert run_1["started_at"] == "2026-03-06T09:00:00Z"
    assert run_1["duration_ms"] == pytest.approx(181_000)  # 09:00:00 to e20's end at 09:03:01

    detail = analytics.run("agents/runs/run-1", {}, Scope())
    assert detail["agent_run_id"] == "run-1"
    steps = detail["steps"]
    assert [(step["agent_step"], step["request_id"], step["model"]) for step in steps] == [
        (1, "r15", MINI),
        (2, "r16", MINI),
        (3, "r17", HAIKU),
    ]
    second = steps[1]
    assert (second["attempts"], second["error_class"], second["input_tokens"], second["output_tokens"]) == (
        2,
        "none",
        1500,
        150,
    )
    assert second["cost_usd"] == pytest.approx(0.15)
    assert (second["started_at"], second["ended_at"], second["duration_ms"]) == (
        "2026-03-06T09:01:00Z",
        "2026-03-06T09:02:01Z",
        61_000,
    )


def test_one_request_lists_its_attempts_repriced_on_request(analytics: Analytics) -> None:
    recorded = analytics.run("requests/r10", {}, Scope())
    assert recorded["request_id"] == "r10"
    attempts = recorded["attempts"]
    assert [(a["attempt"], a["error_class"], a["cost_usd"]) for a in attempts] == [
        (1, "rate_limit", 0.0),
        (2, "timeout", 0.05),
        (3, "none", 0.60),
    ]
    assert attempts[2]["started_at"] == "2026-03-05T09:00:03Z" and attempts[2]["properties"] == {}

    current = analytics.run("requests/r10", {"cost_basis": "current"}, Scope())["attempts"]
    # gpt-4o-mini $0.15/$0.60 per 1M; claude-haiku-4-5 $1/$5 per 1M
    assert current[1]["cost_usd"] == pytest.approx((500 * 0.15 + 50 * 0.60) / 1e6)
    assert current[2]["cost_usd"] == pytest.approx((6000 * 1.0 + 600 * 5.0) / 1e6)
    assert current[2]["price_version"] == analytics.price_table.version

    with pytest.raises(NotFound, match="no request 'r99'"):
        analytics.run("requests/r99", {}, Scope())
    with pytest.raises(NotFound, match="no agent run"):
        analytics.run("agents/runs/run-9", {}, Scope())


def test_forecast_projects_month_end_weekday_aware(analytics: Analytics) -> None:
    result = analytics.run("forecast", {"until": "2026-03-09T12:00:00Z"}, Scope())
    assert result["month"] == "2026-03"
    assert result["month_to_date_usd"] == pytest.approx(5.70)
    daily = {row["day"]: row["cost_usd"] for row in result["daily"]}
    assert list(daily) == [f"2026-03-{day:02d}" for day in range(1, 10)]
    assert daily["2026-03-01"] == 0 and daily["2026-03-06"] == pytest.approx(1.15)
    # History: the 17 complete days from the first event (Fri 20 Feb) to Sun 8 March. Mean per weekday:
    monday, tuesday, wednesday, thursday = 0.60 / 2, 0.90 / 2, 0.40 / 2, 1.00 / 2
    friday, saturday, sunday = (9.00 + 1.15) / 3, 1.00 / 3, 0.65 / 3
    # The rest of Monday 9 March (half a day), then 10..31 March: 4 Tuesdays and 3 of every other weekday.
    rest = 0.5 * monday + 4 * tuesday + 3 * (wednesday + thursday + friday + saturday + sunday + monday)
    assert result["projected_month_end_usd"] == pytest.approx(5.70 + rest)
    assert "weekday" in result["method"] and "17 complete" in result["method"]


def test_forecast_interval_and_groups(tmp_path: Path) -> None:
    """Two weeks of history: team a spends $11 each day of the first week and $9 of the second, team b $5 a day."""
    store = DuckDBStore(StoreConfig(path=tmp_path / "forecast.duckdb", spool_dir=tmp_path / "spool"))
    store.open()
    history = []
    for day in range(14):
        history.append(event(2 * day, 2 * day, at(1 + day, 12), MINI, 11.0 if day < 7 else 9.0, 100, team="a"))
        history.append(event(2 * day + 1, 2 * day + 1, at(1 + day, 13), MINI, 5.0, 100, team="b"))
    store.insert_events(events_to_arrow(history))
    forecaster = Analytics(store, PriceTable.load(None, PRICING_IDS), [])
    result = forecaster.run("forecast", {"until": "2026-03-15T00:00:00Z", "group_by": "team"}, Scope())
    with pytest.raises(BadParameter, match="one dimension"):
        forecaster.run("forecast", {"group_by": "team,app"}, Scope())
    store.close()
    # each weekday's mean is $15 (a: $10, b: $5); the days deviate from it by $1 either way, so
    # sigma^2 = 14 x 1^2 / (14 days - 7 weekday means) = 2; 17 days are left (all of the 15th, then 16..31)
    half_width = 1.6449 * math.sqrt(2) * math.sqrt(17)
    assert result["month_to_date_usd"] == pytest.approx(14 * 15)
    assert result["projected_month_end_usd"] == pytest.approx(14 * 15 + 17 * 15)
    assert (result["low_usd"], result["high_usd"]) == pytest.approx((465 - half_width, 465 + half_width))
    assert result["interval_level"] == 0.9 and "90% interval" in result["method"]
    a, b = result["groups"]
    assert (a["value"], a["projected_month_end_usd"]) == ("a", pytest.approx(14 * 10 + 17 * 10))
    assert (a["low_usd"], a["high_usd"]) == pytest.approx((310 - half_width, 310 + half_width))
    assert (b["value"], b["projected_month_end_usd"], b["low_usd"], b["high_usd"]) == ("b", 155, 155, 155)


def test_cost_basis_current_reprices_from_the_price_table(analytics: Analytics) -> None:
    local = run(analytics, "spend", cost_basis="current", **{"filter[provider]": "local"})
    assert local["cost_basis"] == "current"
    # e06 (3 March): 6,000 input > the 5,000 tier, so every token at the tier rates: 6000 x $2 + 600 x $4
    # e07 (4 March): 600 uncached x $1 + 400 cache reads x $0.5 + 100 output x $2
    # e27 (7 March): the entry effective from 6 March: 1000 x $3 + 100 x $6
    # e26 (mystery-7b): no price, so it stays unpriced
    assert local["totals"]["cost_usd"] == pytest.approx((14_400 + 1_000 + 3_600) / 1e6)
    assert local["totals"]["unpriced_attempts"] == 1
    recorded = run(analytics, "spend", **{"filter[provider]": "local"})["totals"]
    assert (recorded["cost_usd"], recorded["unpriced_attempts"]) == (0, 4)

    mini = run(analytics, "spend", cost_basis="current", **{"filter[model]": MINI})["totals"]
    # 27,500 input and 2,750 output tokens outside the two cache hits, which cost nothing
    assert mini["cost_usd"] == pytest.approx((27_500 * 0.15 + 2_750 * 0.60) / 1e6)


def test_prices_lists_configured_models_and_unpriced_ones(analytics: Analytics) -> None:
    result = analytics.run("prices", {}, Scope())
    assert result["version"] == analytics.price_table.version
    models = by(result["models"], "name")
    assert models["fast"]["upstream_model"] == MINI and models["fast"]["priced"]
    assert models[MINI]["periods"][0]["input"] == pytest.approx(0.15)
    llama = models[LLAMA]["periods"]
    assert [(p["effective_from"], p["input"], p["tier_threshold"], p["tier_input"]) for p in llama] == [
        (None, 1.0, 5000, 2.0),
        ("2026-03-06T00:00:00Z", 3.0, None, None),
    ]
    assert result["unpriced_models"] == [MYSTERY]


def test_a_team_scope_never_shows_another_teams_spend(analytics: Analytics) -> None:
    team_a = Scope(team="a")
    teams = run(analytics, "spend", team_a, group_by="team")["rows"]
    assert [(row["team"], round(row["cost_usd"], 6)) for row in teams] == [("a", 3.85)]
    assert run(analytics, "spend", team_a, **{"filter[team]": "b"})["totals"]["attempts"] == 0
    assert "carol" not in {row["value"] for row in run(analytics, "top", team_a, by="user")["rows"]}
    assert [row["agent_run_id"] for row in run(analytics, "agents/runs", team_a)["rows"]] == ["run-1"]
    with pytest.raises(NotFound):
        analytics.run("requests/r04", {}, team_a)  # team b's request
    events = analytics.run("events", {"limit": "1000"}, team_a)["data"]
    assert events and {event["team"] for event in events} == {"a"}
    assert analytics.run("events", {"team": "b"}, team_a)["data"] == []


@pytest.mark.parametrize(
    ("endpoint", "params", "param", "message"),
    [
        ("spend", {"group_by": "colour"}, "group_by", "unknown dimension 'colour'; allowed: user, feature"),
        ("spend", {"granularity": "month"}, "granularity", "hour, day, week"),
        ("spend", {"filter[colour]": "red"}, "filter[colour]", "unknown dimension 'colour'"),
        ("spend", {"since": "yesterday"}, "since", "ISO-8601"),
        ("spend", {"since": "2026-03-10", "until": "2026-03-01"}, "since", "must be before"),
        ("spend", {"cost_basis": "list"}, "cost_basis", "request, current"),
        ("top", {"by": "feature,user"}, "by", "unknown dimension 'feature,user'"),
        ("top", {"limit": "0"}, "limit", "from 1 to 1000"),
        ("top", {"group_by": "feature"}, "group_by", "allowed here: since, until, cost_basis, filter[<dim>], by"),
        ("users/distribution", {"bins": "many"}, "bins", "whole number"),
    ],
)
def test_bad_parameters_are_rejected_naming_the_parameter(
    analytics: Analytics, endpoint: str, params: dict[str, str], param: str, message: str
) -> None:
    with pytest.raises(BadParameter, match=message.replace("[", r"\[").replace("]", r"\]")) as raised:
        analytics.run(endpoint, params, Scope())
    assert raised.value.param == param


def test_read_only_store_answers_queries_and_refuses_a_missing_file(store: Store, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no meterline store file"):
        DuckDBStore(StoreConfig(path=tmp_path / "missing.duckdb"), read_only=True).open()
    with pytest.raises(ValueError, match="one SELECT"):
        store.query("DELETE FROM events", {})
    assert store.query("SELECT count(*) AS n FROM events WHERE team = $team", {"team": "b"}).to_pylist() == [{"n": 8}]


def test_the_api_needs_a_key_names_bad_parameters_and_answers_the_documented_shape(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway()
    reply = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers=gateway.headers(**{"x-meterline-feature": "api-shape", "x-meterline-property-tenant": "acme"}),
        json={"model": MINI, "messages": [{"role": "user", "content": "hello"}]},
    )
    assert reply.status_code == 200
    gateway.events(expected=1, feature="api-shape")

    assert httpx.get(gateway.url + "/api/v1/spend").status_code == 401
    bad = httpx.get(gateway.url + "/api/v1/spend", params={"group_by": "colour"}, headers=gateway.headers())
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "group_by" and "colour" in bad.json()["error"]["message"]
    missing = httpx.get(gateway.url + "/api/v1/requests/no-such-request", headers=gateway.headers())
    assert missing.status_code == 404

    body = httpx.get(
        gateway.url + "/api/v1/spend",
        params={"group_by": "feature,property.tenant", "granularity": "day"},
        headers=gateway.headers(),
    ).json()
    (row,) = body["rows"]
    assert set(row) == {
        "feature",
        "property.tenant",
        "bucket",
        "cost_usd",
        "unpriced_attempts",
        "requests",
        "attempts",
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "errors",
    }
    assert (row["feature"], row["property.tenant"], row["requests"]) == ("api-shape", "acme", 1)
    assert row["cost_usd"] > 0 and body["totals"]["cost_usd"] == row["cost_usd"] and body["cost_basis"] == "request"


@pytest.mark.parametrize("kind", ["duckdb", "clickhouse"])
def test_current_cost_reprices_batch_and_service_tier_calls_at_their_own_prices(
    kind: str, tmp_path: Path, chdb_folder: Path
) -> None:
    november = datetime(2026, 11, 2, 12, tzinfo=UTC)  # genai-prices lists tier and batch prices from October

    def call(number: int, model: str, **fields: Any) -> UsageEvent:
        return UsageEvent(
            event_id=f"v{number}",
            request_id=f"v{number}",
            started_at=november,
            ended_at=november,
            duration_ms=1.0,
            operation="chat",
            provider="openai",
            requested_model=model,
            status_code=200,
            input_tokens=1_000_000,
            cost_usd=0.0,
            **fields,
        )

    if kind == "duckdb":
        store: Store = DuckDBStore(StoreConfig(path=tmp_path / "meterline.duckdb", spool_dir=tmp_path / "spool"))
    else:
        config = StoreConfig(kind="clickhouse", url=f"chdb://{chdb_folder}", database="variants", spool_dir=tmp_path)
        store = ClickHouseStore(config)
    store.open()
    try:
        store.insert_events(
            events_to_arrow(
                [
                    call(1, "gpt-4o-mini"),
                    call(2, "gpt-4o-mini", service_tier="default"),
                    call(3, "gpt-4o-mini", service_tier="priority"),
                    call(4, "gpt-4o-mini", batch_id="batch_1", service_tier="default"),
                    call(5, "gpt-5-mini", service_tier="flex"),
                ]
            )
        )
        analytics = Analytics(store, PriceTable.load(None, PRICING_IDS), [])
        window = {"since": "2026-11-01T00:00:00Z", "until": "2026-11-03T00:00:00Z", "cost_basis": "current"}
        spend = analytics.run("spend", window, Scope())
        # a million input tokens each: $0.15 standard (twice), $0.25 priority, $0.075 batch, $0.125 flex
        assert spend["totals"]["cost_usd"] == pytest.approx(0.15 + 0.15 + 0.25 + 0.075 + 0.125)
        models = by(analytics.run("spend", {**window, "group_by": "model"}, Scope())["rows"], "model")
        assert models["gpt-5-mini"]["cost_usd"] == pytest.approx(0.125)
    finally:
        store.close()
