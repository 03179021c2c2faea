"""The durable path: events appended to the spool reach the DuckDB store exactly once.

Covers the round trip, idempotent replays, a writer killed mid-segment, a store that is down
for a while, queries with filters and keyset pagination, schema migrations, and the registry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from meterline.config import ConfigError, StoreConfig
from meterline.events.loader import SpoolLoader
from meterline.events.schema import COLUMNS, UsageEvent, encode_event, events_to_arrow
from meterline.events.spool import SpoolWriter
from meterline.store import duckdb as duckdb_store
from meterline.store.base import EventPage, EventQuery, store_for
from meterline.store.duckdb import DuckDBStore, Migration, add_columns

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_event(index: int, **fields: object) -> UsageEvent:
    values: dict[str, object] = {
        "event_id": f"event-{index:05d}",
        "request_id": f"request-{index:05d}",
        "started_at": T0 + timedelta(seconds=index),
        "ended_at": T0 + timedelta(seconds=index, milliseconds=250),
        "duration_ms": 250.0,
        "operation": "chat",
        "provider": "openai",
        "requested_model": "gpt-4o-mini",
        "status_code": 200,
    }
    values.update(fields)
    return UsageEvent(**values)


def full_event(index: int) -> UsageEvent:
    """An event with every column set to a distinctive non-default value, whatever the schema holds."""
    samples: dict[str, Callable[[str], object]] = {
        "string": lambda name: f"{name}-{index}-é",
        "int": lambda name: 1000 + index + len(name),
        "float": lambda name: index + len(name) / 7,
        "bool": lambda name: True,
        "timestamp": lambda name: datetime(2026, 2, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
        "string_map": lambda name: {"tier": "gold", "region": f"eu-{index}", "empty": ""},
    }
    return UsageEvent(**{column.name: samples[column.kind](column.name) for column in COLUMNS})


def sparse_event(index: int) -> UsageEvent:
    """An event with every nullable column None and an empty properties map."""
    event = make_event(index)
    for column in COLUMNS:
        if column.nullable:
            setattr(event, column.name, None)
    return event


def store_config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(path=tmp_path / "data" / "meterline.duckdb", spool_dir=tmp_path / "spool")


def open_store(tmp_path: Path) -> DuckDBStore:
    store = DuckDBStore(store_config(tmp_path))
    store.open()
    return store


def make_loader(writer: SpoolWriter, store: object, interval_s: float = 0.02) -> SpoolLoader:
    return SpoolLoader(writer, store, flush_interval_s=interval_s, fsync_interval_s=interval_s)  # type: ignore[arg-type]


def newest_first(events: list[UsageEvent]) -> list[UsageEvent]:
    return sorted(events, key=lambda event: (event.started_at, event.event_id), reverse=True)


def all_pages(store: DuckDBStore, **filters: object) -> list[UsageEvent]:
    """Every event matching `filters`, following next_cursor; fails on a repeated event."""
    events: list[UsageEvent] = []
    cursor: str | None = None
    while True:
        page: EventPage = store.list_events(EventQuery(**filters, cursor=cursor))  # type: ignore[arg-type]
        events.extend(page.events)
        if page.next_cursor is None:
            break
        assert page.events, "a page with a next_cursor must not be empty"
        cursor = page.next_cursor
    ids = [event.event_id for event in events]
    assert len(ids) == len(set(ids)), "pagination returned an event twice"
    return events


def segments(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("seg-*.jsonl"))


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writer = SpoolWriter(tmp_path / "spool")
    written = [full_event(1), full_event(2), sparse_event(3), make_event(4, properties={"k": "v"})]

    async def run() -> None:
        loader = make_loader(writer, store)
        await loader.start()
        for event in written:
            writer.append(event)
        await loader.stop()
        assert loader.loaded_events == len(written)

    asyncio.run(run())
    page = store.list_events(EventQuery(limit=1000))
    assert page.next_cursor is None
    assert page.events == newest_first(written)
    stored = {event.event_id: event for event in page.events}
    assert stored["event-00003"].properties == {}
    assert stored["event-00003"].trace_id is None
    assert all(event.started_at.utcoffset() == timedelta(0) for event in page.events)
    assert segments(tmp_path / "spool") == []
    store.close()


def test_replayed_segment_and_in_batch_duplicates_insert_once(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    spool_dir = tmp_path / "spool"
    writer = SpoolWriter(spool_dir)
    events = [make_event(index) for index in range(20)]
    for event in [*events, events[3], events[7]]:  # two duplicates inside the same batch
        writer.append(event)
    (segment,) = writer.rotate()
    copy = segment.read_bytes()

    async def run() -> None:
        loader = make_loader(writer, store)
        assert await loader.flush() == 20
        # a crash after the insert but before the delete leaves the segment to be replayed
        (spool_dir / "seg-00000000000000000001-1.jsonl").write_bytes(copy)
        assert await loader.flush() == 0
        await loader.stop()

    asyncio.run(run())
    assert store.count_events() == 20
    assert store.insert_events(events_to_arrow([events[0], events[0], make_event(99)])) == 1
    assert store.count_events() == 21
    assert segments(spool_dir) == []
    store.close()


CRASHING_WRITER = """
import os, sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from meterline.events.schema import UsageEvent
from meterline.events.spool import SpoolWriter

