"""Shared fixtures: real `meterline` processes (mock provider, gateway) on free local ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

MASTER_KEY = "mlk-test-master-key"
TEST_REDIS_URL = os.environ.get("MLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
"""The Redis the budget tests use (scripts/test.sh starts one when none answers on 127.0.0.1:6379)."""


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `meterline <args>` to the end in `cwd`, with `env` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "meterline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def per_million(tokens: int, price: float) -> float:
    """What `tokens` cost at `price` USD per million tokens (how price tables state prices)."""
    return tokens * price / 1_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    """A `meterline` child process whose output goes to a log file."""

    args: list[str]
    cwd: Path
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_text: str = "listening", timeout_s: float = 60) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "meterline", *self.args],
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        seen = self.log_path.stat().st_size if self.log_path.exists() else 0
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready_text in self.log_path.read_text(errors="replace")[seen:] or self._answers():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"meterline {' '.join(self.args)} did not start:\n{self.log_text()}")

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)


@dataclass
class GatewayService(Service):
    data_dir: Path = Path()

    def headers(self, **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {MASTER_KEY}", **extra}

    def events(self, expected: int = 1, timeout_s: float = 15, **filters: Any) -> list[dict[str, Any]]:
        """Stored events matching `filters`, waiting until at least `expected` have been loaded."""
        params = {"limit": "1000", **{name: str(value) for name, value in filters.items()}}
        deadline = time.monotonic() + timeout_s
        while True:
            reply = httpx.get(self.url + "/api/v1/events", params=params, headers=self.headers(), timeout=10)
            reply.raise_for_status()
            data = reply.json()["data"]
            if len(data) >= expected or time.monotonic() > deadline:
                return data
            time.sleep(0.05)

    def only_event(self, **filters: Any) -> dict[str, Any]:
        """The one stored event matching `filters` (e.g. a unique `user`)."""
        events = self.events(**filters)
        assert len(events) == 1, events
        return events[0]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `meterline <args> --config meterline.yaml` against this gateway's config."""
        return run_cli(*args, "--config", "meterline.yaml", cwd=self.cwd, env=self.env)

    def openai(self, **options: Any):  # type: ignore[no-untyped-def]
        import openai

        return openai.OpenAI(base_url=self.url + "/v1", api_key=MASTER_KEY, max_retries=0, **options)

    def async_openai(self, **options: Any):  # type: ignore[no-untyped-def]
        import openai

        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=MASTER_KEY, max_retries=0, **options)

    def anthropic(self, **options: Any):  # type: ignore[no-untyped-def]
        import anthropic

        return anthropic.Anthropic(base_url=self.url, api_key=MASTER_KEY, max_retries=0, **options)


def gateway_config(
    mock_url: str,
    port: int,
    extra_providers: str = "",
    extra_models: str = "",
    pricing: str = "",
    extra: str = "",
    extra_server: str = "",
) -> str:
    """The test gateway's config; `extra` adds top-level sections (budgets, alerts), `extra_server`
    settings of the server section (", name: value, ...")."""
    return f"""
server: {{host: 127.0.0.1, port: {port}, master_key: ${{TEST_MASTER_KEY}}, max_body_mb: 1{extra_server}}}
store: {{kind: duckdb, path: ./data/meterline.duckdb, spool_dir: ./data/spool, flush_interval_ms: 50}}
{pricing}
providers:
  openai:    {{kind: openai, base_url: {mock_url}/v1, api_key: provider-openai-secret}}
  anthropic: {{kind: anthropic, base_url: {mock_url}, api_key: provider-anthropic-secret}}
  local:     {{kind: openai_compatible, base_url: {mock_url}/v1}}
{extra_providers}
models:
  - {{name: gpt-4o-mini, provider: openai}}
  - {{name: gpt-4o, provider: openai}}
  - {{name: fast, provider: openai, upstream_model: gpt-4o-mini}}
  - {{name: text-embedding-3-small, provider: openai}}
  - {{name: claude-sonnet-4-5, provider: anthropic}}
  - {{name: claude-haiku-4-5, provider: anthropic}}
  - {{name: llama-local, provider: local}}
{extra_models}
{extra}
"""


