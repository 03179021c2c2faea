"""The ClickHouse store on ClickHouse's real engine (chdb, in process): schema, idempotent inserts, replay
after an outage, and every analytics endpoint agreeing with DuckDB on the same events.

The HTTP transport (clickhouse-connect) is covered as far as this machine allows: no ClickHouse
server can run here, so only its refusal of an unreachable server is exercised.
"""

from __future__ import annotations

import asyncio
import math
import random
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa
import pytest

from meterline.analytics.params import Scope
from meterline.analytics.queries import Analytics
from meterline.analytics.signals import collect
from meterline.config import ConfigError, ModelConfig, StoreConfig, load_config
from meterline.events.loader import SpoolLoader
from meterline.events.schema import UsageEvent, encode_event, events_to_arrow
from meterline.events.spool import SpoolWriter
from meterline.otel.ingest import IngestedSpan, found_in_store
from meterline.pricing.table import PriceTable
from meterline.store.base import EventQuery, StoreUnavailable, store_for
from meterline.store.clickhouse import MIGRATIONS, ClickHouseStore
from meterline.store.clickhouse_sql import to_clickhouse
from meterline.store.clickhouse_transport import HttpTransport, TransportError
from meterline.store.duckdb import DuckDBStore
from tests.conftest import free_port, run_cli

MakeConfig = Callable[..., StoreConfig]
START = datetime(2026, 1, 5, tzinfo=UTC)
MODELS = [
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("openai", "gpt-4o", None),
    ("anthropic", "claude-haiku-4-5", "claude-haiku-4-5-20251001"),
    ("local", "llama-local", None),
    ("local", "mystery-7b", None),
]
PRICING_IDS = {"openai": "openai", "anthropic": "anthropic", "local": None}
OVERRIDES = """
models:
  - {provider: local, model: llama-local, input_mtok: 1.0, output_mtok: 2.0, cache_read_mtok: 0.5,
     tier_threshold: 5000, tier_input_mtok: 2.0, tier_output_mtok: 4.0, tier_cache_read_mtok: 1.0}
  - {provider: local, model: llama-local, effective_from: 2026-02-10, input_mtok: 3.0, output_mtok: 6.0}
"""


def generated_events(count: int, seed: int = 7) -> list[UsageEvent]:
    """`count` varied attempts over ten weeks: retries, errors, cache hits, agent runs, properties, gaps."""
    rng = random.Random(seed)
    events: list[UsageEvent] = []
    request = 0
    while len(events) < count:
        request += 1
        provider, model, response_model = rng.choice(MODELS)
        started = START + timedelta(seconds=rng.randrange(70 * 86400), microseconds=rng.randrange(1_000_000))
        attributes: dict[str, Any] = {
            "team": rng.choice(["search", "support", "growth", None]),
            "feature": rng.choice(["chat", "summarize", "search", "extract", None]),
            "user": rng.choice([f"user-{n}" for n in range(40)] + [None]),
            "app": rng.choice(["web", "batch", None]),
            "properties": rng.choice([{}, {"tenant": "acme"}, {"tenant": "globex", "tier": "gold"}]),
        }
        if rng.random() < 0.1:
            attributes |= {"agent_run_id": f"run-{rng.randrange(30)}", "agent_step": rng.randrange(1, 6)}
        for attempt in range(1, rng.choice([2, 1, 1, 1, 1, 3]) + 1):
            input_tokens = rng.randrange(0, 12000)
            cache_read = rng.randrange(0, input_tokens + 1) if rng.random() < 0.3 else 0
            duration = rng.uniform(5, 4000)
            error = rng.choice(["none"] * 8 + ["rate_limit", "timeout"])
            cache_status = rng.choice(["none"] * 6 + ["miss", "hit", "hit_semantic"])
            timing = {
                "started_at": started,
                "ended_at": started + timedelta(milliseconds=duration),
                "duration_ms": duration,
                "ttft_ms": rng.uniform(1, duration) if rng.random() < 0.6 else None,
            }
            events.append(
                UsageEvent(
                    event_id=f"ev-{len(events):06d}",
                    request_id=f"req-{request:06d}",
                    attempt=attempt,
                    **timing,
                    operation="chat",
                    provider=provider,
                    requested_model=model,
                    response_model=response_model,
                    status_code=200 if error == "none" else 429,
                    error_class=error,
                    input_tokens=input_tokens,
                    output_tokens=rng.randrange(0, 2000),
                    cache_read_tokens=cache_read,
                    reasoning_tokens=rng.randrange(0, 50),
                    cost_usd=None if provider == "local" else round(rng.uniform(0, 0.2), 6),
                    cache_status=cache_status,
                    saved_usd=round(rng.uniform(0, 0.1), 6) if cache_status.startswith("hit") else None,
                    **attributes,
                )
            )
            started += timedelta(milliseconds=duration + 5)
    return events[:count]


