"""The insights on `meterline simulate` traffic: each detector finds its injected leak, priced by hand, and no more.

A week of simulated traffic ending Sunday 10 May 2026 00:00 UTC, with every leak of
`meterline.leaks` injected from the first hour, is loaded into DuckDB and into ClickHouse (chdb);
the insights run over exactly that week, so "per month" is the week's figure times 30/7. The
dollars below are worked out from the leak descriptions in `meterline.leaks` and the list prices
(USD per million tokens) of the bundled genai-prices snapshot, written out here as numbers:

    gpt-4o 2.50 in / 10 out; gpt-4o-mini 0.15 / 0.60; text-embedding-3-large 0.13;
    claude-sonnet-4-20250514 3 in / 15 out / 0.30 cached / 3.75 cache write;
    claude-sonnet-4-5 3 / 15, and 6 / 22.50 for every token of a call above 200,000 input tokens.

A second week of clean traffic only (the simulator's features, agent and indexer, no leaks) must
give no finding at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from meterline.analytics.params import BadParameter, Scope
from meterline.analytics.queries import Analytics
from meterline.config import StoreConfig
from meterline.leaks import LEAK_TYPES
from meterline.pricing.table import PriceTable
from meterline.simulate import PROVIDERS, simulate
from meterline.store.base import Store
from meterline.store.clickhouse import ClickHouseStore
from meterline.store.duckdb import DuckDBStore

END = datetime(2026, 5, 10, tzinfo=UTC)
WEEK = {"since": (END - timedelta(days=7)).isoformat(), "until": END.isoformat()}
HOURS = 7 * 24
MONTH = 30 / 7
"""Per month = per week x 30/7."""


def week_of_traffic(store: Store, leaks: list[str]) -> Analytics:
    price_table = PriceTable.load(None, PROVIDERS)
    simulate(store, price_table, days=7, end=END, kinds=[], leaks=leaks)
    return Analytics(store, price_table, [])


@pytest.fixture(scope="module", params=["duckdb", "clickhouse"])
def leaky(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, chdb_folder: Path
) -> Iterator[Analytics]:
    folder = tmp_path_factory.mktemp("leaky")
    if request.param == "duckdb":
        store: Store = DuckDBStore(StoreConfig(path=folder / "leaky.duckdb", spool_dir=folder / "spool"))
    else:
        config = StoreConfig(kind="clickhouse", url=f"chdb://{chdb_folder}", database="leaky", spool_dir=folder)
        store = ClickHouseStore(config)
    store.open()
    yield week_of_traffic(store, list(LEAK_TYPES))
    store.close()


@pytest.fixture(scope="module")
def findings(leaky: Analytics) -> dict[tuple[str, str | None], dict[str, Any]]:
    """The week's findings by (detector, feature), the unattributed one by (detector, app)."""
    body = leaky.run("insights", WEEK, Scope())
    assert body["window_days"] == 7 and body["month_days"] == 30
    return {(f["detector"], f["where"].get("feature", f["where"].get("app"))): f for f in body["findings"]}


