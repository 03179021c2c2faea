"""Gateway benchmark: throughput, added latency, memory and metering completeness. Prints numbers only.

Setup on this 2-core machine: the gateway (full metering: spool + DuckDB loader) is pinned to
core 0; the mock provider and the load generator (a separate process running an asyncio
aiohttp client) share core 1. For each upstream latency (0 ms and a fixed delay):

1. throughput: closed loop, fixed concurrency, for a few seconds, through the gateway (and
   straight to the mock, as the ceiling of the load generator + mock on their core);
2. added latency: open loop, direct vs through the gateway, p50/p99 of each and the difference,
   at two rates (or at `--rate`): half the foundation's 1,500 req/s throughput target, the load
   its latency targets (added p50 <= 1 ms, p99 <= 5 ms) are set at, checked against them; and
   half the measured gateway throughput, which keeps the gateway's core busier (see below) and
   shows how the tail holds as it fills. Each path is run `--rounds` times, alternating, and
   its percentiles are taken over all its requests: this machine (a VM) stalls now and then
   for up to ~100 ms, and one stall in a single short run decides that run's p99.
   The load generator runs with Python's garbage collector off, so its own pauses are not
   counted as latency of the server it measures, and it prints how many requests it sent over
   5 ms late (after a stall it catches up with a burst, which the server must queue);
3. the gateway's RSS, and events stored (counted in the DuckDB file after a graceful stop) vs
   requests the gateway answered.

With budgets and export off, a bare aiohttp pass-through (no metering, no checks) is measured
the same way, on the same cores: the floor of this stack on this machine, to tell the machine's
noise from meterline's own cost.

If LiteLLM's proxy is installed (`pip install 'litellm[proxy]'`) the same throughput run is
made against it and the ratio printed.

`--budgets memory redis` repeats the runs with budgets on: a team budget, a per-user quota and
agent guardrails (loop detector included) that every call is checked and settled against but
none trips, with counters in process or in Redis (`MLINE_BENCH_REDIS_URL`, default
redis://127.0.0.1:6379/15, under a key prefix of its own that is deleted afterwards). Every call
carries team, user and agent-run headers, so the runs compare like with like.

`--export off on` repeats the runs with OTLP export on (`otel.export`: a span per request and
per attempt, sampling ratio 1, GenAI metrics every second) into a local OTLP/HTTP sink on core 1
that answers every export and counts the spans it received; it stands in for a collector on
another machine, so it runs as SCHED_IDLE and does not slow the load generator. The gateway's
exporter process (which builds and encodes the spans, as background work) is moved to core 1
too, beside the mock and the load generator, so it competes with them rather than with the
gateway. CPU time per request of the gateway process and of the exporter process is printed:
machine load skews it less than req/s. The gateway's is printed twice, at full load and at the
latency test's rate, with how busy that keeps its core: a request costs more CPU when requests
arrive one by one than in a saturating stream (each wakes an idle core; caches are cold on a VM),
so half of the full-load rate keeps the core more than half busy, and the queueing that follows
any stall sets the p99.

Run: .venv/bin/python bench/gateway.py [--seconds 8] [--rounds 3] [--latency-ms 0 50]
     [--budgets none memory redis] [--export off on] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, NamedTuple

KEY = "bench-master-key"
HEADERS = {
    "authorization": f"Bearer {KEY}",
    "content-type": "application/json",
    "x-meterline-team": "bench",
    "x-meterline-user": "bench-user",
    "x-meterline-agent-run": "bench-run",
}
REDIS_URL = os.environ.get("MLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
TARGET_RPS = 1500
"""The foundation's throughput target on one core; its latency targets hold at half this load."""
TARGET_ADDED_P50_MS, TARGET_ADDED_P99_MS = 1.0, 5.0
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark me please"}]})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(args: list[str], cwd: Path, core: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log = (cwd / f"{args[0]}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "meterline", *args], cwd=cwd, stdout=log, stderr=log, env={**os.environ, **(env or {})}
    )
    os.sched_setaffinity(process.pid, {core})
    return process


def wait_healthy(url: str, timeout_s: float = 30) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


# ---- load generator (runs in its own process) --------------------------------------------------