def agree(duck: Any, click: Any, path: str = "$") -> None:
    """Equal, floats to 1e-9 (far below a cent): the two engines sum in different orders."""
    if isinstance(duck, float) or isinstance(click, float):
        assert duck is not None and click is not None, (path, duck, click)
        assert math.isclose(duck, click, rel_tol=1e-9, abs_tol=1e-9), (path, duck, click)
    elif isinstance(duck, dict):
        assert isinstance(click, dict) and duck.keys() == click.keys(), (path, duck, click)
        for key in duck:
            agree(duck[key], click[key], f"{path}.{key}")
    elif isinstance(duck, list):
        assert isinstance(click, list) and len(duck) == len(click), (path, len(duck), len(click))
        for index, (left, right) in enumerate(zip(duck, click, strict=True)):
            agree(left, right, f"{path}[{index}]")
    else:
        assert duck == click, (path, duck, click)


@pytest.fixture
def clickhouse(clickhouse_config: MakeConfig) -> Iterator[ClickHouseStore]:
    store = ClickHouseStore(clickhouse_config(retention_days=400))
    store.open()
    yield store
    store.close()


def table_definition(store: ClickHouseStore) -> str:
    return store.query(
        "SELECT create_table_query AS ddl FROM system.tables WHERE database = $db AND name = 'events'",
        {"db": store.database},
    )["ddl"][0].as_py()


def test_schema_is_a_replacing_merge_tree_by_month_ordered_for_time_team_feature(
    clickhouse: ClickHouseStore, clickhouse_config: MakeConfig
) -> None:
    ddl = table_definition(clickhouse)
    assert "ENGINE = ReplacingMergeTree" in ddl
    assert "PARTITION BY toYYYYMM(started_at)" in ddl
    assert "ORDER BY (toDate(started_at), team, feature, event_id)" in ddl
    assert "TTL toDateTime(started_at) + toIntervalDay(400)" in ddl
    assert "INDEX request_id_bloom request_id TYPE bloom_filter(0.01) GRANULARITY 4" in ddl

    # reopening with another retention changes the TTL; without one, removes it; migrations run once
    config = clickhouse_config().model_copy(update={"database": clickhouse.database, "retention_days": 30})
    for retention, expected in ((30, "toIntervalDay(30)"), (None, None)):
        reopened = ClickHouseStore(config.model_copy(update={"retention_days": retention}))
        reopened.open()
        ddl = table_definition(reopened)
        assert (expected in ddl) if expected else (" TTL " not in ddl)
        versions = reopened.query(f"SELECT version FROM {clickhouse.database}.schema_migrations", {})
        assert sorted(versions["version"].to_pylist()) == [migration.version for migration in MIGRATIONS]
        reopened.close()


