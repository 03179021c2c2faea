"""`meterline demo`: the mock provider and the gateway as child processes, synthetic traffic, a summary.

Everything runs locally on the embedded store: the demo writes its own config into its data
folder, starts `meterline mock-provider` and `meterline serve`, sends attributed traffic through
the gateway (OpenAI chat, streaming, embeddings, Anthropic messages, Gemini generateContent,
agent runs, a few injected faults that retries absorb, repeated questions the response cache
answers), then prints where the money went and keeps a trickle of traffic going until Ctrl-C.

A new demo store first gets a week of simulated history (`meterline.simulate` with every leak of
`meterline.leaks`), so the dashboard opens with trends, a month-end forecast and insights to
explore, not only the minute of live traffic.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import click
import orjson

DEMO_MASTER_KEY = "mlk-demo-master-key"

_FEATURES = {
    "search-answer": ("search", "gpt-4o-mini"),
    "support-chat": ("support", "claude-sonnet-4-5"),
    "summarizer": ("content", "gpt-4o"),
    "ticket-classifier": ("support", "gpt-4o"),
    "doc-indexer": ("search", "text-embedding-3-small"),
    "research-agent": ("research", "claude-haiku-4-5"),
    "doc-tagger": ("content", "gemini-2.5-flash"),
}
_FAQ = [
    f"How do I {task} in the {area} settings?" for task in ("reset", "export", "share") for area in ("team", "billing")
]
"""The questions search-answer users ask again and again: the cache answers the repeats."""


def demo_config(port: int, mock_port: int) -> str:
    mock = f"http://127.0.0.1:{mock_port}"
    return f"""# Written by `meterline demo`; a real setup points the providers at the real APIs.
server: {{host: 127.0.0.1, port: {port}, master_key: {DEMO_MASTER_KEY}}}
store: {{kind: duckdb, path: ./meterline.duckdb, spool_dir: ./spool}}
providers:
  openai:    {{kind: openai, base_url: {mock}/v1, api_key: mock-openai-key}}
  anthropic: {{kind: anthropic, base_url: {mock}, api_key: mock-anthropic-key}}
  gemini:    {{kind: gemini, base_url: {mock}/v1beta, api_key: mock-gemini-key}}
resilience: {{retries: 1, backoff: {{initial_s: 0.05, max_s: 0.5}}}}
cache: {{enabled: true}}
models:
  - {{name: gpt-4o-mini, provider: openai}}
  - {{name: gpt-4o, provider: openai}}
  - {{name: fast, provider: openai, upstream_model: gpt-4o-mini}}
  - {{name: text-embedding-3-small, provider: openai}}
  - {{name: claude-sonnet-4-5, provider: anthropic}}
  - {{name: claude-haiku-4-5, provider: anthropic}}
  - {{name: gemini-2.5-flash, provider: gemini}}
"""


def _start(
    args: list[str], cwd: Path, log_name: str, ready_text: str, timeout_s: float = 60
) -> subprocess.Popen[bytes]:
    """Start `meterline ARGS` with its output in `cwd/log_name`; return once the log shows `ready_text`."""
    log_path = cwd / log_name
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "meterline", *args], cwd=cwd, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready_text in log_path.read_text(errors="replace"):
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)
    process.kill()
    raise click.ClickException(f"`meterline {' '.join(args)}` did not start; see {log_path.resolve()}")


def synthetic_call(rng: random.Random, index: int) -> tuple[str, dict[str, str], dict[str, Any]]:
    """One plausible call: (path, headers, body), attributed to a feature, team and user."""
    feature = rng.choice(list(_FEATURES))
    team, model = _FEATURES[feature]
    user = f"user-{int(rng.paretovariate(1.2)) % 200:03d}"
    headers = {"x-meterline-feature": feature, "x-meterline-team": team, "x-meterline-user": user}
    headers["x-meterline-app"] = "web" if team != "research" else "agents"
    if rng.random() < 0.03:
        headers["x-mock-fault"] = rng.choice(["rate_limit", "server_error"])
    if rng.random() < 0.3:
        headers["x-mock-cached-tokens"] = "8"
    prompt = " ".join(f"word{rng.randrange(1000)}" for _ in range(rng.randrange(20, 400)))
    stream = rng.random() < 0.3
    output = str(rng.randrange(8, 300))
    headers["x-mock-output-tokens"] = output
    if model.startswith("text-embedding"):
        return "/v1/embeddings", headers, {"model": model, "input": [prompt]}
    if model.startswith("claude"):
        if feature == "research-agent":
            headers["x-meterline-agent-run"] = f"run-{index // 6}"
            headers["x-meterline-agent-step"] = str(index % 6)
        body = {"model": model, "max_tokens": 1024, "stream": stream, "messages": [{"role": "user", "content": prompt}]}
        return "/v1/messages", headers, body
    if model.startswith("gemini"):
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": prompt}]}]}
        return f"/v1beta/models/{model}:{method}", headers, body
    if feature == "search-answer":  # temperature 0 and a few recurring questions: cacheable
        messages = [
            {"role": "system", "content": "Answer from the help center."},
            {"role": "user", "content": rng.choice(_FAQ)},
        ]
        return "/v1/chat/completions", headers, {"model": model, "temperature": 0, "messages": messages}
    messages = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": prompt}]
    return "/v1/chat/completions", headers, {"model": model, "stream": stream, "messages": messages}


async def send_traffic(base_url: str, count: int, seed: int, show_progress: bool) -> int:
    """Send `count` synthetic calls with 8 in flight; returns how many were answered with 2xx."""
    rng = random.Random(seed)
    calls = [synthetic_call(rng, index) for index in range(count)]
    auth = {"authorization": f"Bearer {DEMO_MASTER_KEY}", "anthropic-version": "2023-06-01"}
    answered = 0
    queue: asyncio.Queue[tuple[str, dict[str, str], dict[str, Any]]] = asyncio.Queue()
    for call in calls:
        queue.put_nowait(call)
    with click.progressbar(length=count, label="sending demo traffic", hidden=not show_progress) as progress:

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal answered
            while not queue.empty():
                path, headers, body = queue.get_nowait()
                async with session.post(base_url + path, headers={**auth, **headers}, data=orjson.dumps(body)) as reply:
                    await reply.read()
                    answered += reply.status < 300
                progress.update(1)

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(worker(session) for _ in range(8)))
    return answered


async def spend_summary(base_url: str, since: str) -> dict[str, dict[str, float]]:
    """Spend by feature and by model since `since` (ISO 8601), from the analytics API's top-N endpoint."""
    headers = {"authorization": f"Bearer {DEMO_MASTER_KEY}"}
    totals: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession() as session:
        for dimension in ("feature", "model"):
            params = {"by": dimension, "since": since, "limit": "20"}
            async with session.get(base_url + "/api/v1/top", params=params, headers=headers) as reply:
                top = await reply.json()
            totals[dimension] = {row["value"]: row["cost_usd"] for row in top["rows"]}
            if top["unattributed"]["cost_usd"]:
                totals[dimension]["(unattributed)"] = top["unattributed"]["cost_usd"]
    return totals


