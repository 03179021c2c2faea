"""The durable path in numbers: spool appends, loader throughput into DuckDB, and event queries.

Prints the cost of one `SpoolWriter.append` (the gateway's hot path), how many events per second
the loader moves from spool segments into DuckDB, how inserts hold up as the table grows, and
`list_events` latency on about a million stored events.

Run: .venv/bin/python bench/store.py
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meterline.config import StoreConfig
from meterline.events.loader import SpoolLoader
from meterline.events.schema import UsageEvent, encode_event, events_to_arrow
from meterline.events.spool import SpoolWriter, read_segment
from meterline.store.base import EventQuery
from meterline.store.duckdb import DuckDBStore

APPENDS = 200_000
LOADED = 200_000
SEGMENT_EVENTS = 5_000
STORED = 1_000_000
INSERT_BATCH = 50_000
QUERY_RUNS = 30
START = datetime(2026, 1, 1, tzinfo=UTC)
USERS = [f"user-{index}" for index in range(500)]
FEATURES = ["search", "chat", "summarize", "classify", "extract"]
MODELS = ["gpt-4o-mini", "gpt-4o", "claude-sonnet-4-5", "claude-haiku-4-5"]


def make_events(count: int, first: int = 0) -> list[UsageEvent]:
    """Realistic events, one every 10 ms from `first` on, with varied attribution."""
    events = []
    for index in range(first, first + count):
        started_at = START + timedelta(milliseconds=10 * index)
        model = MODELS[index % len(MODELS)]
        events.append(
            UsageEvent(
                event_id=f"{index:032x}",
                request_id=f"req-{index:024x}",
                trace_id=f"{index:032x}",
                started_at=started_at,
                ended_at=started_at + timedelta(milliseconds=850),
                duration_ms=850.0,
                ttft_ms=120.5,
                operation="chat",
                streaming=index % 2 == 0,
                provider="anthropic" if model.startswith("claude") else "openai",
                requested_model=model,
                response_model=f"{model}-2025",
                status_code=200,
                finish_reason="stop",
                input_tokens=1200 + index % 800,
                output_tokens=300 + index % 200,
                cache_read_tokens=index % 512,
                cost_usd=0.00123,
                price_version="genai-prices-2026-01",
                key_id="key-1",
                team="team-a",
                app="web",
                user=USERS[index % len(USERS)],
                feature=FEATURES[index % len(FEATURES)],
                env="prod",
                properties={"tier": "pro", "region": "eu"},
            )
        )
    return events


def bench_append(folder: Path) -> None:
    events = make_events(APPENDS)
    writer = SpoolWriter(folder / "append-spool")
    start = time.perf_counter()
    for event in events:
        writer.append(event)
    elapsed = time.perf_counter() - start
    start = time.perf_counter()
    for event in events:
        encode_event(event)
    encode_only = time.perf_counter() - start
    writer.close()
    line_bytes = writer.pending_bytes / APPENDS
    print(
        f"spool append: {elapsed / APPENDS * 1e6:.2f} µs/event "
        f"(encode {encode_only / APPENDS * 1e6:.2f} µs + one os.write; {line_bytes:.0f} bytes/line)"
    )


def bench_loader(folder: Path) -> None:
    store = DuckDBStore(StoreConfig(path=folder / "loader.duckdb"))
    store.open()
    writer = SpoolWriter(folder / "loader-spool")
    for index, event in enumerate(make_events(LOADED), 1):
        writer.append(event)
        if index % SEGMENT_EVENTS == 0:  # what the loader's periodic rotation would leave
            writer.rotate()

    async def load() -> float:
        loader = SpoolLoader(writer, store, flush_interval_s=60, fsync_interval_s=60)
        start = time.perf_counter()
        await loader.flush()
        elapsed = time.perf_counter() - start
        await loader.stop()
        return elapsed

    elapsed = asyncio.run(load())
    assert store.count_events() == LOADED
    print(
        f"loader: {LOADED / elapsed:,.0f} events/s spool → DuckDB "
        f"({LOADED:,} events in segments of {SEGMENT_EVENTS:,}, {elapsed:.2f} s)"
    )
    store.close()
    bench_load_phases(folder)


def bench_load_phases(folder: Path) -> None:
    """Where one batch's load time goes: decoding the segment, building Arrow, inserting."""
    store = DuckDBStore(StoreConfig(path=folder / "phases.duckdb"))
    store.open()
    segment = folder / "seg-00000000000000000001-1.jsonl"
    segment.write_bytes(b"".join(encode_event(event) for event in make_events(INSERT_BATCH)))
    start = time.perf_counter()
    events, _ = read_segment(segment)
    decoded = time.perf_counter()
    table = events_to_arrow(events)
    converted = time.perf_counter()
    store.insert_events(table)
    inserted = time.perf_counter()
    per_event = {
        "read_segment": decoded - start,
        "events_to_arrow": converted - decoded,
        "insert_events": inserted - converted,
    }
    print(
        "  per event: "
        + ", ".join(f"{name} {seconds / INSERT_BATCH * 1e6:.1f} µs" for name, seconds in per_event.items())
    )
    store.close()