def test_a_migration_adds_the_columns_an_older_table_lacks(clickhouse: ClickHouseStore) -> None:
    event = generated_events(1)[0]
    clickhouse.insert_events(events_to_arrow([event]))
    database = clickhouse.database
    transport = clickhouse._open_transport()  # make it a table written before migration 9
    for column in ("service_tier", "batch_id"):
        transport.command(f"ALTER TABLE {database}.events DROP COLUMN {column}")
    transport.command(f"ALTER TABLE {database}.schema_migrations DELETE WHERE version = 9 SETTINGS mutations_sync = 1")
    clickhouse.close()
    clickhouse.open()
    (stored,) = clickhouse.list_events(EventQuery()).events
    assert stored == event and (stored.service_tier, stored.batch_id) == (None, None)
    tiered = msgspec.structs.replace(event, event_id="tiered", service_tier="flex")
    assert clickhouse.insert_events(events_to_arrow([tiered])) == 1


def test_inserts_are_idempotent_by_event_id_and_count_new_rows(clickhouse: ClickHouseStore) -> None:
    events = generated_events(300)
    assert clickhouse.insert_events(events_to_arrow(events)) == 300
    assert clickhouse.insert_events(events_to_arrow(events[100:200])) == 0  # a replay
    repeated = events_to_arrow(events[250:] + generated_events(320)[300:] * 2)  # 20 new, each twice in the batch
    assert clickhouse.insert_events(repeated) == 20
    assert clickhouse.count_events() == 320


def test_duplicates_that_reach_the_table_are_counted_once_before_any_merge(clickhouse: ClickHouseStore) -> None:
    """Two loaders racing on one segment can both insert it: queries run FINAL, so nothing is double counted."""
    events = generated_events(50)
    batch = events_to_arrow(events)
    transport = clickhouse._open_transport()
    transport.insert_arrow(f"{clickhouse.database}.events", batch)
    transport.insert_arrow(f"{clickhouse.database}.events", batch)  # bypasses the staged anti-join
    raw = transport.query_arrow(f"SELECT count() AS n FROM {clickhouse.database}.events")
    assert raw["n"][0].as_py() == 100  # both parts are there, not merged yet
    assert clickhouse.count_events() == 50
    prices = PriceTable.load(None, PRICING_IDS)
    spend = Analytics(clickhouse, prices, []).run("spend", {"since": "2026-01-01T00:00:00Z"}, Scope(), now=START)
    expected = sum(event.cost_usd or 0 for event in events if event.started_at < START)
    assert spend["totals"]["attempts"] == sum(1 for event in events if event.started_at < START)
    assert spend["totals"]["cost_usd"] == pytest.approx(expected)


def test_events_page_newest_first_with_filters_and_cursor(clickhouse: ClickHouseStore, tmp_path: Path) -> None:
    events = generated_events(400)
    clickhouse.insert_events(events_to_arrow(events))
    duck = DuckDBStore(StoreConfig(path=tmp_path / "m.duckdb"))
    duck.open()
    duck.insert_events(events_to_arrow(events))
    for query in (
        EventQuery(limit=70),
        EventQuery(team="search", feature="chat", limit=5),
        EventQuery(model="claude-haiku-4-5-20251001", since=START + timedelta(days=20), limit=1000),
    ):
        pages: list[list[UsageEvent]] = []
        for store in (duck, clickhouse):
            seen, cursor = [], None
            while True:
                page = store.list_events(EventQuery(**{**query.__dict__, "cursor": cursor}))
                seen.extend(page.events)
                cursor = page.next_cursor
                if cursor is None:
                    break
            pages.append(seen)
        assert pages[0] == pages[1] and pages[0]
    duck.close()