writer = SpoolWriter(Path(sys.argv[1]))
start = datetime(2026, 3, 1, tzinfo=UTC)
for index in range(int(sys.argv[2])):
    writer.append(UsageEvent(
        event_id=f"crash-{index}", request_id=f"request-{index}", started_at=start + timedelta(seconds=index),
        ended_at=start + timedelta(seconds=index + 1), duration_ms=1000.0, operation="chat",
        provider="openai", requested_model="gpt-4o-mini", status_code=200,
    ))
torn = os.open(writer.active_path, os.O_WRONLY | os.O_APPEND)
os.write(torn, b'{"event_id": "torn-by-the-kill", "request_id": "req')
print("written", flush=True)
time.sleep(120)
"""


def test_events_of_a_killed_writer_are_loaded(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    count = 500
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(spool_dir), str(count)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "written"
        writer = SpoolWriter(spool_dir)
        assert writer.rotate() == [], "the live child's active segment must not be taken"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL

    store = open_store(tmp_path)

    async def run() -> SpoolLoader:
        loader = make_loader(writer, store)
        await loader.start()  # loads what the killed process left
        await loader.stop()
        return loader

    loader = asyncio.run(run())
    assert loader.loaded_events == count
    assert loader.quarantined_lines == 0
    assert store.count_events() == count
    ids = {event.event_id for event in all_pages(store, limit=1000)}
    assert ids == {f"crash-{index}" for index in range(count)}
    assert segments(spool_dir) == []
    store.close()


def test_undecodable_lines_are_quarantined_not_lost(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    good = [make_event(index) for index in range(3)]
    lines = [encode_event(good[0]), b'{"event_id": 42}\n', b"not json\n", encode_event(good[1]), encode_event(good[2])]
    (spool_dir / "seg-00000000000000000001-1.jsonl").write_bytes(b"".join(lines))
    writer = SpoolWriter(spool_dir)

    async def run() -> SpoolLoader:
        loader = make_loader(writer, store)
        await loader.flush()
        await loader.stop()
        return loader

    loader = asyncio.run(run())
    assert store.count_events() == 3
    assert loader.quarantined_lines == 2
    quarantined = (spool_dir / "quarantine" / "seg-00000000000000000001-1.jsonl").read_bytes()
    assert quarantined == b'{"event_id": 42}\nnot json\n'
    store.close()


class FlakyStore:
    """A DuckDB store whose inserts fail while `down` is set."""

    def __init__(self, store: DuckDBStore) -> None:
        self.store = store
        self.down = True
        self.failed_inserts = 0

    def check_up(self) -> None:
        if self.down:
            self.failed_inserts += 1
            raise ConnectionError("store is down")

    def insert_events(self, table: pa.Table) -> int:
        self.check_up()
        return self.store.insert_events(table)

    def load_segments(self, paths: list[Path]) -> int:
        self.check_up()
        return self.store.load_segments(paths)


def test_events_wait_in_the_spool_while_the_store_is_down(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool_dir = tmp_path / "spool"
    flaky = FlakyStore(open_store(tmp_path))
    writer = SpoolWriter(spool_dir)
    events = [make_event(index) for index in range(300)]

    async def run() -> SpoolLoader:
        loader = make_loader(writer, flaky)
        await loader.start()
        for event in events[:150]:
            writer.append(event)
        await asyncio.sleep(0.3)
        for event in events[150:]:  # appends still succeed while the store is down
            writer.append(event)
        await asyncio.sleep(0.3)
        assert flaky.failed_inserts >= 2, "loading is retried"
        assert not loader.store_healthy
        assert loader.last_error == "ConnectionError: store is down"
        assert loader.pending_bytes > 0
        assert loader.oldest_pending_age_s > 0
        assert segments(spool_dir), "the events must stay in spool files"
        assert flaky.store.count_events() == 0

        flaky.down = False
        deadline = time.monotonic() + 15
        while loader.loaded_events < len(events) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert loader.store_healthy
        assert await loader.flush() == 0
        await loader.stop()
        return loader

    with caplog.at_level(logging.WARNING, logger="meterline.loader"):
        loader = asyncio.run(run())
    assert loader.loaded_events == len(events)
    assert flaky.store.count_events() == len(events)
    assert {event.event_id for event in all_pages(flaky.store, limit=1000)} == {e.event_id for e in events}
    assert segments(spool_dir) == []
    assert loader.pending_bytes == 0
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per outage, not one per retry"
    flaky.store.close()


FILTER_CASES = [
    {"user": "ann"},
    {"feature": "search"},
    {"team": "red"},
    {"app": "web"},
    {"provider": "anthropic"},
    {"model": "claude-sonnet-4-5"},  # matches requested_model ...
    {"model": "gpt-4o-2024-08-06"},  # ... or response_model
    {"request_id": "request-00007"},
    {"since": T0 + timedelta(seconds=3)},
    {"until": T0 + timedelta(seconds=3)},
    {"user": "bob", "feature": "chat", "since": T0 + timedelta(seconds=1), "until": T0 + timedelta(seconds=5)},
]


def filter_matches(event: UsageEvent, filters: dict[str, object]) -> bool:
    for name, value in filters.items():
        if name == "model":
            if value not in (event.requested_model, event.response_model):
                return False
        elif name == "since":
            if event.started_at < value:  # type: ignore[operator]
                return False
        elif name == "until":
            if event.started_at >= value:  # type: ignore[operator]
                return False
        elif getattr(event, name) != value:
            return False
    return True


@pytest.fixture
def filled_store(tmp_path: Path) -> Iterator[tuple[DuckDBStore, list[UsageEvent]]]:
    """43 events, many sharing a start time, with varied attribution."""
    events = []
    for index in range(43):
        anthropic = index % 5 == 0
        events.append(
            make_event(
                index,
                started_at=T0 + timedelta(seconds=index // 6),  # runs of six equal timestamps
                user=("ann", "bob", None)[index % 3],
                feature=("search", "chat")[index % 2],
                team=("red", "blue", None, "green")[index % 4],
                app="batch" if index % 7 == 0 else "web",
                provider="anthropic" if anthropic else "openai",
                requested_model="claude-sonnet-4-5" if anthropic else "gpt-4o",
                response_model=None if anthropic else "gpt-4o-2024-08-06",
            )
        )
    store = open_store(tmp_path)
    assert store.insert_events(events_to_arrow(events)) == len(events)
    yield store, events
    store.close()


@pytest.mark.parametrize("filters", FILTER_CASES, ids=lambda filters: ",".join(filters))
def test_filters_and_keyset_pagination(
    filled_store: tuple[DuckDBStore, list[UsageEvent]], filters: dict[str, object]
) -> None:
    store, events = filled_store
    expected = [event for event in newest_first(events) if filter_matches(event, filters)]
    assert expected, "each case must select something"
    for limit in (1, 4, 7, 1000):
        assert all_pages(store, limit=limit, **filters) == expected


def test_last_full_page_has_no_cursor(filled_store: tuple[DuckDBStore, list[UsageEvent]]) -> None:
    store, _ = filled_store
    first = store.list_events(EventQuery(limit=40))
    assert first.next_cursor is not None
    second = store.list_events(EventQuery(limit=3, cursor=first.next_cursor))
    assert len(second.events) == 3
    assert second.next_cursor is None


def test_bad_queries_are_refused(filled_store: tuple[DuckDBStore, list[UsageEvent]]) -> None:
    store, _ = filled_store
    with pytest.raises(ValueError, match="cursor"):
        store.list_events(EventQuery(cursor="not-a-cursor"))
    with pytest.raises(ValueError, match="limit"):
        EventQuery(limit=1001)
    with pytest.raises(ValueError, match="timezone"):
        EventQuery(since=datetime(2026, 1, 1))


def test_a_migration_adds_a_column_an_old_table_lacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path)
    event = make_event(1, cache_write_tokens=50, properties={"k": "v"})
    store.insert_events(events_to_arrow([event]))
    with store._cursor() as cursor:  # turn it into a table written before these columns existed
        cursor.execute("ALTER TABLE events DROP COLUMN cache_write_1h_tokens")
        cursor.execute("ALTER TABLE events DROP COLUMN properties")
    store.close()

    with pytest.raises(RuntimeError, match=r"cache_write_1h_tokens, properties.*add_columns"):
        store.open()

    known_versions = [known.version for known in duckdb_store.MIGRATIONS]  # numbers are reserved, so they may skip
    next_version = max(known_versions) + 1
    migration = Migration(
        next_version, "cache TTL split; free-form properties", add_columns("cache_write_1h_tokens", "properties")
    )
    monkeypatch.setattr(duckdb_store, "MIGRATIONS", (*duckdb_store.MIGRATIONS, migration))
    store.open()
    (stored,) = store.list_events(EventQuery()).events
    assert stored == make_event(1, cache_write_tokens=50, cache_write_1h_tokens=0, properties={})
    with store._cursor() as cursor:
        versions = cursor.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert versions == [(version,) for version in [*known_versions, next_version]]
        assert cursor.execute("SELECT count(*) FROM events WHERE properties IS NULL").fetchone() == (0,)
    assert store.insert_events(events_to_arrow([make_event(2, properties={"a": "b"})])) == 1
    store.close()
    store.open()  # applied migrations are not run again
    assert store.count_events() == 2
    store.close()


def test_store_registry(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "x.duckdb", spool_dir=tmp_path / "spool")
    assert isinstance(store_for(config), DuckDBStore)
    with pytest.raises(ConfigError, match=r"unknown kind 'clickhouse2'; known kinds: .*duckdb"):
        store_for(config.model_copy(update={"kind": "clickhouse2"}))


def test_spool_writer_reports_what_is_pending(tmp_path: Path) -> None:
    writer = SpoolWriter(tmp_path / "spool")
    assert writer.writable()
    assert writer.pending_bytes == 0
    assert writer.oldest_pending_age_s == 0
    writer.append(make_event(1))
    size = writer.pending_bytes
    assert size == os.path.getsize(writer.active_path) > 0
    (segment,) = writer.rotate()
    writer.fsync()
    assert writer.rotate() == [segment], "an empty active segment is not rotated"
    assert writer.pending_bytes == size
    writer.delete_segment(segment)
    assert writer.pending_bytes == 0
    writer.close()
    assert not writer.writable()
    assert segments(tmp_path / "spool") == [], "an empty active segment is removed on close"


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_store_writes_run_as_background_work(tmp_path: Path) -> None:
    """The store is opened and loaded from a SCHED_IDLE thread, so DuckDB's own threads are idle-class too."""
    writer = SpoolWriter(tmp_path / "spool")
    policies: list[int] = []

    class RecordingStore(DuckDBStore):
        def open(self) -> None:
            policies.append(os.sched_getscheduler(0))
            super().open()

        def load_segments(self, paths: list[Path]) -> int:
            policies.append(os.sched_getscheduler(0))
            return super().load_segments(paths)

    recording = RecordingStore(store_config(tmp_path))

    async def run() -> None:
        loader = make_loader(writer, recording)
        await loader.open_store()
        await loader.start()
        writer.append(make_event(1))
        await loader.stop()

    asyncio.run(run())
    assert policies and set(policies) == {os.SCHED_IDLE}
    assert os.sched_getscheduler(0) != os.SCHED_IDLE, "only the writer thread is moved"
    recording.close()
