"""`meterline serve --workers 2`: two processes share the port; every event reaches the one store exactly once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayService, Service, free_port, gateway_config, run_cli, worker_gateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def workers(mock_provider: Service, tmp_path) -> Iterator[GatewayService]:  # type: ignore[no-untyped-def]
    port = free_port()
    (tmp_path / "meterline.yaml").write_text(gateway_config(mock_provider.url, port))
    service = worker_gateway(tmp_path, port)
    yield service
    if service.process is not None and service.process.poll() is None:
        service.stop()


def worker_pids(service: GatewayService) -> list[int]:
    """The supervisor's live worker processes (children started by multiprocessing's spawn)."""
    assert service.process is not None
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == service.process.pid and fields[0] != "Z" and b"spawn_main" in command:
            pids.append(int(stat.parent.name))
    return sorted(pids)


def fresh_connection_call(service: GatewayService, feature: str) -> httpx.Response:
    """One call on a new connection, so the kernel picks a worker for it."""
    with httpx.Client(base_url=service.url) as client:
        headers = service.headers(**{"x-meterline-feature": feature})
        return client.post("/v1/chat/completions", json=CHAT, headers=headers)


def test_two_workers_serve_calls_and_the_api_and_lose_no_event(workers: GatewayService) -> None:
    deadline = time.monotonic() + 30
    while "worker 1 listening" not in workers.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(worker_pids(workers)) == 2

    replies = [fresh_connection_call(workers, "spread") for _ in range(40)]
    assert [reply.status_code for reply in replies] == [200] * 40
    for _ in range(20):  # API reads land on both workers; worker 1 forwards them to worker 0
        with httpx.Client(base_url=workers.url) as client:
            assert client.get("/api/v1/top", params={"by": "feature"}, headers=workers.headers()).status_code == 200
            assert client.get("/login").status_code == 200
    events = workers.events(expected=40, feature="spread")
    assert len(events) == 40 and len({event["request_id"] for event in events}) == 40
    for _ in range(6):  # whichever worker the scrape reaches, /metrics counts both workers' calls
        with httpx.Client(base_url=workers.url) as client:
            families = text_string_to_metric_families(client.get("/metrics").text)
        requests = [s.value for f in families for s in f.samples if s.name == "meterline_requests_total"]
        assert sum(requests) == 40

    # a killed worker is restarted, and what it had answered still reaches the store
    victim = worker_pids(workers)[1]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (len(worker_pids(workers)) < 2 or victim in worker_pids(workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(worker_pids(workers)) == 2 and victim not in worker_pids(workers)
    replies = [fresh_connection_call(workers, "after-restart") for _ in range(20)]
    assert all(reply.status_code == 200 for reply in replies)
    assert len(workers.events(expected=20, feature="after-restart")) == 20

    assert workers.stop() == 0
    assert "Traceback" not in workers.log_text()


def test_a_start_up_failure_stops_every_worker_with_its_message(workers: GatewayService) -> None:
    # the store file is taken by the running workers: the second supervisor's worker 0 cannot start
    result = run_cli(
        "serve", "--config", "meterline.yaml", "--workers", "2", "--port", str(free_port()),
        cwd=workers.cwd, env=workers.env,
    )  # fmt: skip
    assert result.returncode != 0
    assert "one writing process" in result.stderr and "restarting" not in result.stderr