def fill_store(store: DuckDBStore) -> None:
    """Insert STORED events in batches, printing the insert rate near empty and near full."""
    rates = []
    for first in range(0, STORED, INSERT_BATCH):
        table = events_to_arrow(make_events(INSERT_BATCH, first))
        start = time.perf_counter()
        store.insert_events(table)
        rates.append(INSERT_BATCH / (time.perf_counter() - start))
    print(
        f"insert_events (Arrow → DuckDB, anti-join on event_id): {rates[0]:,.0f} events/s into an empty table, "
        f"{rates[-1]:,.0f} events/s at {STORED - INSERT_BATCH:,} rows"
    )
    table = events_to_arrow(make_events(INSERT_BATCH, STORED - INSERT_BATCH))
    start = time.perf_counter()
    replayed = store.insert_events(table)
    elapsed_ms = (time.perf_counter() - start) * 1e3
    print(f"replaying the last {INSERT_BATCH:,} events: {replayed} inserted, {elapsed_ms:.0f} ms")


def bench_queries(folder: Path) -> None:
    store = DuckDBStore(StoreConfig(path=folder / "queries.duckdb"))
    store.open()
    fill_store(store)
    deep_cursor = None
    for _ in range(50):  # the cursor of page 51
        deep_cursor = store.list_events(EventQuery(limit=100, cursor=deep_cursor)).next_cursor
    middle = START + timedelta(milliseconds=10 * STORED // 2)
    cases = {
        "newest 100": EventQuery(limit=100),
        "newest 1000": EventQuery(limit=1000),
        "page 51 via cursor": EventQuery(limit=100, cursor=deep_cursor),
        "user=user-7": EventQuery(user="user-7"),
        "model=claude-haiku-4-5 (requested or response)": EventQuery(model="claude-haiku-4-5"),
        "one minute, mid-history": EventQuery(since=middle, until=middle + timedelta(minutes=1)),
        "request_id (one event)": EventQuery(request_id=f"req-{STORED // 3:024x}"),
    }
    print(f"list_events on {store.count_events():,} events (median of {QUERY_RUNS} runs):")
    for name, query in cases.items():
        timings = []
        for _ in range(QUERY_RUNS):
            start = time.perf_counter()
            page = store.list_events(query)
            timings.append(time.perf_counter() - start)
        print(f"  {name}: {statistics.median(timings) * 1e3:.1f} ms ({len(page.events)} events)")
    store.close()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="meterline-bench-") as folder:
        bench_append(Path(folder))
        bench_loader(Path(folder))
        bench_queries(Path(folder))


if __name__ == "__main__":
    main()
