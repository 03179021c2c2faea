"""Past one process, on the ClickHouse store (chdb): workers sharing Redis budgets, SIGKILL and SIGTERM under
load with every answered call stored exactly once, and `meterline ingest` draining gateways' spools.

chdb admits one process per data folder, so what the store holds is read after the processes
stop, by `meterline export` (a process of its own, reading the ClickHouse store in process).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import (
    MASTER_KEY,
    GatewayService,
    Service,
    free_port,
    gateway_config,
    redis_budgets,
    run_cli,
    worker_gateway,
)
from tests.test_budgets import SHARED_BUDGET
from tests.test_workers import worker_pids

STORE_LINE = "store: {kind: duckdb, path: ./data/meterline.duckdb, spool_dir: ./data/spool, flush_interval_ms: 50}"


def clickhouse_config(mock_url: str, port: int, chdb_folder: Path, loader: str = "embedded", extra: str = "") -> str:
    text = gateway_config(mock_url, port, extra=extra)
    store = (
        f"store: {{kind: clickhouse, url: 'chdb://{chdb_folder}', database: meterline, spool_dir: ./data/spool, "
        f"flush_interval_ms: 50, loader: {loader}, control_path: ./data/control.sqlite}}"
    )
    assert STORE_LINE in text
    return text.replace(STORE_LINE, store)


def call(service: GatewayService, team: str, feature: str, output_tokens: int = 16) -> httpx.Response | None:
    """One chat call on a new connection (the kernel picks a worker); None if the connection broke."""
    body = {"model": "gpt-4o-mini", "max_tokens": output_tokens, "messages": [{"role": "user", "content": "hi"}]}
    headers = service.headers(
        **{"x-meterline-team": team, "x-meterline-feature": feature, "x-mock-output-tokens": str(output_tokens)}
    )
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            return client.post("/v1/chat/completions", json=body, headers=headers)
    except httpx.TransportError:
        return None


def stored_events(cwd: Path, config: str = "meterline.yaml") -> list[dict[str, object]]:
    """Every event in the store, read by `meterline export` once no server runs."""
    result = run_cli(
        "export", "--config", config, "--since", "3650d", "--format", "jsonl", "--out", "all.jsonl",
        cwd=cwd, env={"TEST_MASTER_KEY": MASTER_KEY},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in (cwd / "all.jsonl").read_text().splitlines() if line]


class Load:
    """Calls sent from a few threads until stopped; remembers the request id of every answered call."""

    def __init__(self, service: GatewayService, feature: str) -> None:
        self.service = service
        self.feature = feature
        self.answered: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(4)
        self._futures = [self._pool.submit(self._run) for _ in range(4)]

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if never stopped
        while not self._stop.is_set() and time.monotonic() < deadline:
            reply = call(self.service, "load", self.feature)
            if reply is not None and reply.status_code == 200:
                self.answered.append(reply.headers["x-meterline-request-id"])
            else:
                self.refused += 1

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.answered) < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        for future in self._futures:
            future.result()
        self._pool.shutdown()


def kill_and_await_restart(service: GatewayService, index: int) -> None:
    """SIGKILL worker `index` and wait until the supervisor's replacement listens again."""
    listening = f"worker {index} listening"
    before = service.log_text().count(listening)
    victim = worker_pids(service)[index]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while service.log_text().count(listening) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.log_text().count(listening) > before and victim not in worker_pids(service)


def test_workers_on_clickhouse_share_redis_budgets_and_store_every_answer_once_through_kills(
    mock_provider: Service, tmp_path: Path, new_redis_prefix: Callable[[], str]
) -> None:
    port = free_port()
    budgets = redis_budgets(new_redis_prefix(), SHARED_BUDGET)
    (tmp_path / "meterline.yaml").write_text(
        clickhouse_config(mock_provider.url, port, tmp_path / "chdb", extra=budgets)
    )
    service = worker_gateway(tmp_path, port)
    try:
        deadline = time.monotonic() + 30
        while "worker 1 listening" not in service.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)

        # the budget is counted once across both workers: three ~$0.00006 calls fit in $0.0002, the fourth does not
        statuses = [
            getattr(call(service, "shared", "budget", output_tokens=100), "status_code", None) for _ in range(6)
        ]
        assert statuses[:3] == [200, 200, 200] and set(statuses[3:]) == {429}

        load = Load(service, "load")
        load.wait_for(40)
        kill_and_await_restart(service, 1)  # a gateway worker, mid-load
        load.wait_for(len(load.answered) + 40)
        kill_and_await_restart(service, 0)  # worker 0, which loads the spool into ClickHouse, mid-load
        load.wait_for(len(load.answered) + 40)
        load.stop()
        # SIGTERM: in-flight calls finish, the spool is loaded, every process exits cleanly
        assert service.stop() == 0
    finally:
        if service.process is not None and service.process.poll() is None:
            service.stop(signal.SIGKILL)

    assert list((tmp_path / "data" / "spool").glob("seg-*.jsonl")) == []
    stored = [event for event in stored_events(tmp_path) if event["feature"] == "load"]
    stored_requests = [event["request_id"] for event in stored]
    assert len(set(stored_requests)) == len(stored_requests)  # no event twice
    assert set(load.answered) <= set(stored_requests)  # every answered call is stored
    # a call cut off by a kill may have been stored without its answer reaching the client: never more than that
    assert len(stored_requests) - len(load.answered) <= load.refused
    assert "Traceback" not in service.log_text()


