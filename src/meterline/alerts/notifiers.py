"""Notices and the notifiers that deliver them: a small protocol, and webhooks built in.

A `Notice` is something a person should hear about (a budget crossed 80%, an agent run looped).
A `Notifier` delivers one; kinds register under the entry-point group `meterline.notifiers`
(the built-in `webhook` does so too), so a package can add Slack or e-mail without touching
meterline. `build_notifiers` makes one notifier per configured channel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol

import aiohttp

from meterline.config import AlertsConfig, WebhookConfig

WEBHOOK_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Notice:
    kind: str
    """What happened: budget_threshold, budget_exceeded, agent_guardrail, ..."""
    subject: str
    """What it is about: a budget's name, an agent run."""
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Notifier(Protocol):
    async def send(self, notice: Notice) -> None:
        """Deliver one notice; raise on failure (the caller logs it)."""

    async def close(self) -> None: ...


class WebhookNotifier:
    """POSTs each notice as JSON to a URL, with the configured headers and a short timeout."""

    def __init__(self, webhook: WebhookConfig) -> None:
        self.webhook = webhook
        self._session: aiohttp.ClientSession | None = None

    async def send(self, notice: Notice) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        async with self._session.post(self.webhook.url, json=notice.as_json(), headers=self.webhook.headers) as reply:
            reply.raise_for_status()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@cache
def notifier_kinds() -> dict[str, type]:
    """Every registered notifier kind by name (built-ins and third-party packages alike)."""
    return {entry.name: entry.load() for entry in entry_points(group="meterline.notifiers")}


def build_notifiers(alerts: AlertsConfig) -> list[Notifier]:
    """One notifier per configured channel."""
    webhook = notifier_kinds()["webhook"]
    return [webhook(hook) for hook in alerts.webhooks]
