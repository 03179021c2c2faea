"""Alerts in a running `meterline serve`: the background evaluation over a store holding a costly hour, the
notices at a real webhook, `GET /api/v1/alerts`, silencing and acknowledging through the API, and the Alerts page
in Chromium (acknowledge and silence buttons)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.alerts_traffic import steady
from tests.conftest import MASTER_KEY, GatewayService, Service, free_port, start_gateway
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, watch

HOOK_PATH = "/hooks/secret-token-in-path"
EXPECTED_RULES = {"feature_anomaly", "prompt_bloat", "latency_cost_divergence", "spend_rate"}
"""What a search hour at five times its usual cost per call, at its usual volume, raises."""


class Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def hook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}{HOOK_PATH}"
    server.shutdown()


@pytest.fixture(scope="module")
def alerting(mock_provider: Service, hook: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayService]:
    folder = tmp_path_factory.mktemp("alerting")
    now = datetime.now(UTC)
    last_hour = now - timedelta(hours=1)
    steady(last_hour).calls(last_hour, now, 60, cost=0.05).write(folder / "data" / "meterline.duckdb")
    alerts = f"alerts: {{interval_s: 1, webhooks: [{{url: '{hook}'}}], dashboard_url: 'http://dash.example'}}"
    gateway = start_gateway(folder, mock_provider, extra=alerts)
    yield gateway
    gateway.stop()


def firing(gateway: GatewayService, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while True:
        reply = httpx.get(gateway.url + "/api/v1/alerts", params={"state": "firing"}, headers=gateway.headers())
        reply.raise_for_status()
        rows = reply.json()["data"]
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def test_the_server_evaluates_in_the_background_and_notifies_once(alerting: GatewayService) -> None:
    rows = firing(alerting, len(EXPECTED_RULES))
    assert {row["rule"] for row in rows} == EXPECTED_RULES
    anomaly = next(row for row in rows if row["rule"] == "feature_anomaly")
    assert (anomaly["dimension"], anomaly["value"], anomaly["state"]) == ("feature", "search", "firing")
    figures = anomaly["details"]
    assert figures["observed"] == pytest.approx(3.0, rel=0.05)
    assert figures["baseline"] < figures["band"] < figures["observed"] and figures["usd_at_stake"] > 1
    assert figures["link"].startswith("http://dash.example/features?") and "weekdays" in figures["baseline_basis"]
    # evaluated every second, still one notice per alert
    deadline = time.monotonic() + 10
    while len(Hook.received) < len(EXPECTED_RULES) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(2.5)  # let two more evaluations run, so a repeated notice would have arrived
    kinds = sorted((notice["kind"], notice["details"]["rule"]) for notice in Hook.received)
    assert kinds == sorted(("alert_firing", rule) for rule in EXPECTED_RULES)
    assert "secret-token-in-path" not in alerting.log_text()
    assert all(delivery["status"] == "delivered" for row in rows for delivery in row["deliveries"])


def test_check_is_a_dry_run_over_the_api(alerting: GatewayService) -> None:
    reply = httpx.get(alerting.url + "/api/v1/alerts/check", headers=alerting.headers())
    assert reply.status_code == 200
    assert {finding["rule"] for finding in reply.json()["data"]} == EXPECTED_RULES
    bad = httpx.get(alerting.url + "/api/v1/alerts/check", params={"at": "soon"}, headers=alerting.headers())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "at"
    cli = alerting.cli("alerts", "check", "--json")
    assert cli.returncode == 2 and '"feature_anomaly"' in cli.stdout
    listed = alerting.cli("alerts", "list", "--state", "firing", "--json")
    assert listed.returncode == 0 and {row["rule"] for row in json.loads(listed.stdout)} == EXPECTED_RULES


def test_silence_and_acknowledge_through_the_api(alerting: GatewayService) -> None:
    rows = firing(alerting, len(EXPECTED_RULES))
    spend = next(row for row in rows if row["rule"] == "spend_rate")
    url = f"{alerting.url}/api/v1/alerts/{spend['id']}"
    silenced = httpx.post(url + "/silence", json={"for": "2h", "note": "deploy"}, headers=alerting.headers()).json()
    assert silenced["id"] == spend["id"]
    listed = next(row for row in firing(alerting, 1) if row["id"] == spend["id"])
    until = datetime.fromisoformat(listed["silenced_until"]) - datetime.now(UTC)
    assert timedelta(hours=1, minutes=59) < until <= timedelta(hours=2)
    assert listed["silence_note"] == "deploy"
    acked = httpx.post(url + "/acknowledge", json={"for": "30m"}, headers=alerting.headers()).json()
    assert acked["acknowledged_by"] == "master" and acked["acknowledged_at"]
    assert httpx.delete(url + "/silence", headers=alerting.headers()).status_code == 200
    assert next(row for row in firing(alerting, 1) if row["id"] == spend["id"])["silenced_until"] is None
    wrong = httpx.post(url + "/silence", json={"for": "forever"}, headers=alerting.headers())
    assert wrong.status_code == 400 and "'for' must be a span" in wrong.json()["error"]["message"]
    missing = httpx.post(f"{alerting.url}/api/v1/alerts/999999/silence", json={}, headers=alerting.headers())
    assert missing.status_code == 404
    assert httpx.get(alerting.url + "/api/v1/alerts").status_code == 401


def test_the_alerts_page_lists_alerts_and_its_buttons_act_on_them(alerting: GatewayService) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs Chromium at {CHROMIUM}")
    firing(alerting, len(EXPECTED_RULES))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(base_url=alerting.url, viewport={"width": 1400, "height": 900})
        page: Page = context.new_page()
        problems = watch(page, alerting.url)
        page.goto("/login?next=/alerts")
        page.fill("input[name=key]", MASTER_KEY)
        page.click("button[type=submit]")
        page.wait_for_url(alerting.url + "/alerts")
        expect(page.locator("[aria-busy]")).to_have_count(0)
        row = page.locator("#alerts-firing tbody tr", has_text="feature_anomaly")
        expect(row).to_contain_text("feature search")
        expect(row).to_contain_text(re.compile(r"\$[23]\.\d\d/hour"))  # the costly hour slides out of the window
        link = row.locator("a", has_text="feature search").get_attribute("href") or ""
        assert link.startswith("http://dash.example/features?") and "feature=search" in link
        row.get_by_role("button", name="Acknowledge").click()
        page.wait_for_load_state()
        row = page.locator("#alerts-firing tbody tr", has_text="feature_anomaly")
        expect(row).to_contain_text("acknowledged by master")
        expect(row).to_contain_text("silenced until")
        row.get_by_role("button", name="Unsilence").click()
        page.wait_for_load_state()
        row = page.locator("#alerts-firing tbody tr", has_text="feature_anomaly")
        row.get_by_role("button", name="Silence 1h").click()
        expect(page.locator("#alerts-firing tbody tr", has_text="feature_anomaly")).to_contain_text("silenced until")
        expect(page.locator(".stat", has_text="Silenced")).to_contain_text("1")
        assert problems == []
        browser.close()