def test_gateways_hand_their_spool_to_meterline_ingest(mock_provider: Service, tmp_path: Path) -> None:
    """Two gateways (`store.loader: external`) write spools; one ingester drains both folders, through a SIGKILL."""
    ingest_folder = tmp_path / "ingest"
    ingest_folder.mkdir()
    gateways = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        port = free_port()
        # chdb admits one process per folder: each gateway's API reads a folder of its own here, where against a
        # ClickHouse server every process names the same URL
        (folder / "meterline.yaml").write_text(
            clickhouse_config(mock_provider.url, port, folder / "chdb", loader="external")
        )
        gateway = GatewayService(
            ["serve", "--config", "meterline.yaml"], folder, port, folder / "gateway.log",
            env={"TEST_MASTER_KEY": MASTER_KEY}, data_dir=folder / "data",
        )  # fmt: skip
        gateway.start()
        gateways.append(gateway)
    (ingest_folder / "meterline.yaml").write_text(
        clickhouse_config(mock_provider.url, free_port(), ingest_folder / "chdb")
    )
    spools = [str(gateway.data_dir / "spool") for gateway in gateways]
    ingest_args = ["ingest", "--config", "meterline.yaml", "--report-every", "0.2"]
    for spool in spools:
        ingest_args += ["--spool-dir", spool]
    ingester = Service(ingest_args, ingest_folder, 0, ingest_folder / "ingest.log", env={"TEST_MASTER_KEY": MASTER_KEY})
    try:
        ingester.start(ready_text="ingest: draining")
        answered = [call(gateway, "t", "ingested") for gateway in gateways for _ in range(30)]
        assert all(reply is not None and reply.status_code == 200 for reply in answered)
        deadline = time.monotonic() + 30
        while "60 events loaded" not in ingester.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "60 events loaded" in ingester.log_text()

        ingester.stop(signal.SIGKILL)  # the ingester dies; the gateways keep answering and spooling
        more = [call(gateway, "t", "ingested") for gateway in gateways for _ in range(20)]
        assert all(reply is not None and reply.status_code == 200 for reply in more)
        for gateway in gateways:
            assert gateway.stop() == 0  # SIGTERM: a gateway flushes its spool and hands it off
        assert sum(len(list(Path(spool).glob("seg-*.jsonl"))) for spool in spools) >= 1

        drained = run_cli(
            "ingest", "--config", "meterline.yaml", "--once", *ingest_args[5:],
            cwd=ingest_folder, env={"TEST_MASTER_KEY": MASTER_KEY},
        )  # fmt: skip
        assert drained.returncode == 0, drained.stderr
        assert "loaded 40 new event(s); 0 bytes left" in drained.stdout
    finally:
        for service in [*gateways, ingester]:
            if service.process is not None and service.process.poll() is None:
                service.stop(signal.SIGKILL)

    stored = [event for event in stored_events(ingest_folder) if event["feature"] == "ingested"]
    request_ids = {reply.headers["x-meterline-request-id"] for reply in [*answered, *more] if reply is not None}
    assert sorted(event["request_id"] for event in stored) == sorted(request_ids)
    assert sum(len(list(Path(spool).glob("seg-*.jsonl"))) for spool in spools) == 0


def test_a_gateway_starts_and_serves_while_clickhouse_is_down(mock_provider: Service, tmp_path: Path) -> None:
    """No ClickHouse answers at the configured URL: calls are answered, readiness holds, events wait in the spool."""
    port = free_port()
    config = (
        gateway_config(mock_provider.url, port).replace(
            STORE_LINE,
            f"store: {{kind: clickhouse, url: 'http://127.0.0.1:{free_port()}', spool_dir: ./data/spool, "
            "flush_interval_ms: 50}",
        )
        + "budgets:\n  budgets: [{scope: 'team:t', period: day, limit_usd: 100, actions: [throttle]}]\n"
    )
    (tmp_path / "meterline.yaml").write_text(config)
    gateway = GatewayService(
        ["serve", "--config", "meterline.yaml"], tmp_path, port, tmp_path / "gateway.log",
        env={"TEST_MASTER_KEY": MASTER_KEY}, data_dir=tmp_path / "data",
    )  # fmt: skip
    gateway.start()
    try:
        replies = [call(gateway, "t", "during-outage") for _ in range(5)]
        assert all(reply is not None and reply.status_code == 200 for reply in replies)
        ready = httpx.get(gateway.url + "/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["store"].startswith("unreachable")
        spooled = b"".join(path.read_bytes() for path in (tmp_path / "data" / "spool").glob("seg-*.jsonl"))
        for reply in replies:
            assert reply is not None and reply.headers["x-meterline-request-id"].encode() in spooled
    finally:
        assert gateway.stop() == 0  # SIGTERM with the store still down: the events stay in the spool
    log = gateway.log_text()
    assert "ClickHouse does not answer" in log and "serving anyway: events wait in the spool" in log
    assert "loading is retried" in log
    assert "budget 'team:t:day' (team t, per day) counts from zero: its spend so far cannot be read" in log
    assert len(list((tmp_path / "data" / "spool").glob("seg-*.jsonl"))) >= 1