def test_spool_outage_keeps_events_and_replays_them_once_after_recovery(
    clickhouse: ClickHouseStore, tmp_path: Path
) -> None:
    """The events table goes away (DETACH) while events arrive: they wait in the spool, then load exactly once."""
    events = generated_events(200)
    table = f"{clickhouse.database}.events"
    transport = clickhouse._open_transport()

    async def scenario() -> None:
        writer = SpoolWriter(tmp_path / "spool")
        loader = SpoolLoader(writer, clickhouse, flush_interval_s=0.05, fsync_interval_s=0.05)
        for event in events[:100]:
            writer.append(event)
        assert await loader.flush() == 100
        transport.command(f"DETACH TABLE {table}")
        for event in events[100:]:
            writer.append(event)
        with pytest.raises(TransportError):
            await loader.flush()
        assert not loader.store_healthy and loader.pending_bytes > 0
        assert len(list((tmp_path / "spool").glob("seg-*.jsonl"))) >= 1
        # a replayed copy of an already-loaded segment is harmless too
        segment = sorted((tmp_path / "spool").glob("seg-*.jsonl"))[0]
        shutil.copy(segment, tmp_path / "spool" / segment.name.replace("seg-", "seg-0"))
        transport.command(f"ATTACH TABLE {table}")
        assert await loader.flush() == 100
        assert loader.store_healthy and loader.pending_bytes == 0
        await loader.stop()

    asyncio.run(scenario())
    assert clickhouse.count_events() == 200


def test_segments_with_a_torn_line_load_through_the_python_path(clickhouse: ClickHouseStore, tmp_path: Path) -> None:
    events = generated_events(30)
    spool = tmp_path / "spool"
    spool.mkdir()
    # what a killed process leaves: complete lines, then an unfinished one
    (spool / "seg-00000000000000000001-4242.jsonl").write_bytes(
        b"".join(encode_event(event) for event in events) + b'{"event_id": "torn'
    )
    loader = SpoolLoader(SpoolWriter(spool), clickhouse, flush_interval_s=1, fsync_interval_s=1)
    assert asyncio.run(loader.flush()) == 30
    assert clickhouse.count_events() == 30


ENDPOINT_CALLS: list[tuple[str, dict[str, str]]] = [
    ("spend", {}),
    ("spend", {"group_by": "team,feature", "granularity": "day"}),
    ("spend", {"group_by": "property.tenant", "granularity": "week", "limit": "2"}),
    ("spend", {"group_by": "model,provider", "granularity": "hour", "filter[team]": "search"}),
    ("top", {"by": "user", "limit": "5"}),
    ("top", {"by": "property.tier"}),
    ("unattributed", {}),
    ("latency", {}),
    ("latency", {"group_by": "feature"}),
    ("users/distribution", {"bins": "8", "limit": "5"}),
    ("errors", {}),
    ("retries", {"group_by": "model"}),
    ("cache", {"group_by": "feature"}),
    ("agents/runs", {"limit": "10"}),
    ("agents/runs/run-3", {}),
    ("requests/req-000042", {}),
    ("forecast", {}),
    ("forecast", {"group_by": "team"}),
    ("events", {"limit": "25", "team": "growth"}),
    ("prices", {}),
    ("insights", {"min_usd": "0"}),
    ("chargeback", {"group_by": "team,app"}),
    ("usage/daily", {}),
]


def answer(analytics: Analytics, endpoint: str, params: dict[str, str], scope: Scope, now: datetime) -> Any:
    """The endpoint's body, or the error it answers (a run outside a team's scope is not found, in both stores)."""
    try:
        return analytics.run(endpoint, params, scope, now=now)
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"


@pytest.mark.parametrize("cost_basis", ["request", "current"])
@pytest.mark.parametrize("scope", [Scope(), Scope(team="support")], ids=["everything", "team"])
def test_every_analytics_endpoint_agrees_between_duckdb_and_clickhouse(
    clickhouse: ClickHouseStore, tmp_path: Path, cost_basis: str, scope: Scope
) -> None:
    events = generated_events(3000)
    duck = DuckDBStore(StoreConfig(path=tmp_path / "m.duckdb"))
    duck.open()
    for store in (duck, clickhouse):
        store.insert_events(events_to_arrow(events[:1500]))
        store.insert_events(events_to_arrow(events[1000:]))  # overlapping batches: a replay
    overrides = tmp_path / "prices.yaml"
    overrides.write_text(OVERRIDES)
    prices = PriceTable.load(overrides, PRICING_IDS)
    models = [ModelConfig(name=model, provider=provider) for provider, model, _ in MODELS]
    now = START + timedelta(days=45, hours=7)
    window = {"since": (START - timedelta(days=1)).isoformat(), "until": now.isoformat()}
    for endpoint, params in ENDPOINT_CALLS:
        call = {**params, "cost_basis": cost_basis}
        if endpoint not in ("forecast", "events", "prices"):
            call |= window
        if endpoint == "prices":
            call = {}
        answers = [answer(Analytics(store, prices, models), endpoint, call, scope, now) for store in (duck, clickhouse)]
        agree(*answers, path=f"{endpoint}?{call}")
    duck.close()