def test_only_the_injected_leaks_are_found(findings: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    assert set(findings) == {
        ("retry_amplifier", "ingest"),
        ("system_prompt_tax", "triage"),
        ("model_mismatch", "classify"),
        ("embedding_leak", "docs-index"),
        ("context_growth", "assistant-memory"),
        ("context_growth", "contract-review"),
        ("agent_loops", "browse-agent"),
        ("unattributed_spend", "batch-jobs"),
        ("output_bloat", "faq-bot"),
    }


def test_findings_are_sorted_by_dollars(leaky: Analytics) -> None:
    body = leaky.run("insights", WEEK, Scope())
    dollars = [finding["usd_per_month"] for finding in body["findings"]]
    assert dollars == sorted(dollars, reverse=True)
    assert body["total_usd_per_month"] == pytest.approx(sum(dollars))


def test_retry_amplifier(findings: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    finding = findings["retry_amplifier", "ingest"]
    # 6 logical requests an hour, each: a billed timed-out stream (4,000 in, 500 out on gpt-4o), a resend
    # rate-limited with Retry-After 20 s, and a resend 1 s later that succeeds
    failed_stream = (4000 * 2.50 + 500 * 10) / 1e6
    assert finding["usd_per_month"] == pytest.approx(6 * HOURS * failed_stream * MONTH)  # $64.80
    assert finding["saving_usd_per_month"] == pytest.approx(64.80)
    evidence = finding["evidence"]
    assert (evidence["requests"], evidence["attempts"], evidence["amplification"]) == (1008, 3024, 3.0)
    assert (evidence["client_resends"], evidence["retries_without_backoff"]) == (2016, 1008)
    assert finding["where"]["model"] == "gpt-4o" and finding["where"]["app"] == "ingest-worker"


def test_system_prompt_tax(findings: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    finding = findings["system_prompt_tax", "triage"]
    # 10 calls at the top of every hour, a minute apart, each with the same 2,000-token system prompt and no
    # cache read: the first of each burst would write the cache (the last use was ~50 minutes before), the
    # other 9 would read it
    assert finding["usd_per_month"] == pytest.approx(10 * HOURS * 2000 * 3 / 1e6 * MONTH)  # $43.20
    warm, cold = 9 * HOURS * 2000, HOURS * 2000
    saving = (warm * (3 - 0.30) - cold * (3.75 - 3)) / 1e6 * MONTH
    assert finding["saving_usd_per_month"] == pytest.approx(saving)  # $33.912
    assert (finding["evidence"]["warm_prefix_tokens"], finding["evidence"]["cold_prefix_tokens"]) == (warm, cold)
    assert "cache_control" in finding["fix"]


def test_model_mismatch(findings: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    finding = findings["model_mismatch", "classify"]
    # 30 calls an hour of 400 tokens in and 2, 3 or 4 out (3 on average); gpt-4o-mini is the cheapest
    # chat model of OpenAI in the traffic
    calls = 30 * HOURS
    on_gpt_4o = (calls * 400 * 2.50 + calls * 3 * 10) / 1e6
    on_mini = (calls * 400 * 0.15 + calls * 3 * 0.60) / 1e6
    assert finding["usd_per_month"] == pytest.approx(on_gpt_4o * MONTH)  # $22.248
    assert finding["saving_usd_per_month"] == pytest.approx((on_gpt_4o - on_mini) * MONTH)  # $20.913
    assert finding["evidence"]["cheaper_model"] == "gpt-4o-mini"
    assert finding["evidence"]["distinct_output_lengths"] == 3
    assert "quality is not measured" in finding["assumptions"]


def test_embedding_leak(findings: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    finding = findings["embedding_leak", "docs-index"]
    # one call a minute over the same 20 documents of 8,000 tokens: all but the first 20 are repeats
    repeats = 60 * HOURS - 20
    assert finding["usd_per_month"] == pytest.approx(repeats * 8000 * 0.13 / 1e6 * MONTH)  # $44.84
    assert finding["saving_usd_per_month"] == finding["usd_per_month"]
    assert (finding["evidence"]["distinct_inputs"], finding["evidence"]["duplicate_calls"]) == (20, repeats)


def test_context_growth_and_tier_crossing(findings: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    growth = findings["context_growth", "assistant-memory"]
    # 10 calls an hour, 20,000 input tokens on day 1 and 4,000 more each day: +24,000 a request by day 7
    assert growth["evidence"]["input_tokens_first_day"] == pytest.approx(20_000)
    assert growth["evidence"]["input_tokens_last_day"] == pytest.approx(44_000)
    assert growth["usd_per_month"] == pytest.approx(10 * HOURS * 24_000 * 3 / 1e6 * MONTH)  # $518.40

    tier = findings["context_growth", "contract-review"]
    # one call an hour of 210,000 tokens in, 1,000 out: above the 200,000 tier, so every token at 6 / 22.50
    at_tier, at_base = (210_000 * 6 + 1000 * 22.50) / 1e6, (210_000 * 3 + 1000 * 15) / 1e6
    assert tier["usd_per_month"] == pytest.approx(HOURS * at_tier * MONTH)  # $923.40
    assert tier["saving_usd_per_month"] == pytest.approx(HOURS * (at_tier - at_base) * MONTH)  # $459.00
    assert tier["evidence"]["tier_threshold_tokens"] == 200_000


def test_agent_loops(findings: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    finding = findings["agent_loops", "browse-agent"]
    # two runs an hour of 5 steps (3,000 in, 151..155 out) and, once a day, 60 identical steps (3,000 in, 150 out)
    normal_run = (5 * 3000 * 3 + (151 + 152 + 153 + 154 + 155) * 15) / 1e6
    loop_run = 60 * (3000 * 3 + 150 * 15) / 1e6
    assert finding["usd_per_month"] == pytest.approx(7 * (loop_run - normal_run) * MONTH)  # $18.56
    evidence = finding["evidence"]
    assert (evidence["runs"], evidence["runs_above_norm"], evidence["median_steps"]) == (7 * 49, 7, 5)
    assert (evidence["worst_run"]["steps"], evidence["worst_run"]["repeated_steps"]) == (60, 59)
    assert len(finding["where"]["agent_run_ids"]) == 5
    assert "max_steps: 15" in finding["fix"]


def test_unattributed_spend(findings: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    finding = findings["unattributed_spend", "batch-jobs"]
    # 20 calls an hour with the key key-batch and no feature, user or team: 2,000 in, 300 out on gpt-4o
    assert finding["usd_per_month"] == pytest.approx(20 * HOURS * (2000 * 2.50 + 300 * 10) / 1e6 * MONTH)  # $115.20
    assert finding["saving_usd_per_month"] is None
    assert finding["where"] == {"key_id": "key-batch", "app": "batch-jobs"}
    assert all(header in finding["fix"] for header in ("x-meterline-feature", "x-meterline-user", "x-meterline-team"))


def test_output_bloat(findings: dict[tuple[str, str | None], dict[str, Any]]) -> None:
    finding = findings["output_bloat", "faq-bot"]
    # 20 calls an hour answering in 120 tokens, but one in 20 runs to 3,000 with no max_tokens: the cap is
    # 4 x the median of 120, and every long answer has 2,520 tokens beyond it
    assert finding["evidence"]["suggested_max_tokens"] == 480
    assert finding["usd_per_month"] == pytest.approx(HOURS * (3000 - 480) * 10 / 1e6 * MONTH)  # $18.14
    assert finding["saving_usd_per_month"] == finding["usd_per_month"]


def test_detector_and_min_usd_select_findings(leaky: Analytics) -> None:
    only = leaky.run("insights", {**WEEK, "detector": "output_bloat,agent_loops"}, Scope())["findings"]
    assert {finding["detector"] for finding in only} == {"output_bloat", "agent_loops"}
    big = leaky.run("insights", {**WEEK, "min_usd": "100"}, Scope())["findings"]
    assert {finding["where"].get("feature") for finding in big} == {"contract-review", "assistant-memory", None}
    with pytest.raises(BadParameter, match="unknown value 'retries'"):
        leaky.run("insights", {**WEEK, "detector": "retries"}, Scope())
    with pytest.raises(BadParameter, match="'min_usd' must be a number"):
        leaky.run("insights", {**WEEK, "min_usd": "lots"}, Scope())


def test_a_team_sees_only_its_own_findings(leaky: Analytics) -> None:
    legal = leaky.run("insights", WEEK, Scope(team="legal"))["findings"]
    assert [finding["where"]["feature"] for finding in legal] == ["contract-review"]


def test_clean_traffic_makes_no_finding(tmp_path: Path) -> None:
    store = DuckDBStore(StoreConfig(path=tmp_path / "clean.duckdb", spool_dir=tmp_path / "spool"))
    store.open()
    try:
        body = week_of_traffic(store, []).run("insights", {**WEEK, "min_usd": "0.01"}, Scope())
    finally:
        store.close()
    assert body["findings"] == []