async def wait_for_events(base_url: str, since: str, expected: int, timeout_s: float = 60) -> bool:
    """Wait until the store holds `expected` events (at most 1,000) that started at `since` or later; whether
    they arrived within `timeout_s` (a gateway that just opened a large store may take a while to load)."""
    headers = {"authorization": f"Bearer {DEMO_MASTER_KEY}"}
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(
                base_url + "/api/v1/events", params={"limit": "1000", "since": since}, headers=headers
            ) as reply:
                if len((await reply.json())["data"]) >= min(expected, 1000):
                    return True
            await asyncio.sleep(0.25)
    return False


def write_history(store_path: Path, days: int) -> int:
    """Fill a new store with `days` of simulated traffic up to this hour, every leak included; the events written."""
    from meterline.config import StoreConfig
    from meterline.leaks import LEAK_TYPES
    from meterline.pricing.table import PriceTable
    from meterline.simulate import PROVIDERS, hour_floor, simulate
    from meterline.store.duckdb import DuckDBStore

    store = DuckDBStore(StoreConfig(path=store_path))
    store.open()
    try:
        end = hour_floor(datetime.now(UTC))
        written, _ = simulate(
            store, PriceTable.load(None, PROVIDERS), days=days, end=end, kinds=[], leaks=list(LEAK_TYPES)
        )
    finally:
        store.close()
    return written


def run_demo(
    port: int, mock_port: int, data_dir: Path, request_count: int, duration: float | None, history_days: int
) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / "meterline.yaml"
    config_path.write_text(demo_config(port, mock_port))
    started = time.monotonic()
    store_path = data_dir / "meterline.duckdb"
    if history_days and not store_path.exists():
        click.echo(f"writing {history_days} days of simulated history (with the usual leaks) into {store_path} ...")
        written = write_history(store_path, history_days)
        click.echo(f"{written:,} simulated events written")
    mock = _start(
        ["mock-provider", "--port", str(mock_port), "--latency-ms", "20", "--per-token-ms", "0.5"],
        data_dir,
        "mock-provider.log",
        "listening",
    )
    gateway = _start(["serve", "--config", config_path.name], data_dir, "gateway.log", "listening")
    base_url = f"http://127.0.0.1:{port}"
    try:
        live_since = datetime.now(UTC).isoformat()
        answered = asyncio.run(send_traffic(base_url, request_count, seed=7, show_progress=True))
        loaded = asyncio.run(wait_for_events(base_url, live_since, request_count))
        totals = asyncio.run(spend_summary(base_url, live_since))
        click.echo(f"\n{answered} of {request_count} calls answered (the rest hit injected provider faults).")
        if not loaded:
            click.echo("some of their events are still being loaded: the figures below and the dashboard catch up")
        for dimension in ("feature", "model"):
            click.echo(f"\nspend of these calls by {dimension}:")
            for name, cost in sorted(totals[dimension].items(), key=lambda item: -item[1]):
                click.echo(f"  {name:<28} ${cost:,.6f}")
        click.echo(
            f"\ndashboard:  {base_url}/   (sign in with the master key)"
            f"\nmaster key: {DEMO_MASTER_KEY}"
            f"\ngateway:  {base_url}   (OpenAI base_url {base_url}/v1, Anthropic base_url {base_url})"
            f"\nevents:   curl -H 'Authorization: Bearer {DEMO_MASTER_KEY}' '{base_url}/api/v1/events?limit=5'"
            f"\ndata:     {data_dir.resolve()} (config, logs, spool, DuckDB file)"
        )
        click.echo("\nsending a trickle of traffic; Ctrl-C stops the demo" if duration is None else "")
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        index = request_count
        while duration is None or time.monotonic() - started < duration:
            asyncio.run(send_traffic(base_url, 1, seed=index, show_progress=False))
            index += 1
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for process in (gateway, mock):
            process.send_signal(signal.SIGTERM)
        for process in (gateway, mock):
            process.wait(timeout=30)
