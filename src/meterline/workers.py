"""`meterline serve --workers N`: N gateway processes sharing one port, supervised by this one.

Each worker is a full `meterline serve` process bound to the port with SO_REUSEPORT, so the
kernel spreads connections over them and a CPU-bound event loop is no longer the ceiling.
Worker 0 owns the event store and serves the API and dashboard (the others forward those to
its internal port); all workers append to the shared spool folder, which worker 0 loads.
Budgets, quotas and rate limits are shared only through Redis (`budgets.backend: redis`), and
so are circuit breakers' openings and closings (`resilience.breaker.redis_url`).
Prometheus counters are shared through files in a temporary folder the supervisor makes
(`PROMETHEUS_MULTIPROC_DIR`), so `/metrics` answers for all workers together.

The supervisor forwards SIGTERM/SIGINT to the workers and waits for them to finish their
in-flight requests: first to the others, then, once they have exited and handed their last spool
segments over, to worker 0, which loads them (so a graceful stop leaves the spool empty). A
worker that dies is restarted after a second; one that could not start (a bad config, a locked
store, a taken port) exits with `STARTUP_FAILED`, and the supervisor then stops the others and
exits with its message instead of restarting it forever, however long the failed start took.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path

from meterline.config import ConfigError, load_config
from meterline.otel.prometheus import MULTIPROCESS_ENV

log = logging.getLogger("meterline.workers")

STARTUP_FAILED = 3
"""A worker's exit status when it could not start (its message is on stderr)."""
RESTART_DELAY_S = 1.0
_CONTEXT = multiprocessing.get_context("spawn")


def run_worker(config_path: Path, index: int, primary_port: int, host: str | None, port: int | None) -> None:
    """One worker process: load the config and serve as worker `index`."""
    from meterline.server import StartupError, WorkerRole, serve

    config = load_config(config_path)
    config.server.host = host or config.server.host
    config.server.port = port or config.server.port
    try:
        serve(config, WorkerRole(index=index, primary_port=primary_port))
    except (ConfigError, StartupError) as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        sys.exit(STARTUP_FAILED)


def _free_local_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Supervisor:
    def __init__(self, config_path: Path, count: int, host: str | None, port: int | None) -> None:
        self.config_path = config_path
        self.count = count
        self.host = host
        self.port = port
        self.primary_port = _free_local_port()
        self.workers: dict[int, BaseProcess] = {}
        self.stopping = False
        self._primary_stopping = False

    def _start(self, index: int) -> None:
        process = _CONTEXT.Process(
            target=run_worker,
            args=(self.config_path, index, self.primary_port, self.host, self.port),
            name=f"meterline-worker-{index}",
        )
        process.start()
        self.workers[index] = process

    def _stop_all(self) -> None:
        """Ask the workers to finish their in-flight requests and exit (SIGTERM), worker 0 last (see `run`)."""
        self.stopping = True
        for index, process in self.workers.items():
            if index != 0 and process.is_alive():
                process.terminate()

    def _stop_primary_when_alone(self) -> None:
        """Once the other workers have exited (their last spool segments handed over), stop worker 0, which
        loads them: so a SIGTERM leaves nothing in the spool."""
        if self.stopping and list(self.workers) == [0] and not self._primary_stopping:
            self._primary_stopping = True
            self.workers[0].terminate()

    def run(self) -> int:
        """Start the workers and supervise them until a signal; returns the exit status."""
        with tempfile.TemporaryDirectory(prefix="meterline-metrics-") as metrics_dir:
            # the workers' Prometheus counters go to files here, which /metrics sums (see otel.prometheus)
            os.environ.setdefault(MULTIPROCESS_ENV, metrics_dir)
            return self._supervise()

    def _supervise(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda _signum, _frame: self._stop_all())
        for index in range(self.count):
            self._start(index)
        status = 0
        while self.workers:
            for index, process in list(self.workers.items()):
                if process.is_alive():
                    continue
                process.join()
                del self.workers[index]
                if self.stopping:
                    continue
                if process.exitcode == STARTUP_FAILED:
                    log.error("worker %d failed to start; stopping", index)
                    status = STARTUP_FAILED
                    self._stop_all()
                    continue
                log.warning("worker %d exited (%s); restarting it", index, process.exitcode)
                time.sleep(RESTART_DELAY_S)
                self._start(index)
            self._stop_primary_when_alone()
            time.sleep(0.2)
        return status