def worker_gateway(folder: Path, port: int, count: int = 2) -> GatewayService:
    """`meterline serve --workers <count>` with `folder`/meterline.yaml, started once worker 0 listens."""
    service = GatewayService(
        ["serve", "--config", "meterline.yaml", "--workers", str(count)],
        folder,
        port,
        folder / "gateway.log",
        env={"TEST_MASTER_KEY": MASTER_KEY},
        data_dir=folder / "data",
    )
    service.start(ready_text="worker 0 listening")
    return service


def redis_budgets(prefix: str, budgets: str) -> str:
    """A `budgets:` config section counting in the test Redis under `prefix`, with `budgets` (a YAML list)."""
    return f"""
budgets:
  backend: redis
  redis_url: {TEST_REDIS_URL}
  key_prefix: "{prefix}"
  budgets: {budgets}
"""


@pytest.fixture(scope="session")
def new_redis_prefix() -> Iterator[Callable[[], str]]:
    """Makes Redis key prefixes of their own in the test Redis (`TEST_REDIS_URL`); their keys are deleted at the end."""
    import redis

    prefixes: list[str] = []

    def new() -> str:
        prefixes.append(f"mltest-{uuid.uuid4().hex[:12]}:")
        return prefixes[-1]

    yield new
    with redis.Redis.from_url(TEST_REDIS_URL) as client:
        for prefix in prefixes:
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)


@pytest.fixture(scope="session")
def mock_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("mock")
    port = free_port()
    service = Service(["mock-provider", "--port", str(port)], folder, port, folder / "mock.log")
    service.start()
    yield service
    service.stop()


def start_gateway(folder: Path, mock_provider: Service, **config_extras: str) -> GatewayService:
    """`meterline serve` in `folder` (data under `folder/data`) with the test config plus extras, started."""
    port = free_port()
    (folder / "meterline.yaml").write_text(gateway_config(mock_provider.url, port, **config_extras))
    service = GatewayService(
        ["serve", "--config", "meterline.yaml"],
        folder,
        port,
        folder / "gateway.log",
        env={"TEST_MASTER_KEY": MASTER_KEY},
        data_dir=folder / "data",
    )
    service.start()
    return service


@pytest.fixture(scope="session")
def make_gateway(mock_provider: Service, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Start a gateway with the test config (plus extras); stopped at the end of the session."""
    started: list[GatewayService] = []

    def make(**config_extras: str) -> GatewayService:
        service = start_gateway(tmp_path_factory.mktemp("gateway"), mock_provider, **config_extras)
        started.append(service)
        return service

    yield make
    for service in started:
        if service.process is not None and service.process.poll() is None:
            service.stop()


@pytest.fixture(scope="module")
def gateway(make_gateway) -> GatewayService:  # type: ignore[no-untyped-def]
    return make_gateway()


@pytest.fixture
def mock_requests(mock_provider: Service):  # type: ignore[no-untyped-def]
    """The requests the mock provider received during the test, read from its debug endpoint."""
    httpx.delete(mock_provider.url + "/_mock/requests")

    def received() -> list[dict[str, Any]]:
        return httpx.get(mock_provider.url + "/_mock/requests").json()

    return received


@pytest.fixture(scope="session")
def chdb_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one folder of ClickHouse's in-process engine (chdb) for this test run.

    chdb admits one data folder per process; tests that use it each take their own database.
    """
    return tmp_path_factory.mktemp("chdb")


@pytest.fixture
def clickhouse_config(chdb_folder: Path, tmp_path: Path) -> Callable[..., Any]:
    """A `StoreConfig` for the ClickHouse store on chdb, in a fresh database."""
    from meterline.config import StoreConfig

    def make(**fields: Any) -> StoreConfig:
        return StoreConfig(
            kind="clickhouse",
            url=f"chdb://{chdb_folder}",
            database=f"t_{uuid.uuid4().hex[:12]}",
            spool_dir=tmp_path / "spool",
            **fields,
        )

    return make