def test_hourly_series_with_medians_and_filters_agree_between_the_stores(
    clickhouse: ClickHouseStore, tmp_path: Path
) -> None:
    """The shapes alert rules aggregate with: hours back from an instant, filtered medians, a scalar percentile."""
    events = events_to_arrow(generated_events(2000))
    duck = DuckDBStore(StoreConfig(path=tmp_path / "m.duckdb"))
    duck.open()
    sql = """
        SELECT e.feature AS feature, (epoch_us($at) - epoch_us(e.started_at) - 1) // 3600000000 AS ago,
            median(e.duration_ms) FILTER (WHERE e.error_class = 'none' AND NOT e.cache_status LIKE 'hit%') AS median_ms,
            quantile_cont(e.duration_ms, 0.95) AS p95_ms, quantile_cont(e.ttft_ms, 0.5) AS ttft_p50,
            coalesce(sum(e.cost_usd * e.cost_usd), 0) AS cost_squares,
            count(*) FILTER (WHERE e.error_class NOT IN ('none', 'timeout')) AS errors
        FROM events e WHERE e.started_at < $at GROUP BY ALL HAVING count(*) > 0 ORDER BY feature NULLS LAST, ago
    """
    answers = []
    for store in (duck, clickhouse):
        store.insert_events(events)
        answers.append(store.query(sql, {"at": START + timedelta(days=20)}).to_pylist())
    duck.close()
    assert len(answers[0]) > 100 and any(row["ttft_p50"] is None for row in answers[0])
    agree(*answers)


def test_the_alert_rules_signals_agree_between_the_stores(clickhouse: ClickHouseStore, tmp_path: Path) -> None:
    events = events_to_arrow(generated_events(3000))
    duck = DuckDBStore(StoreConfig(path=tmp_path / "m.duckdb"))
    duck.open()
    answers = []
    for store in (duck, clickhouse):
        store.insert_events(events)
        signals = collect(store, START + timedelta(days=30, minutes=17), latency_minutes=600, error_minutes=600)
        answers.append({name: sort_rows(value) for name, value in signals.__dict__.items()})
    duck.close()
    assert answers[0]["features"] and answers[0]["users"] and answers[0]["models"]
    agree(*answers)


def sort_rows(value: Any) -> Any:
    """Rows in one order (the signal queries leave it to the engine)."""
    if isinstance(value, list):
        return sorted(value, key=lambda row: [(item is None, str(item)) for item in row.values()])
    return value


def test_ingest_finds_the_gateways_events_alike_in_both_stores(clickhouse: ClickHouseStore, tmp_path: Path) -> None:
    trace, other_trace = "ab" * 16, "cd" * 16

    def event(event_id: str, **ids: Any) -> UsageEvent:
        return UsageEvent(
            event_id=event_id,
            request_id=event_id,
            started_at=START,
            ended_at=START + timedelta(seconds=1),
            duration_ms=1000.0,
            operation="chat",
            provider="openai",
            requested_model="gpt-4o-mini",
            status_code=200,
            **ids,
        )

    stored = [
        event("gw-1", trace_id=trace, span_id="1111111111111111", parent_span_id="aaaaaaaaaaaaaaaa"),
        event("gw-2", trace_id=other_trace, span_id="2222222222222222", response_id="chatcmpl-shared"),
        event("app-1", trace_id=trace, span_id="3333333333333333", source="otlp"),  # not the gateway's
    ]
    spans = [
        # the app's span whose HTTP child span is the gateway's parent: the same call
        IngestedSpan(event("in-1", trace_id=trace), related_span_ids={"9999999999999999", "aaaaaaaaaaaaaaaa"}),
        # another trace, but the same provider response id: the same call
        IngestedSpan(event("in-2", trace_id="ef" * 16, response_id="chatcmpl-shared")),
        # in the gateway's trace, related to no gateway span: a call of its own
        IngestedSpan(event("in-3", trace_id=trace), related_span_ids={"3333333333333333"}),
        # a response id the gateway never saw, an hour later: a call of its own
        IngestedSpan(event("in-4", response_id="chatcmpl-other")),
    ]
    spans[3].event.started_at += timedelta(hours=1)
    duck = DuckDBStore(StoreConfig(path=tmp_path / "m.duckdb"))
    duck.open()
    for store in (duck, clickhouse):
        store.insert_events(events_to_arrow(stored))
        assert found_in_store(store, spans) == {"in-1", "in-2"}, store
    duck.close()


