"""Where notices go: the control database, then every notifier with retries, off the request path.

`NoticeBoard.publish` is called from the gateway's event loop (budget guard) or the alert
evaluator and returns at once; storing the notice (table `notices` in the control database, read
by `GET /api/v1/notices`) and sending it to each notifier happen in a background task. A notifier
that fails or times out is retried with exponential backoff (`delivery_attempts` tries, the first
retry after `backoff_s`); the outcome per notifier is recorded with the alert (`alert_deliveries`)
and a failure is logged by the notifier's name, never its URL. One notifier failing never delays
another, nor the evaluation that published the notice.

Budget notices are alerts too: a `budget_threshold` or `budget_exceeded` notice opens a firing
alert in the `AlertStore` (once per budget, threshold and period), so budgets and rules share one
alert list, one silence mechanism and one set of notifiers. A notice about a silenced alert is
stored but not sent. `close` waits for deliveries still under way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson

from meterline.alerts.notifiers import Notice, Notifier
from meterline.alerts.state import BUDGET_KINDS, AlertStore
from meterline.store.control import ControlDB

log = logging.getLogger("meterline.alerts")

DEFAULT_COOLDOWN = timedelta(minutes=15)

_TABLE = """CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL
)"""


def utc_now() -> datetime:
    return datetime.now(UTC)


def failure_text(exc: BaseException) -> str:
    """What went wrong with a delivery, without the URL (aiohttp's messages include it)."""
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"HTTP {exc.status}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, aiohttp.ClientConnectionError):
        return f"connection failed ({type(exc).__name__})"
    return type(exc).__name__


class NoticeBoard:
    def __init__(
        self,
        control: ControlDB,
        notifiers: list[Notifier],
        *,
        cooldown: timedelta = DEFAULT_COOLDOWN,
        delivery_attempts: int = 5,
        backoff_s: float = 2.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.control = control
        self.notifiers = notifiers
        self.alerts = AlertStore(control, cooldown)
        self.delivery_attempts = delivery_attempts
        self.backoff_s = backoff_s
        self.clock = clock
        self._deliveries: set[asyncio.Task[None]] = set()
        control.ensure(_TABLE)

    def publish(self, notice: Notice) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(notice))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, notice: Notice) -> None:
        try:
            alert_id, silenced = await asyncio.to_thread(self._store, notice)
        except Exception:
            log.exception("could not store a notice in the control database")
            alert_id, silenced = notice.details.get("id"), False
        if silenced:
            return
        await asyncio.gather(*(self._send(notifier, notice, alert_id) for notifier in self.notifiers))

    async def _send(self, notifier: Notifier, notice: Notice, alert_id: int | None) -> None:
        error = ""
        for attempt in range(1, self.delivery_attempts + 1):
            try:
                await notifier.send(notice)
            except Exception as exc:
                error = failure_text(exc)
                if attempt < self.delivery_attempts:
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
                continue
            await self._record(alert_id, notice, notifier, "delivered", attempt, None)
            return
        log.warning(
            "notifier %s could not deliver a %s notice after %d tries: %s",
            notifier.name,
            notice.kind,
            self.delivery_attempts,
            error,
        )
        await self._record(alert_id, notice, notifier, "failed", self.delivery_attempts, error)

    async def _record(
        self, alert_id: int | None, notice: Notice, notifier: Notifier, status: str, attempts: int, error: str | None
    ) -> None:
        try:
            await asyncio.to_thread(
                self.alerts.record_delivery, alert_id, notice.kind, notifier.name, status, attempts, error, self.clock()
            )
        except Exception:
            log.exception("could not record a notice delivery in the control database")

    def _store(self, notice: Notice) -> tuple[int | None, bool]:
        """Store the notice (and a budget notice's alert); the alert's id, and whether it is silenced."""
        with self.control.transaction() as connection:
            connection.execute(
                "INSERT INTO notices (at, kind, subject, message, details) VALUES (?, ?, ?, ?, ?)",
                (notice.at, notice.kind, notice.subject, notice.message, orjson.dumps(notice.details).decode()),
            )
        if notice.kind in BUDGET_KINDS:
            alert_id: int | None = self.alerts.open_budget_alert(
                notice.kind, notice.subject, notice.message, notice.details, self.clock()
            )
        else:
            alert_id = notice.details.get("id") if notice.kind.startswith("alert_") else None
        if alert_id is None:
            return None, False
        return alert_id, self.alerts.silenced(self.alerts.get(alert_id)["key"], self.clock())

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """The latest `limit` notices, newest first."""
        rows = self.control.rows(
            "SELECT id, at, kind, subject, message, details FROM notices ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [{**dict(row), "details": orjson.loads(row["details"])} for row in rows]

    async def close(self) -> None:
        if self._deliveries:
            await asyncio.gather(*self._deliveries, return_exceptions=True)
        for notifier in self.notifiers:
            await notifier.close()
