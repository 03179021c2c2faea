"""Scale-out figures: gateway RPS with 1 and 2 workers, spool drain rate into each store, analytics latency on
DuckDB vs ClickHouse (chdb, in process), and a loss check after a SIGKILL mid-load. Prints numbers only.

1. RPS: `meterline serve --workers N` (N = 1, 2; DuckDB store, worker 0 loads the spool) in front
   of the mock provider, a closed loop from bench/gateway.py's load generator (its own process).
2. Drain: `--drain-events` events written to spool segments, then loaded by `SpoolLoader` into a
   fresh DuckDB file and a fresh ClickHouse database; events/s of the load.
3. Queries: bench/analytics.py seeds `--events` events into DuckDB; the same rows are copied into
   ClickHouse; each dashboard call is timed on both (p50 of `--repeat` runs, ms).
4. Loss: two workers on the ClickHouse store under load; worker 1 is SIGKILLed mid-load, the
   supervisor restarts it, the load goes on, then SIGTERM; requests answered vs events stored
   (and events stored twice, counted without FINAL-free deduplication, i.e. raw rows per request).

Run: .venv/bin/python bench/scale.py [--events 1000000] [--drain-events 200000] [--seconds 6] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).parent))

from analytics import DAYS, START, calls, sample_ids, seed
from gateway import free_port, run_load, wait_healthy
from meterline.analytics.params import Scope
from meterline.analytics.queries import Analytics
from meterline.config import StoreConfig
from meterline.events.loader import SpoolLoader
from meterline.events.spool import SpoolWriter
from meterline.pricing.table import PriceTable
from meterline.store.base import Store
from meterline.store.clickhouse import ClickHouseStore
from meterline.store.duckdb import DuckDBStore
from store import make_events

KEY = "bench-master-key"


def config_text(port: int, mock_port: int, store: str) -> str:
    return f"""
