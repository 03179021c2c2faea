"""Alert notifications to real local HTTP receivers: firing and resolve notices, Slack payloads, retries with
backoff (a receiver that fails then recovers, one that never does), silencing, and budget notices as alerts.

The evaluation clock is injected; the tests wait for deliveries, never for time to pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from meterline.alerts.engine import AlertLoop, Detector, notice_for
from meterline.alerts.notices import NoticeBoard
from meterline.alerts.notifiers import Notice, build_notifiers
from meterline.alerts.rules import Finding
from meterline.config import AlertsConfig, StoreConfig, WebhookConfig
from meterline.store.control import ControlDB
from meterline.store.duckdb import DuckDBStore
from tests.alerts_traffic import AT, steady
from tests.conftest import free_port

SECRET_PATH = "/hooks/T000/B000/very-secret-token"


@dataclass
class Receiver:
    """A local webhook endpoint that answers `failures` requests with 500 first (all of them if None)."""

    failures: int | None = 0
    received: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.failures is None or self.attempts <= self.failures:
            return web.Response(status=500, text="receiver down")
        self.received.append(await request.json())
        return web.json_response({"ok": True})

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(10):
            while len(self.received) < count:
                await asyncio.sleep(0.01)
        return self.received


@asynccontextmanager
async def receiving(receiver: Receiver) -> AsyncIterator[Receiver]:
    app = web.Application()
    app.router.add_post(SECRET_PATH, receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    receiver.url = f"http://127.0.0.1:{port}{SECRET_PATH}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def anomalous_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A week of steady traffic, then an hour in which `search` costs five times as much."""
    path = tmp_path_factory.mktemp("alerts") / "events.duckdb"
    steady(AT - timedelta(hours=1)).calls(AT - timedelta(hours=1), AT, 60, cost=0.05).write(path)
    return path


def loop_for(store_path: Path, control: Path, alerts: AlertsConfig, clock: Clock) -> tuple[AlertLoop, DuckDBStore]:
    store = DuckDBStore(StoreConfig(path=store_path), read_only=True)
    store.open()
    alerts.rules.latency_cost_divergence.enabled = False  # one condition in this traffic, not three
    alerts.rules.prompt_bloat.enabled = False
    alerts.rules.spend_rate.enabled = False
    board = NoticeBoard(
        ControlDB(control),
        build_notifiers(alerts),
        cooldown=timedelta(minutes=alerts.cooldown_minutes),
        delivery_attempts=alerts.delivery_attempts,
        backoff_s=0.01,
        clock=clock,
    )
    return AlertLoop(Detector(store, alerts, "http://dash.example"), board, 60, clock), store


async def settle(loop: AlertLoop) -> None:
    """Wait for the deliveries under way (the board's own close does the same at shutdown)."""
    async with asyncio.timeout(10):
        while loop.board._deliveries:
            await asyncio.gather(*loop.board._deliveries, return_exceptions=True)


def test_firing_and_resolve_reach_a_webhook_that_fails_then_recovers(tmp_path: Path, anomalous_store: Path) -> None:
    async def scenario() -> None:
        async with receiving(Receiver(failures=2)) as hook:
            clock = Clock(AT)
            alerts = AlertsConfig(webhooks=[WebhookConfig(url=hook.url)], log=False)
            loop, store = loop_for(anomalous_store, tmp_path / "control.sqlite", alerts, clock)
            (fired,) = await loop.evaluate_once()
            assert fired.state == "firing"
            (firing,) = await hook.wait_for(1)
            assert hook.attempts == 3  # two 500s, then delivered
            assert firing["kind"] == "alert_firing" and firing["subject"] == "feature_anomaly:feature=search"
            details = firing["details"]
            assert details["value"] == "search" and details["observed"] == pytest.approx(3.0)
            assert details["baseline"] < details["band"] < details["observed"]
            assert details["usd_at_stake"] > 2 and details["link"].startswith("http://dash.example/features?")
            clock.now = AT + timedelta(minutes=5)  # still the same hour of traffic: no second notice
            assert await loop.evaluate_once() == []
            clock.now = AT + timedelta(hours=2)  # the costly hour left the window; clear for over 15 minutes
            (resolved,) = await loop.evaluate_once()
            assert resolved.state == "resolved"
            _, resolve = await hook.wait_for(2)
            assert resolve["kind"] == "alert_resolved" and resolve["message"].startswith("resolved")
            await settle(loop)
            (alert,) = loop.board.alerts.listing(clock.now)
            assert [(d["notice_kind"], d["status"], d["attempts"]) for d in alert["deliveries"]] == [
                ("alert_firing", "delivered", 3),
                ("alert_resolved", "delivered", 1),
            ]
            await loop.board.close()
            store.close()

    asyncio.run(scenario())


def test_slack_gets_an_incoming_webhook_payload(tmp_path: Path, anomalous_store: Path) -> None:
    async def scenario() -> None:
        async with receiving(Receiver()) as slack:
            alerts = AlertsConfig(slack_webhooks=[WebhookConfig(url=slack.url)], log=False)
            loop, store = loop_for(anomalous_store, tmp_path / "control.sqlite", alerts, Clock(AT))
            await loop.evaluate_once()
            (payload,) = await slack.wait_for(1)
            assert payload["text"].startswith("*Alert firing*: feature search cost $3.00 in the last hour")
            assert "|View in dashboard>" in payload["text"]
            assert payload["blocks"][0]["text"] == {"type": "mrkdwn", "text": payload["text"]}
            await loop.board.close()
            store.close()

    asyncio.run(scenario())