async def closed_loop(url: str, concurrency: int, seconds: float) -> dict[str, float]:
    import aiohttp

    done = failed = 0
    stop_at = time.monotonic() + seconds
    headers = HEADERS

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, failed
        while time.monotonic() < stop_at:
            async with session.post(url, data=BODY, headers=headers) as reply:
                await reply.read()
                if reply.status == 200:
                    done += 1
                else:
                    failed += 1

    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return {"ok": done, "failed": failed, "rps": done / (time.monotonic() - started)}


async def open_loop(url: str, rate: float, seconds: float) -> dict[str, Any]:
    """`rate` req/s to `url` for `seconds`; every request's latency (ms) and how many failed."""
    import aiohttp

    latencies: list[float] = []
    failed = 0
    headers = HEADERS

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        began = time.perf_counter()
        async with session.post(url, data=BODY, headers=headers) as reply:
            await reply.read()
            if reply.status != 200:
                failed += 1
        latencies.append((time.perf_counter() - began) * 1000)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        late_ms = await paced(lambda: one(session), rate, seconds)
    return {"latencies": latencies, "failed": failed, "late_ms": late_ms}


async def paced(one: Callable[[], Awaitable[None]], rate: float, seconds: float) -> list[float]:
    """Start `one()` `rate` times a second for `seconds` (an open loop), and wait for them all.

    Returns how late (ms) each start was that missed its time: a stalled load generator catches
    up with a burst, which the server then queues.
    """
    tasks = []
    late_ms = []
    began = time.perf_counter()
    for index in range(int(rate * seconds)):
        delay = began + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            late_ms.append(-delay * 1000)
        tasks.append(asyncio.ensure_future(one()))
    await asyncio.gather(*tasks)
    return late_ms


