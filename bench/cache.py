"""Cache benchmark: the latency of a cache hit beside a miss's, a bypass's and the provider's. Prints numbers only.

Setup as in bench/gateway.py: the gateway (full metering, the exact cache on) is pinned to core
0; the mock provider and the load generator (its own process) share core 1. For each cache
backend (in process, Redis) and upstream latency, an open loop at a fixed rate sends:

- direct: straight to the mock, every request different (what the provider takes);
- bypass: through the gateway with `x-meterline-cache: off` (the gateway without its cache);
- miss: through the gateway, every request different (a lookup that misses, then a store);
- hit: through the gateway, the same request every time (answered from the cache).

Added latency is the gateway's share: a bypass's or miss's p50/p99 minus the direct run's; a
hit makes no upstream call, so all of its latency is added by the gateway.

Then the cache's own work per call, in process without HTTP (less at the mercy of a busy machine):
planning a call (policy, scope, request hash) and a lookup that hits, and a miss's lookup and store.

Redis: `MLINE_BENCH_REDIS_URL` (default redis://127.0.0.1:6379/15), under a key prefix of its
own that is deleted afterwards.

Run: .venv/bin/python bench/cache.py [--seconds 5] [--rate 200] [--latency-ms 0 50] [--backend memory redis]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from gateway import REDIS_URL, delete_redis_keys, launch, paced, print_result, summary, wait_healthy

KEY = "bench-master-key"
HEADERS = {"authorization": f"Bearer {KEY}", "content-type": "application/json", "x-meterline-feature": "bench"}
MODES = ("direct", "bypass", "miss", "hit")


def body(number: int | None) -> bytes:
    prompt = "benchmark me please" if number is None else f"benchmark me please, request {number}"
    return json.dumps(
        {"model": "gpt-4o-mini", "temperature": 0, "max_tokens": 32, "messages": [{"role": "user", "content": prompt}]}
    ).encode()


# ---- load generator (runs in its own process) --------------------------------------------------


async def open_loop(mode: str, url: str, rate: float, seconds: float) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    failed = 0
    headers = {**HEADERS, "x-meterline-cache": "off"} if mode == "bypass" else HEADERS
    expected = {"bypass": "bypass", "miss": "miss", "hit": "hit_exact"}.get(mode)
    numbers = itertools.count(time.time_ns())

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        data = body(None if mode == "hit" else next(numbers))
        began = time.perf_counter()
        async with session.post(url, data=data, headers=headers) as reply:
            await reply.read()
            if reply.status != 200 or reply.headers.get("x-meterline-cache") != expected:
                failed += 1
        latencies.append((time.perf_counter() - began) * 1000)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        if mode == "hit":
            await one(session)  # the first is a miss; the rest are hits
            latencies.clear()
            failed = 0
        await paced(lambda: one(session), rate, seconds)
    return summary(latencies, failed)


def run_load(mode: str, url: str, rate: float, seconds: float) -> dict[str, float]:
    """Run the load generator in a separate process pinned to core 1; returns its JSON result."""
    process = subprocess.Popen(
        [sys.executable, __file__, "--load", mode, url, str(rate), str(seconds)], stdout=subprocess.PIPE
    )
    os.sched_setaffinity(process.pid, {1})
    out, _ = process.communicate()
    return json.loads(out)


# ---- the benchmark -----------------------------------------------------------------------------


def gateway_config(port: int, mock_port: int, backend: str, redis_prefix: str) -> str:
    redis = f", redis_url: '{REDIS_URL}', key_prefix: '{redis_prefix}'" if backend == "redis" else ""
    return (
        f"server: {{host: 127.0.0.1, port: {port}, master_key: {KEY}}}\n"
        "store: {kind: duckdb, path: ./data/meterline.duckdb, spool_dir: ./data/spool}\n"
        f"providers:\n  openai: {{kind: openai, base_url: http://127.0.0.1:{mock_port}/v1, api_key: k}}\n"
        "models:\n  - {name: gpt-4o-mini, provider: openai}\n"
        f"cache: {{enabled: true, backend: {backend}{redis}}}\n"
    )


def bench(backend: str, latency_ms: float, rate: float, seconds: float) -> None:
    rig = launch(latency_ms, lambda port, mock_port, prefix: gateway_config(port, mock_port, backend, prefix))
    urls = {
        "direct": f"http://127.0.0.1:{rig.mock_port}/v1/chat/completions",
        **dict.fromkeys(MODES[1:], f"http://127.0.0.1:{rig.port}/v1/chat/completions"),
    }
    try:
        wait_healthy(f"http://127.0.0.1:{rig.mock_port}")
        wait_healthy(f"http://127.0.0.1:{rig.port}")
        run_load("miss", urls["miss"], rate, 1)  # warm-up
        results = {mode: run_load(mode, urls[mode], rate, seconds) for mode in MODES}
    finally:
        rig.gateway.send_signal(signal.SIGTERM)
        rig.gateway.wait(timeout=60)
        rig.mock.terminate()
        rig.mock.wait()
        if backend == "redis":
            delete_redis_keys(rig.redis_prefix)
        shutil.rmtree(rig.folder, ignore_errors=True)

    direct = results["direct"]
    print(f"\n== cache backend {backend}, upstream latency {latency_ms:g} ms, {rate:g} req/s for {seconds:g} s ==")
    for mode in MODES:
        result = results[mode]
        line = f"{mode:7s} p50 {result['p50']:7.2f} ms  p99 {result['p99']:7.2f} ms"
        if mode in ("bypass", "miss"):
            added_p50, added_p99 = result["p50"] - direct["p50"], result["p99"] - direct["p99"]
            line += f"   added: p50 {added_p50:5.2f} ms, p99 {added_p99:5.2f} ms"
        elif mode == "hit":
            line += f"   added: p50 {result['p50']:5.2f} ms, p99 {result['p99']:5.2f} ms (no upstream call)"
        print(line + (f"   ({result['failed']:.0f} failed)" if result["failed"] else ""))


def cache_work(backend: str, calls: int = 20_000) -> None:
    """Microseconds per call of the cache's own steps, with the same request body as the HTTP runs."""
    from meterline.cache.entries import CachedAnswer
    from meterline.cache.service import ResponseCache
    from meterline.config import CacheConfig

    settings = {"enabled": True, "backend": backend, "redis_url": REDIS_URL, "key_prefix": f"mlbench-{os.getpid()}:"}
    cache = ResponseCache(CacheConfig.model_validate(settings))
    request = json.loads(body(None))
    answer = CachedAnswer(status=200, content_type="application/json", body=b"x" * 600, cost_usd=0.0001)
    caller = ("key", "team", "team")
    count = calls if backend == "memory" else calls // 10

    async def no_embedding(_: str) -> None:
        return None

    async def run() -> tuple[float, float]:
        await cache.start()
        plan = cache.plan("chat", "gpt-4o-mini", request, {}, caller, "bench")
        await cache.store(plan, answer)
        began = time.perf_counter()
        for _ in range(count):
            await cache.lookup(cache.plan("chat", "gpt-4o-mini", request, {}, caller, "bench"), no_embedding)
        hit_us = (time.perf_counter() - began) / count * 1e6
        began = time.perf_counter()
        for number in range(count):
            plan = cache.plan("chat", "gpt-4o-mini", json.loads(body(number)), {}, caller, "bench")
            await cache.lookup(plan, no_embedding)
            await cache.store(plan, answer)
        miss_us = (time.perf_counter() - began) / count * 1e6
        await cache.close()
        return hit_us, miss_us

    hit_us, miss_us = asyncio.run(run())
    if backend == "redis":
        delete_redis_keys(settings["key_prefix"])
    print(f"cache work, {backend:6s}: plan + hit {hit_us:7.1f} us/call; plan + miss + store {miss_us:7.1f} us/call")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        mode, url, rate, seconds = sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
        print_result(open_loop(mode, url, rate, seconds))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rate", type=float, default=200, help="req/s of each run")
    parser.add_argument("--latency-ms", type=float, nargs="+", default=[0, 50])
    parser.add_argument("--backend", nargs="+", choices=["memory", "redis"], default=["memory", "redis"])
    args = parser.parse_args()
    for backend in args.backend:
        for latency_ms in args.latency_ms:
            bench(backend, latency_ms, args.rate, args.seconds)
    print()
    for backend in args.backend:
        cache_work(backend)


if __name__ == "__main__":
    main()