def test_a_receiver_that_never_recovers_is_recorded_as_failed_and_its_url_never_logged(
    tmp_path: Path, anomalous_store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        async with receiving(Receiver(failures=None)) as down, receiving(Receiver()) as up:
            alerts = AlertsConfig(
                webhooks=[WebhookConfig(url=down.url), WebhookConfig(url=up.url)], delivery_attempts=4, log=True
            )
            loop, store = loop_for(anomalous_store, tmp_path / "control.sqlite", alerts, Clock(AT))
            with caplog.at_level(logging.INFO, logger="meterline"):
                await loop.evaluate_once()
                await up.wait_for(1)  # the failing one does not hold up the other
                await settle(loop)
            assert down.attempts == 4
            (alert,) = loop.board.alerts.listing(AT)
            outcomes = {d["notifier"]: (d["status"], d["attempts"], d["last_error"]) for d in alert["deliveries"]}
            assert outcomes == {
                "log": ("delivered", 1, None),
                "webhook #1": ("failed", 4, "HTTP 500"),
                "webhook #2": ("delivered", 1, None),
            }
            await loop.board.close()
            store.close()

    asyncio.run(scenario())
    messages = [record.getMessage() for record in caplog.records]
    assert any("webhook #1 could not deliver a alert_firing notice after 4 tries: HTTP 500" in m for m in messages)
    assert any(m.startswith("alert_firing: feature search cost") for m in messages)  # the log notifier
    assert not any("very-secret-token" in m or "127.0.0.1" in m for m in messages)


def test_a_silenced_alert_is_tracked_but_not_sent_until_the_silence_ends(tmp_path: Path, anomalous_store: Path) -> None:
    async def scenario() -> None:
        async with receiving(Receiver()) as hook:
            clock = Clock(AT)
            alerts = AlertsConfig(webhooks=[WebhookConfig(url=hook.url)], log=False)
            loop, store = loop_for(anomalous_store, tmp_path / "control.sqlite", alerts, clock)
            board = loop.board
            (first,) = await loop.evaluate_once()
            await hook.wait_for(1)
            board.alerts.silence(first.alert["id"], AT + timedelta(hours=3), "oncall", "known, fixing", at=AT)
            (listed,) = board.alerts.listing(AT)
            assert (listed["silenced_until"], listed["silenced_by"]) == (
                (AT + timedelta(hours=3)).isoformat(),
                "oncall",
            )
            clock.now = AT + timedelta(hours=2)
            assert [t.state for t in await loop.evaluate_once()] == ["resolved"]  # silently
            clock.now = AT + timedelta(hours=2, minutes=30)
            await settle(loop)
            # the same condition again while silenced: a new alert, still silent
            again = board.alerts.apply([resolved_finding(first.alert)], clock.now)
            assert [t.state for t in again] == ["firing"]
            for transition in again:
                board.publish(notice_for(transition))
            await settle(loop)
            assert len(hook.received) == 1
            board.alerts.unsilence(first.alert["id"])
            clock.now = AT + timedelta(hours=4)
            (ends,) = board.alerts.apply([], clock.now)
            board.publish(notice_for(ends))
            (_, last) = await hook.wait_for(2)
            assert last["kind"] == "alert_resolved"
            await board.close()
            store.close()

    asyncio.run(scenario())


def resolved_finding(alert: dict[str, Any]) -> Finding:
    """The finding an alert was opened by, to feed the same condition again."""
    details = alert["details"]
    fields = ("rule", "dimension", "value", "summary", "observed", "baseline", "band", "unit", "baseline_basis")
    return Finding(*(details[name] for name in fields), details["usd_at_stake"], details["link"])


def test_budget_threshold_notices_become_alerts_that_resolve_when_the_period_ends(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with receiving(Receiver()) as hook:
            clock = Clock(AT)
            board = NoticeBoard(
                ControlDB(tmp_path / "control.sqlite"),
                build_notifiers(AlertsConfig(webhooks=[WebhookConfig(url=hook.url)], log=False)),
                backoff_s=0.01,
                clock=clock,
            )
            details = {
                "budget": "team-search-day",
                "period": "day",
                "limit_usd": 10.0,
                "spent_usd": 8.2,
                "threshold": 80,
                "period_start": "2026-05-06T00:00:00+00:00",
                "period_end": "2026-05-07T00:00:00+00:00",
            }
            message = "budget team-search-day reached 80% of its $10.00 limit"
            for _ in range(2):  # a second worker noticing the same threshold adds no second alert
                board.publish(Notice("budget_threshold", "team-search-day", message, details))
            (posted, _) = await hook.wait_for(2)
            assert posted["kind"] == "budget_threshold"
            (alert,) = board.alerts.listing(AT)
            assert (alert["rule"], alert["dimension"], alert["value"], alert["state"]) == (
                "budget_threshold",
                "budget",
                "team-search-day",
                "firing",
            )
            assert alert["details"]["usd_at_stake"] == 8.2 and alert["details"]["band"] == 10.0
            assert [d["notifier"] for d in alert["deliveries"]] == ["webhook #1", "webhook #1"]
            assert board.alerts.apply([], AT + timedelta(hours=6)) == []  # still today's period
            (ended,) = board.alerts.apply([], datetime.fromisoformat("2026-05-07T00:01:00+00:00"))
            assert ended.state == "resolved" and ended.alert["rule"] == "budget_threshold"
            await board.close()

    asyncio.run(scenario())
