"""Where notices go: a WARNING log line at once, then the control database and every notifier, off the request path.

`NoticeBoard.publish` is called from the gateway's event loop and returns at once; storing the
notice (table `notices` in the control database, read by `GET /api/v1/notices`) and sending it
to each notifier happen in a background task. A notifier that fails or times out is logged and
does not stop the others. `close` waits for deliveries still under way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson

from meterline.alerts.notifiers import Notice, Notifier
from meterline.store.control import ControlDB

log = logging.getLogger("meterline.alerts")

_TABLE = """CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL
)"""


class NoticeBoard:
    def __init__(self, control: ControlDB, notifiers: list[Notifier]) -> None:
        self.control = control
        self.notifiers = notifiers
        self._deliveries: set[asyncio.Task[None]] = set()
        control.ensure(_TABLE)

    def publish(self, notice: Notice) -> None:
        log.warning("%s: %s", notice.kind, notice.message)
        task = asyncio.get_running_loop().create_task(self._deliver(notice))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, notice: Notice) -> None:
        try:
            await asyncio.to_thread(self._store, notice)
        except Exception:
            log.exception("could not store a notice in the control database")
        await asyncio.gather(*(self._send(notifier, notice) for notifier in self.notifiers))

    async def _send(self, notifier: Notifier, notice: Notice) -> None:
        try:
            await notifier.send(notice)
        except Exception as exc:
            log.warning("notifier %s could not deliver a %s notice: %r", type(notifier).__name__, notice.kind, exc)

    def _store(self, notice: Notice) -> None:
        with self.control.transaction() as connection:
            connection.execute(
                "INSERT INTO notices (at, kind, subject, message, details) VALUES (?, ?, ?, ?, ?)",
                (notice.at, notice.kind, notice.subject, notice.message, orjson.dumps(notice.details).decode()),
            )

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