def summary(latencies: list[float], failed: int) -> dict[str, float]:
    latencies.sort()
    return {
        "ok": len(latencies) - failed,
        "failed": failed,
        "p50": latencies[len(latencies) // 2],
        "p99": latencies[int(len(latencies) * 0.99)],
    }


def pooled(runs: list[dict[str, Any]]) -> dict[str, float]:
    """One summary of the requests of several `open_loop` runs, with how many were sent over 5 ms late."""
    late_ms = [late for run in runs for late in run["late_ms"]]
    return {
        **summary([latency for run in runs for latency in run["latencies"]], sum(run["failed"] for run in runs)),
        "sent_late": sum(late > 5 for late in late_ms),
        "max_late": max(late_ms, default=0.0),
    }


def alternating(
    direct_url: str, url: str, rate: float, seconds: float, rounds: int, server_pid: int
) -> tuple[dict[str, float], dict[str, float], float]:
    """Open-loop runs straight to the mock and through the server at `url`, alternating (so that a
    hiccup of the machine is as likely to hit either); both pooled, and the CPU seconds the
    server used during its runs."""
    direct_runs, via_runs = [], []
    server_cpu_s = 0.0
    for _ in range(rounds):
        direct_runs.append(run_load("open", direct_url, rate, seconds))
        before_s = cpu_seconds(server_pid)
        via_runs.append(run_load("open", url, rate, seconds))
        server_cpu_s += cpu_seconds(server_pid) - before_s
    return pooled(direct_runs), pooled(via_runs), server_cpu_s


def run_load(mode: str, url: str, value: float, seconds: float) -> dict[str, Any]:
    """Run the load generator in a separate process pinned to core 1; returns its JSON result."""
    command = [sys.executable, __file__, "--load", mode, url, str(value), str(seconds)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    os.sched_setaffinity(process.pid, {1})
    out, _ = process.communicate()
    return json.loads(out)


# ---- OTLP sink (runs in its own process) -------------------------------------------------------


def run_sink(port: int) -> None:
    """An OTLP/HTTP receiver that accepts everything and counts the spans; GET /count answers the count."""
    from aiohttp import web
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    spans = 0

    async def receive(request: web.Request) -> web.Response:
        nonlocal spans
        body = await request.read()
        if request.path == "/v1/traces":
            export = ExportTraceServiceRequest.FromString(body)
            spans += sum(len(scope.spans) for resource in export.resource_spans for scope in resource.scope_spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def count(request: web.Request) -> web.Response:
        return web.json_response({"spans": spans})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([web.post("/{path:.*}", receive), web.get("/count", count), web.get("/health", count)])
    web.run_app(app, host="127.0.0.1", port=port, print=None)


def sink_spans(port: int) -> int:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/count", timeout=5) as reply:
        return int(json.loads(reply.read())["spans"])


def gateway_config(port: int, mock_port: int, budgets: str, redis_prefix: str, sink_port: int | None = None) -> str:
    config = (
        f"server: {{host: 127.0.0.1, port: {port}, master_key: {KEY}}}\n"
        "store: {kind: duckdb, path: ./data/meterline.duckdb, spool_dir: ./data/spool}\n"
        f"providers:\n  openai: {{kind: openai, base_url: http://127.0.0.1:{mock_port}/v1, api_key: k}}\n"
        "models:\n  - {name: gpt-4o-mini, provider: openai}\n"
    )
    if sink_port is not None:
        sink = f"http://127.0.0.1:{sink_port}"
        config += f"otel: {{export: {{enabled: true, endpoint: '{sink}', metrics_interval_s: 1}}}}\n"
    if budgets == "none":
        return config
    backend = (
        f"  backend: redis\n  redis_url: {REDIS_URL}\n  key_prefix: '{redis_prefix}'\n" if budgets == "redis" else ""
    )
    return config + (
        f"budgets:\n{backend}"
        "  budgets: [{scope: 'team:bench', period: day, limit_usd: 1000000, actions: [throttle, alert]}]\n"
        "  quotas: {user_rpm: 1000000000, user_tpm: 1000000000000}\n"
        "  agents: {max_steps: 1000000000, max_cost_usd: 1000000, max_duration_s: 86400, loop_threshold: 1000000000}\n"
    )


def delete_redis_keys(prefix: str) -> None:
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)


def stored_events(db_path: Path) -> int:
    import duckdb

    with duckdb.connect(str(db_path), read_only=True) as connection:
        return connection.execute("select count(*) from events").fetchone()[0]  # type: ignore[index]


def run_passthrough(port: int, upstream_url: str) -> None:
    """A bare aiohttp pass-through (no metering, no checks): what this stack costs on this machine."""
    import aiohttp
    from aiohttp import web

    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def forward(request: web.Request) -> web.Response:
        headers = {"content-type": "application/json", "authorization": request.headers.get("authorization", "")}
        async with request.app[session_key].post(upstream_url, data=await request.read(), headers=headers) as upstream:
            return web.Response(status=upstream.status, body=await upstream.read(), content_type="application/json")

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
            app[session_key] = client
            yield

    app = web.Application()
    app.cleanup_ctx.append(session)
    app.add_routes([web.post("/v1/chat/completions", forward), web.get("/health", health)])
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, loop=loop, backlog=1024)  # as serve


def passthrough_latency(
    mock_port: int, concurrency: int, seconds: float, rounds: int
) -> tuple[float, dict[str, float], dict[str, float]]:
    """The bare pass-through on core 0 measured like the gateway: (req/s, then direct and via at half of it)."""
    port = free_port()
    direct_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
    process = subprocess.Popen([sys.executable, __file__, "--passthrough", str(port), direct_url])
    os.sched_setaffinity(process.pid, {0})
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        run_load("closed", url, 16, 2)
        rps = run_load("closed", url, concurrency, seconds)["rps"]
        direct, via, _ = alternating(direct_url, url, rps / 2, seconds, rounds, process.pid)
        return rps, direct, via
    finally:
        process.terminate()
        process.wait()


def litellm_throughput(mock_port: int, concurrency: int, seconds: float, folder: Path) -> float | None:
    litellm = shutil.which("litellm")
    if litellm is None:
        return None
    port = free_port()
    (folder / "litellm.yaml").write_text(
        "model_list:\n  - model_name: gpt-4o-mini\n    litellm_params:\n      model: openai/gpt-4o-mini\n"
        f"      api_base: http://127.0.0.1:{mock_port}/v1\n      api_key: k\n"
        f"general_settings:\n  master_key: {KEY}\n"
    )
    log = (folder / "litellm.log").open("wb")
    process = subprocess.Popen(
        [litellm, "--config", "litellm.yaml", "--port", str(port)], cwd=folder, stdout=log, stderr=log
    )
    os.sched_setaffinity(process.pid, {0})
    try:
        wait_healthy(f"http://127.0.0.1:{port}", timeout_s=120)
        run_load("closed", f"http://127.0.0.1:{port}/v1/chat/completions", concurrency, 2)
        return run_load("closed", f"http://127.0.0.1:{port}/v1/chat/completions", concurrency, seconds)["rps"]
    finally:
        process.terminate()
        process.wait()


class Rig(NamedTuple):
    """A mock provider on core 1 and a gateway on core 0, in a temporary folder."""

    folder: Path
    mock: subprocess.Popen[bytes]
    mock_port: int
    gateway: subprocess.Popen[bytes]
    port: int
    redis_prefix: str
    """A Redis key prefix of the gateway's own, for the caller to delete afterwards."""


def launch(latency_ms: float, config: Callable[[int, int, str], str]) -> Rig:
    """Start the mock (with `latency_ms`) and a gateway whose config is `config(port, mock_port, redis_prefix)`."""
    folder = Path(tempfile.mkdtemp(prefix="meterline-bench-"))
    mock_port, port = free_port(), free_port()
    mock = start(["mock-provider", "--port", str(mock_port), "--latency-ms", str(latency_ms)], folder, core=1)
    redis_prefix = f"meterline-bench-{os.getpid()}-{port}:"
    (folder / "meterline.yaml").write_text(config(port, mock_port, redis_prefix))
    gateway = start(["serve", "--config", "meterline.yaml"], folder, core=0)
    return Rig(folder, mock, mock_port, gateway, port, redis_prefix)


def bench(latency_ms: float, seconds: float, rounds: int, budgets: str, export: bool, fixed_rate: float | None) -> None:
    sink_port = free_port() if export else None
    sink = None
    if sink_port is not None:
        sink = subprocess.Popen([sys.executable, __file__, "--sink", str(sink_port)])
        os.sched_setaffinity(sink.pid, {1})
        os.sched_setscheduler(sink.pid, os.SCHED_IDLE, os.sched_param(0))  # a remote collector's stand-in
        wait_healthy(f"http://127.0.0.1:{sink_port}")
    folder, mock, mock_port, gateway, port, redis_prefix = launch(
        latency_ms, lambda port, mock_port, prefix: gateway_config(port, mock_port, budgets, prefix, sink_port)
    )
    direct_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
    gateway_url = f"http://127.0.0.1:{port}/v1/chat/completions"
    concurrency = 64 if latency_ms == 0 else max(64, int(3000 * latency_ms / 1000))
    served = 0
    try:
        wait_healthy(f"http://127.0.0.1:{mock_port}")
        wait_healthy(f"http://127.0.0.1:{port}")
        exporters = [int(pid) for pid in Path(f"/proc/{gateway.pid}/task/{gateway.pid}/children").read_text().split()]
        for pid in exporters:  # the exporter process the gateway started inherited core 0: it belongs beside the mock
            os.sched_setaffinity(pid, {1})
        warm_up = run_load("closed", gateway_url, 16, 2)["ok"]
        served += warm_up
        time.sleep(1)  # the warm-up's spans are sent; the exporter's start-up CPU is not per request
        exporter_start_cpu_s = sum(cpu_seconds(pid) for pid in exporters)
        gateway_start_cpu_s = cpu_seconds(gateway.pid)
        through = run_load("closed", gateway_url, concurrency, seconds)
        served += through["ok"]
        full_load_cpu_s = cpu_seconds(gateway.pid) - gateway_start_cpu_s
        ceiling = run_load("closed", direct_url, concurrency, seconds)
        latency_runs = []
        for rate in [fixed_rate] if fixed_rate else [TARGET_RPS / 2, through["rps"] / 2]:
            direct, via, cpu_s = alternating(direct_url, gateway_url, rate, seconds, rounds, gateway.pid)
            latency_runs.append((rate, direct, via, cpu_s))
            served += via["ok"]
        rss, peak = rss_mb(gateway.pid)
        exporter_cpu_s = sum(cpu_seconds(pid) for pid in exporters) - exporter_start_cpu_s
        measured = served - warm_up
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
    stored = stored_events(folder / "data" / "meterline.duckdb")
    exported = None
    if sink is not None and sink_port is not None:
        exported = sink_spans(sink_port)
        sink.terminate()
        sink.wait()
    if budgets == "redis":
        delete_redis_keys(redis_prefix)
    compare = budgets == "none" and not export
    litellm_rps = litellm_throughput(mock_port, concurrency, seconds, folder) if compare else None
    floor = passthrough_latency(mock_port, concurrency, seconds, rounds) if compare else None
    mock.terminate()
    mock.wait()

    print(
        f"\n== upstream latency {latency_ms:g} ms, budgets {budgets}, OTLP export {'on' if export else 'off'}, "
        f"gateway on 1 core, concurrency {concurrency} =="
    )
    print(f"gateway throughput:     {through['rps']:8.0f} req/s  ({through['failed']:.0f} failed)")
    print(f"direct to mock (limit): {ceiling['rps']:8.0f} req/s  (load generator + mock on the other core)")
    print(f"gateway RSS:            {rss:.0f} MB now, {peak:.0f} MB peak")
    print(
        f"gateway process CPU:    {full_load_cpu_s * 1e6 / max(through['ok'], 1):.0f} us per request at full load "
        "(all its threads)"
    )
    for rate, direct, via, cpu_s in latency_runs:
        added_p50, added_p99 = via["p50"] - direct["p50"], via["p99"] - direct["p99"]
        verdict = ""
        if rate == TARGET_RPS / 2:
            met = added_p50 <= TARGET_ADDED_P50_MS and added_p99 <= TARGET_ADDED_P99_MS
            targets = f"p50 <= {TARGET_ADDED_P50_MS:g}, p99 <= {TARGET_ADDED_P99_MS:g}"
            verdict = f"  (targets {targets}: {'met' if met else 'MISSED'})"
        print(f"latency at {rate:.0f} req/s:  direct p50 {direct['p50']:.2f} ms p99 {direct['p99']:.2f} ms")
        print(f"                        gateway p50 {via['p50']:.2f} ms p99 {via['p99']:.2f} ms")
        print(f"  added latency:        p50 {added_p50:.2f} ms, p99 {added_p99:.2f} ms{verdict}")
        print(
            f"  load generator stalls: {direct['sent_late']:.0f} direct and {via['sent_late']:.0f} gateway requests "
            f"sent >5 ms late (worst {direct['max_late']:.1f} / {via['max_late']:.1f} ms)"
        )
        print(
            f"  gateway process CPU:  {cpu_s * 1e6 / max(via['ok'], 1):.0f} us per request "
            f"(its core {cpu_s * 100 / (seconds * rounds):.0f}% busy)"
        )
    print(f"events stored / served: {stored} / {served}  ({'equal' if stored == served else 'MISMATCH'})")
    if exported is not None:
        print(f"spans exported / 2 per request: {exported} / {2 * served}")
        print(f"exporter process CPU:   {exporter_cpu_s * 1e6 / max(measured, 1):.0f} us per request (on core 1)")
    if floor is not None:
        floor_rps, floor_direct, floor_via = floor
        print(
            f"bare aiohttp proxy:     {floor_rps:8.0f} req/s; at {floor_rps / 2:.0f} req/s added "
            f"p50 {floor_via['p50'] - floor_direct['p50']:.2f} ms, p99 {floor_via['p99'] - floor_direct['p99']:.2f} ms "
            "(no metering: the floor of this stack on this machine)"
        )
    if compare and litellm_rps is None:
        print("litellm:                not installed (pip install 'litellm[proxy]' to compare)")
    elif litellm_rps is not None:
        print(
            f"litellm throughput:     {litellm_rps:8.0f} req/s; meterline/litellm = {through['rps'] / litellm_rps:.1f}x"
        )
    shutil.rmtree(folder, ignore_errors=True)


def print_result(runner: Coroutine[Any, Any, dict[str, float]]) -> None:
    """Run a load generator (on uvloop when installed) and print its result as JSON for `run_load`."""
    try:
        import uvloop

        result = uvloop.run(runner)
    except ImportError:
        result = asyncio.run(runner)
    print(json.dumps(result))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--sink":
        run_sink(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--passthrough":
        run_passthrough(int(sys.argv[2]), sys.argv[3])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        mode, url, value, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
        gc.disable()  # a pause of the load generator's own would count as the server's latency
        print_result(closed_loop(url, int(value), seconds) if mode == "closed" else open_loop(url, value, seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8, help="length of each run")
    parser.add_argument("--rounds", type=int, default=3, help="latency runs of each path, alternating")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0, 50])
    parser.add_argument("--budgets", nargs="+", choices=["none", "memory", "redis"], default=["none"])
    parser.add_argument("--export", nargs="+", choices=["off", "on"], default=["off"], help="OTLP export")
    parser.add_argument(
        "--rate", type=float, help="req/s of the latency runs (default: half the target, then half the throughput)"
    )
    args = parser.parse_args()
    for budgets in args.budgets:
        for export in args.export:
            for latency_ms in args.latency_ms:
                bench(latency_ms, args.seconds, args.rounds, budgets, export == "on", args.rate)


if __name__ == "__main__":
    main()
