"""Notices and the notifiers that deliver them: a small protocol; a JSON webhook, Slack and the log built in.

A `Notice` is something a person should hear about (a budget crossed 80%, an agent run looped).
A `Notifier` delivers one; kinds register under the entry-point group `meterline.notifiers`
(the built-in `webhook`, `slack` and `log` do so too), so a package can add e-mail or a pager without touching
meterline. `build_notifiers` makes one notifier per configured channel.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Protocol

import aiohttp

from meterline.config import AlertsConfig, WebhookConfig

WEBHOOK_TIMEOUT_S = 5.0

log = logging.getLogger("meterline.alerts")


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
    name: str
    """How deliveries and logs name this channel ("webhook #1"); never its URL, which may hold a secret."""

    async def send(self, notice: Notice) -> None:
        """Deliver one notice; raise on failure (the board retries, then records the failure)."""

    async def close(self) -> None: ...


class _PostingNotifier:
    """POSTs a JSON payload made from each notice to a URL, with the configured headers and a short timeout."""

    def __init__(self, webhook: WebhookConfig, name: str) -> None:
        self.webhook = webhook
        self.name = name
        self._session: aiohttp.ClientSession | None = None

    def payload(self, notice: Notice) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, notice: Notice) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WEBHOOK_TIMEOUT_S))
        body = self.payload(notice)
        async with self._session.post(self.webhook.url, json=body, headers=self.webhook.headers) as reply:
            reply.raise_for_status()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class WebhookNotifier(_PostingNotifier):
    """The generic webhook: the notice itself as JSON (`kind`, `subject`, `message`, `details`, `at`)."""

    def payload(self, notice: Notice) -> dict[str, Any]:
        return notice.as_json()


class SlackNotifier(_PostingNotifier):
    """A Slack-compatible incoming webhook: `text` (mrkdwn, with the dashboard link) plus the same as one block."""

    def payload(self, notice: Notice) -> dict[str, Any]:
        title = {"alert_firing": "Alert firing", "alert_resolved": "Alert resolved"}.get(
            notice.kind, notice.kind.replace("_", " ").capitalize()
        )
        text = f"*{title}*: {_slack_escape(notice.message)}"
        link = notice.details.get("link")
        if link:
            text += f" <{link}|View in dashboard>"
        return {"text": text, "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]}


def _slack_escape(text: str) -> str:
    """Slack's three control characters in message text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class LogNotifier:
    """Writes each notice to the server log (logger `meterline.alerts`, WARNING)."""

    name = "log"

    def __init__(self, _settings: object = None, name: str = "log") -> None:
        self.name = name

    async def send(self, notice: Notice) -> None:
        log.warning("%s: %s", notice.kind, notice.message)

    async def close(self) -> None:
        return None


@cache
def notifier_kinds() -> dict[str, type]:
    """Every registered notifier kind by name (built-ins and third-party packages alike)."""
    return {entry.name: entry.load() for entry in entry_points(group="meterline.notifiers")}


def build_notifiers(alerts: AlertsConfig) -> list[Notifier]:
    """One notifier per configured channel, named by kind and position (`webhook #1`, `slack #2`, `log`)."""
    kinds = notifier_kinds()
    notifiers: list[Notifier] = [kinds["log"](None, "log")] if alerts.log else []
    notifiers += [kinds["webhook"](hook, f"webhook #{n}") for n, hook in enumerate(alerts.webhooks, 1)]
    notifiers += [kinds["slack"](hook, f"slack #{n}") for n, hook in enumerate(alerts.slack_webhooks, 1)]
    return notifiers