def test_query_binds_values_as_literals_and_refuses_anything_but_a_select(clickhouse: ClickHouseStore) -> None:
    tricky = "it's a \\' quote'); DROP TABLE events; --"
    assert clickhouse.query("SELECT $v AS v", {"v": tricky})["v"].to_pylist() == [tricky]
    with pytest.raises(ValueError, match="one SELECT"):
        clickhouse.query("DROP TABLE events", {})
    with pytest.raises(ValueError, match="no value was bound"):
        clickhouse.query("SELECT $missing AS v", {})
    with pytest.raises(ValueError, match="reads table 'secrets'"):
        to_clickhouse("SELECT * FROM secrets", {}, {"events": "db.events"})
    small = pa.table({"name": ["a", "b"], "n": [1, 2]})
    assert clickhouse.query("SELECT sum(n) AS n FROM small", {}, {"small": small})["n"].to_pylist() == [3]


def test_config_names_what_is_missing_and_http_refusal_is_clear(tmp_path: Path) -> None:
    config_path = tmp_path / "m.yaml"
    config_path.write_text("store: {kind: clickhouse}\n")
    with pytest.raises(ConfigError, match=r"store\.url is required for kind clickhouse"):
        load_config(config_path)
    config_path.write_text("store: {kind: duckdb, retention_days: 30}\n")
    with pytest.raises(ConfigError, match="retention_days applies to kind clickhouse"):
        load_config(config_path)
    config_path.write_text("store: {kind: duckdb, loader: external}\n")
    with pytest.raises(ConfigError, match=r"loader: external needs"):
        load_config(config_path)
    with pytest.raises(ConfigError, match="use http://host:8123"):
        store_for(StoreConfig(kind="clickhouse", url="ftp://x")).open()
    with pytest.raises(StoreUnavailable, match="ClickHouse does not answer at http://"):
        HttpTransport(f"http://127.0.0.1:{free_port()}", "default", "")
    # a store that found ClickHouse down tries again on its next use (a gateway started during an outage)
    down = ClickHouseStore(StoreConfig(kind="clickhouse", url=f"http://127.0.0.1:{free_port()}"))
    with pytest.raises(StoreUnavailable):
        down.open()
    with pytest.raises(StoreUnavailable):
        down.count_events()
    assert not down.ping()


def test_store_migrate_command_creates_the_schema(chdb_folder: Path, tmp_path: Path) -> None:
    # a separate process cannot open the test process's chdb folder; it gets its own
    folder = tmp_path / "chdb"
    (tmp_path / "meterline.yaml").write_text(
        f"store: {{kind: clickhouse, url: 'chdb://{folder}', database: migrated, retention_days: 90}}\n"
    )
    result = run_cli("store", "migrate", "--config", "meterline.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ok: schema is current; 0 event(s) stored" in result.stdout
    again = run_cli("store", "migrate", "--config", "meterline.yaml", cwd=tmp_path)
    assert again.returncode == 0 and "ok: schema is current" in again.stdout