server: {{host: 127.0.0.1, port: {port}, master_key: {KEY}}}
store: {store}
providers:
  openai: {{kind: openai, base_url: http://127.0.0.1:{mock_port}/v1, api_key: bench}}
models:
  - {{name: gpt-4o-mini, provider: openai}}
"""


def clickhouse_config(chdb_folder: Path, database: str) -> StoreConfig:
    return StoreConfig(kind="clickhouse", url=f"chdb://{chdb_folder}", database=database)


async def tolerant_closed_loop(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    """Like bench/gateway.py's closed loop, but a broken connection (a killed worker) counts as a failure."""
    import aiohttp

    from gateway import BODY, HEADERS

    done = failed = 0
    stop_at = time.monotonic() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, failed
        while time.monotonic() < stop_at:
            try:
                async with session.post(url, data=BODY, headers={**HEADERS, "authorization": f"Bearer {KEY}"}) as reply:
                    await reply.read()
                    ok = reply.status == 200
            except aiohttp.ClientError:
                ok = False
            done, failed = done + ok, failed + (not ok)

    began = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"ok": done, "failed": failed, "rps": done / (time.monotonic() - began)}


def run_tolerant_load(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    command = [sys.executable, __file__, "--load", url, str(concurrency), str(seconds)]
    out = subprocess.run(command, capture_output=True, check=True).stdout
    return json.loads(out)


def serve(folder: Path, workers: int) -> subprocess.Popen[bytes]:
    log = (folder / "serve.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "meterline", "serve", "--config", "meterline.yaml", "--workers", str(workers)],
        cwd=folder,
        stdout=log,
        stderr=log,
    )


def wait_for_log(path: Path, text: str, count: int = 1, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{path} never showed {text!r} {count} time(s)")


def worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (multiprocessing spawn children), oldest first."""
    found = subprocess.run(["pgrep", "-P", str(supervisor), "-f", "spawn_main"], capture_output=True, text=True)
    return sorted(int(pid) for pid in found.stdout.split())


def bench_rps(root: Path, mock_port: int, seconds: float) -> None:
    for workers in (1, 2):
        folder = root / f"rps-{workers}"
        folder.mkdir()
        port = free_port()
        store = f"{{kind: duckdb, path: {folder}/m.duckdb, spool_dir: {folder}/spool}}"
        (folder / "meterline.yaml").write_text(config_text(port, mock_port, store))
        process = serve(folder, workers)
        try:
            wait_for_log(folder / "serve.log", "listening", workers)
            wait_healthy(f"http://127.0.0.1:{port}")
            result = run_load("closed", f"http://127.0.0.1:{port}/v1/chat/completions", 64, seconds)
            print(f"gateway, {workers} worker(s): {result['rps']:.0f} req/s ({result['failed']:.0f} failed)")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)


def bench_drain(root: Path, count: int, chdb_folder: Path) -> None:
    events = make_events(count)
    stores: list[tuple[str, Store]] = [
        ("duckdb", DuckDBStore(StoreConfig(path=root / "drain.duckdb"))),
        (
            "clickhouse (chdb)",
            ClickHouseStore(StoreConfig(kind="clickhouse", url=f"chdb://{chdb_folder}", database="drain")),
        ),
    ]
    for name, store in stores:
        spool = root / f"drain-spool-{name.split()[0]}"
        writer = SpoolWriter(spool)
        for event in events:
            writer.append(event)
        store.open()
        loader = SpoolLoader(writer, store, flush_interval_s=1, fsync_interval_s=1)
        began = time.perf_counter()
        inserted = asyncio.run(loader.flush())
        elapsed = time.perf_counter() - began
        print(f"drain into {name}: {inserted} events in {elapsed:.2f} s = {inserted / elapsed:,.0f} events/s")
        asyncio.run(loader.stop())
        store.close()


def copy_to_clickhouse(duck_path: Path, clickhouse: ClickHouseStore) -> int:
    """Copy every event of the DuckDB file into ClickHouse, in Arrow batches (new database: no staging needed)."""
    transport = clickhouse._open_transport()
    copied = 0
    with duckdb.connect(str(duck_path), read_only=True) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        reader = connection.sql("SELECT * FROM events").to_arrow_reader(500_000)
        for batch in reader:
            transport.insert_arrow(f"{clickhouse.database}.events", pyarrow_table(batch))
            copied += batch.num_rows
    return copied


def pyarrow_table(batch):  # type: ignore[no-untyped-def]
    import pyarrow as pa

    return pa.Table.from_batches([batch])


def bench_queries(root: Path, count: int, repeat: int, chdb_folder: Path, duck_file: Path) -> None:
    if not duck_file.exists():
        print(f"seeding {count:,} requests into {duck_file} ...", flush=True)
        seed(duck_file, count)
    duck = DuckDBStore(StoreConfig(path=duck_file), read_only=True)
    duck.open()
    clickhouse = ClickHouseStore(clickhouse_config(chdb_folder, "queries"))
    clickhouse.open()
    if clickhouse.count_events() == 0:
        began = time.perf_counter()
        copied = copy_to_clickhouse(duck_file, clickhouse)
        print(f"copied {copied:,} events into ClickHouse in {time.perf_counter() - began:.1f} s", flush=True)
    events = duck.count_events()
    print(f"N = {events:,} events (DuckDB) / {clickhouse.count_events():,} (ClickHouse)")
    until = START + timedelta(days=DAYS)
    run_id, request_id = sample_ids(duck, until - timedelta(days=3))
    prices = PriceTable.load(None, {"openai": "openai", "anthropic": "anthropic", "selfhosted": None})
    analytics = {"duckdb": Analytics(duck, prices, []), "chdb": Analytics(clickhouse, prices, [])}
    print(f"{'call (last 30 days)':58} {'duckdb p50 ms':>14} {'chdb p50 ms':>12}")
    for endpoint, params in calls(until - timedelta(days=30), until, run_id, request_id):
        timings = {}
        for name, engine in analytics.items():
            samples = []
            for _ in range(repeat):
                began = time.perf_counter()
                engine.run(endpoint, params, Scope(), now=until)
                samples.append((time.perf_counter() - began) * 1000)
            timings[name] = statistics.median(samples)
        label = endpoint + " " + ",".join(f"{k}={v}" for k, v in params.items() if k not in ("since", "until"))
        print(f"{label[:58]:58} {timings['duckdb']:14.0f} {timings['chdb']:12.0f}")
    duck.close()
    clickhouse.close()


def bench_loss(root: Path, mock_port: int, seconds: float, chdb_folder: Path) -> None:
    folder = root / "loss"
    folder.mkdir()
    port = free_port()
    store = f"{{kind: clickhouse, url: 'chdb://{chdb_folder}', database: loss, spool_dir: {folder}/spool}}"
    (folder / "meterline.yaml").write_text(config_text(port, mock_port, store))
    process = serve(folder, 2)
    result: dict[str, float] = {}
    try:
        wait_for_log(folder / "serve.log", "listening", 2)
        load = threading.Thread(
            target=lambda: result.update(
                run_tolerant_load(f"http://127.0.0.1:{port}/v1/chat/completions", 32, seconds * 3)
            )
        )
        load.start()
        time.sleep(seconds)
        victim = worker_pids(process.pid)[1]
        os.kill(victim, signal.SIGKILL)
        load.join()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=120)
    clickhouse = ClickHouseStore(clickhouse_config(chdb_folder, "loss"))
    clickhouse.open()
    stored = clickhouse.count_events()
    raw = (
        clickhouse._open_transport()
        .query_arrow("SELECT count() AS rows, uniqExact(request_id) AS requests FROM loss.events")
        .to_pylist()[0]
    )
    clickhouse.close()
    print(
        f"SIGKILL of worker 1 mid-load: {result['ok']:.0f} answered, {result['failed']:.0f} failed or cut off, "
        f"{stored} stored, {raw['rows'] - raw['requests']} stored twice, "
        f"lost = {max(0, int(result['ok']) - stored)}"
    )


def main() -> None:
    if sys.argv[1:2] == ["--load"]:
        url, concurrency, seconds = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(asyncio.run(tolerant_closed_loop(url, concurrency, seconds))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000, help="requests to seed for the query timings")
    parser.add_argument("--drain-events", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--file", type=Path, default=Path(tempfile.gettempdir()) / "meterline-bench-scale.duckdb")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="meterline-scale-"))
    chdb_folder = root / "chdb"  # this process's chdb folder (the loss check's server has its own)
    mock_port = free_port()
    mock_log = (root / "mock.log").open("wb")
    mock = subprocess.Popen(
        [sys.executable, "-m", "meterline", "mock-provider", "--port", str(mock_port)], stdout=mock_log, stderr=mock_log
    )
    try:
        wait_healthy(f"http://127.0.0.1:{mock_port}")
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        bench_rps(root, mock_port, args.seconds)
        bench_loss(root, mock_port, args.seconds, root / "loss-chdb")
        bench_drain(root, args.drain_events, chdb_folder)
        bench_queries(root, args.events, args.repeat, chdb_folder, args.file)
    finally:
        mock.terminate()
        mock.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
