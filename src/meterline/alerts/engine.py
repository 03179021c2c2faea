"""The alert engine: evaluate the rules at an instant, move the alert state on, and publish what changed.

`Detector.findings(at)` reads the stored events (through `meterline.analytics.signals`) and runs
the rules: no state, so `meterline alerts check --at` and the benchmark can replay any instant.
`Detector.step(at)` also applies hysteresis (`AlertStore.apply`) and returns the transitions.
`AlertLoop` runs `step` every `alerts.interval_s` on a background task of `meterline serve`
(worker 0, which owns the store): the queries run in a worker thread, never on the request path,
and notices are handed to the `NoticeBoard`, whose deliveries never hold up the next evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from meterline.alerts.notices import NoticeBoard, utc_now
from meterline.alerts.notifiers import Notice
from meterline.alerts.rules import Finding, evaluate
from meterline.alerts.state import AlertStore, Transition
from meterline.analytics.signals import collect
from meterline.config import AlertsConfig, Config
from meterline.store.base import Store, StoreUnavailable

log = logging.getLogger("meterline.alerts")


def dashboard_url(config: Config) -> str:
    """Where alert links point: `alerts.dashboard_url`, else the server's own address."""
    if config.alerts.dashboard_url:
        return config.alerts.dashboard_url.rstrip("/")
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::") else config.server.host
    return f"http://{host}:{config.server.port}"


class Detector:
    def __init__(self, store: Store, alerts: AlertsConfig, link_base: str) -> None:
        self.store = store
        self.alerts = alerts
        self.link_base = link_base

    def findings(self, at: datetime) -> list[Finding]:
        rules = self.alerts.rules
        signals = collect(self.store, at, rules.latency_p95.window_minutes, rules.error_rate.window_minutes)
        return evaluate(signals, rules, self.link_base)

    def step(self, state: AlertStore, at: datetime) -> list[Transition]:
        return state.apply(self.findings(at), at)


def notice_for(transition: Transition) -> Notice:
    """The notice notifiers get when an alert fires or resolves; `details` is the alert, flattened."""
    alert = transition.alert
    details = {key: value for key, value in alert.items() if key != "details"}
    details.update(alert["details"])
    message = alert["summary"]
    if transition.state == "resolved":
        message = f"resolved (clear since {alert['last_seen_at']}): {message}"
    return Notice(f"alert_{transition.state}", alert["key"], message, details)


class AlertLoop:
    """Evaluates every `interval_s` in the background and publishes fired and resolved alerts."""

    def __init__(
        self,
        detector: Detector,
        board: NoticeBoard,
        interval_s: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.detector = detector
        self.board = board
        self.interval_s = interval_s
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self.last_error: str | None = None

    async def evaluate_once(self) -> list[Transition]:
        transitions = await asyncio.to_thread(self.detector.step, self.board.alerts, self.clock())
        for transition in transitions:
            self.board.publish(notice_for(transition))
        return transitions

    async def _run(self) -> None:
        while True:
            try:
                await self.evaluate_once()
                self.last_error = None
            except StoreUnavailable as exc:
                if self.last_error is None:
                    log.warning("alert evaluation waits for the store (retrying every %gs): %s", self.interval_s, exc)
                self.last_error = str(exc)
            except Exception as exc:
                if self.last_error is None:
                    log.exception("alert evaluation failed; retrying every %gs", self.interval_s)
                self.last_error = str(exc)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="meterline-alerts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
