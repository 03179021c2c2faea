"""Retries, fallbacks, timeouts and circuit breakers end to end: a real gateway and the mock provider over HTTP.

The gateway runs in this process (in a thread with its own event loop) so that it can be given a
clock whose waits return at once and are recorded: a test sees exactly how long the gateway
would have waited, and moves time on to end a breaker's cool-down, without sleeping. Everything
else is as in production: HTTP between SDK, gateway and mock provider, the DuckDB store, the spool.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web
from playwright.sync_api import expect, sync_playwright

from meterline.config import parse_config
from meterline.server import build_app
from tests.conftest import MASTER_KEY, TEST_REDIS_URL, GatewayService, Service, free_port, gateway_config

CHROMIUM = "/usr/bin/chromium"
CHAT = {"messages": [{"role": "user", "content": "hello there"}]}
MESSAGE = {"max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}]}

RESILIENCE = """
resilience:
  retries: 2
  backoff: {initial_s: 0.5, max_s: 4}
  deadline_s: 60
  breaker: {failures: 3, window_s: 60, cooldown_s: 30}
"""
MODELS = """
  - {name: chat-main, provider: openai, upstream_model: gpt-4o, retries: 1, fallbacks: [chat-backup, chat-last]}
  - {name: chat-backup, provider: openai, upstream_model: gpt-4o-mini, retries: 0}
  - {name: chat-last, provider: openai, upstream_model: gpt-4.1-mini, retries: 0}
  - {name: small-window, provider: openai, upstream_model: gpt-4o-mini, context_window: 8000,
     fallbacks: [same-window, big-window]}
  - {name: same-window, provider: openai, upstream_model: gpt-4o, context_window: 8000}
  - {name: big-window, provider: openai, upstream_model: gpt-4.1}
  - {name: claude-main, provider: anthropic, upstream_model: claude-sonnet-4-5, retries: 0,
     fallbacks: [claude-haiku-4-5]}
  - {name: header-model, provider: openai, upstream_model: gpt-4o-mini}
  - {name: key-model, provider: openai, upstream_model: gpt-4o-mini}
  - {name: breaker-a, provider: openai, upstream_model: gpt-4o, retries: 0, fallbacks: [breaker-b]}
  - {name: breaker-b, provider: openai, upstream_model: gpt-4o-mini, retries: 0}
  - {name: quick-chat, provider: quick, upstream_model: gpt-4o-mini}
  - {name: quick-claude, provider: quick-anthropic, upstream_model: claude-haiku-4-5}
"""
PROVIDERS = """
  quick: {{kind: openai, base_url: {mock}/v1, api_key: k, timeout: {{first_byte_s: 0.5, idle_s: 0.5}}}}
  quick-anthropic: {{kind: anthropic, base_url: {mock}, api_key: k, timeout: {{first_byte_s: 0.5, idle_s: 0.5}}}}
"""
BUDGET = """
budgets:
  budgets:
    - {name: retried-feature, scope: "feature:retried", period: day, limit_usd: 100}
"""


class SkippingClock:
    """Monotonic time plus every wait the gateway asked for; the waits themselves return at once."""

    def __init__(self) -> None:
        self.skipped = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return time.monotonic() + self.skipped

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.skipped += seconds
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.skipped += seconds


@pytest.fixture(scope="module")
def clock() -> SkippingClock:
    return SkippingClock()


@pytest.fixture(scope="module")
def gateway(
    mock_provider: Service, clock: SkippingClock, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayService]:
    folder = tmp_path_factory.mktemp("resilience")
    port = free_port()
    text = gateway_config(
        mock_provider.url,
        port,
        extra_providers=PROVIDERS.format(mock=mock_provider.url),
        extra_models=MODELS,
        extra=RESILIENCE + BUDGET,
    )
    config = parse_config(text, folder, environ={"TEST_MASTER_KEY": MASTER_KEY})
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(build_app(config, clock=clock), access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield GatewayService([], folder, port, folder / "gateway.log", data_dir=folder / "data")
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(autouse=True)
def fresh_waits(clock: SkippingClock) -> None:
    """Each test starts with no recorded waits, an hour after the last: breakers' failure windows are over."""
    clock.sleeps.clear()
    clock.advance(3600)


def faults(fault: str, times: int | None = None, models: str | None = None, **more: str) -> dict[str, str]:
    """Mock headers injecting `fault` (the first `times` calls of this test only; on `models` only)."""
    headers = {"x-mock-fault": fault, **{f"x-mock-{name.replace('_', '-')}": value for name, value in more.items()}}
    if times is not None:
        headers |= {"x-mock-fault-times": str(times), "x-mock-fault-key": uuid.uuid4().hex}
    if models is not None:
        headers["x-mock-fault-model"] = models
    return headers


def attempts_of(gateway: GatewayService, request_id: str, expected: int) -> list[dict[str, Any]]:
    events = gateway.events(expected=expected, request_id=request_id)
    assert len(events) == expected
    return sorted(events, key=lambda event: event["attempt"])


def summary(events: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(event["attempt"], event["served_model"], event["error_class"]) for event in events]


def upstream_models(received: list[dict[str, Any]]) -> list[str]:
    return [request["body"]["model"] for request in received if request["path"].startswith("/v1/")]


def test_rate_limit_waits_what_retry_after_ms_says(
    gateway: GatewayService, clock: SkippingClock, mock_requests
) -> None:  # type: ignore[no-untyped-def]
    raw = gateway.openai().chat.completions.with_raw_response.create(
        model="chat-main", **CHAT, extra_headers=faults("rate_limit", times=1, retry_after="2.5")
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert raw.headers["x-meterline-attempts"] == "2"
    assert clock.sleeps == [2.5]  # retry-after-ms (2500), not the rounded retry-after (3)
    first, second = attempts_of(gateway, raw.headers["x-meterline-request-id"], 2)
    assert (first["status_code"], first["error_class"], first["cost_usd"]) == (429, "rate_limit", 0)
    assert (second["status_code"], second["error_class"]) == (200, "none")
    assert second["cost_usd"] > 0 and second["price_version"]
    assert upstream_models(mock_requests()) == ["gpt-4o", "gpt-4o"]


def test_a_retry_after_beyond_the_deadline_is_not_waited_for(
    gateway: GatewayService, clock: SkippingClock, mock_requests
) -> None:  # type: ignore[no-untyped-def]
    headers = faults("rate_limit", models="gpt-4o", retry_after="120")  # the deadline is 60 s
    raw = gateway.openai().chat.completions.with_raw_response.create(model="chat-main", **CHAT, extra_headers=headers)
    assert raw.headers["x-meterline-attempts"] == "2"
    assert clock.sleeps == []
    events = attempts_of(gateway, raw.headers["x-meterline-request-id"], 2)
    assert summary(events) == [(1, "chat-main", "rate_limit"), (2, "chat-backup", "none")]


def test_backoff_has_full_jitter_when_no_wait_is_asked(gateway: GatewayService, clock: SkippingClock) -> None:
    reply = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", **CHAT},
        headers=gateway.headers(**faults("server_error", times=2)),
        timeout=30,
    )
    assert reply.status_code == 200 and reply.headers["x-meterline-attempts"] == "3"
    first, second = clock.sleeps
    assert 0 <= first <= 0.5 and 0 <= second <= 1.0
    events = attempts_of(gateway, reply.headers["x-meterline-request-id"], 3)
    assert [event["error_class"] for event in events] == ["server_error", "server_error", "none"]


@pytest.mark.parametrize(
    ("fault", "status", "error_class"), [("auth", 401, "auth"), ("context_length", 400, "context_length")]
)
def test_non_retryable_errors_are_not_retried(
    gateway: GatewayService, clock: SkippingClock, mock_requests, fault: str, status: int, error_class: str
) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    with pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(model="gpt-4o-mini", **CHAT, extra_headers=faults(fault))
    assert raised.value.status_code == status
    assert raised.value.response.headers["x-meterline-attempts"] == "1"
    assert len(upstream_models(mock_requests())) == 1 and clock.sleeps == []
    (event,) = attempts_of(gateway, raised.value.response.headers["x-meterline-request-id"], 1)
    assert (event["attempt"], event["error_class"]) == (1, error_class)


def test_fallbacks_are_tried_in_order_after_retries(
    gateway: GatewayService, clock: SkippingClock, mock_requests
) -> None:  # type: ignore[no-untyped-def]
    headers = faults("server_error", models="gpt-4o,gpt-4o-mini")
    raw = gateway.openai().chat.completions.with_raw_response.create(model="chat-main", **CHAT, extra_headers=headers)
    assert raw.parse().model == "gpt-4.1-mini"
    assert raw.headers["x-meterline-attempts"] == "4"
    assert upstream_models(mock_requests()) == ["gpt-4o", "gpt-4o", "gpt-4o-mini", "gpt-4.1-mini"]
    events = attempts_of(gateway, raw.headers["x-meterline-request-id"], 4)
    assert summary(events) == [
        (1, "chat-main", "server_error"),
        (2, "chat-main", "server_error"),
        (3, "chat-backup", "server_error"),
        (4, "chat-last", "none"),
    ]
    assert {event["requested_model"] for event in events} == {"chat-main"}
    assert len(clock.sleeps) == 1  # chat-main's one retry; a fallback goes at once


def test_anthropic_overloaded_falls_back(gateway: GatewayService) -> None:
    client = gateway.anthropic()
    raw = client.messages.with_raw_response.create(
        model="claude-main", **MESSAGE, extra_headers=faults("overloaded", models="claude-sonnet-4-5")
    )
    assert raw.parse().content[0].text and raw.headers["x-meterline-attempts"] == "2"
    events = attempts_of(gateway, raw.headers["x-meterline-request-id"], 2)
    assert summary(events) == [(1, "claude-main", "server_error"), (2, "claude-haiku-4-5", "none")]


def test_context_length_goes_straight_to_a_larger_window(
    gateway: GatewayService, clock: SkippingClock, mock_requests
) -> None:  # type: ignore[no-untyped-def]
    headers = faults("context_length", models="gpt-4o-mini")
    raw = gateway.openai().chat.completions.with_raw_response.create(
        model="small-window", **CHAT, extra_headers=headers
    )
    assert raw.parse().model == "gpt-4.1"
    assert upstream_models(mock_requests()) == ["gpt-4o-mini", "gpt-4.1"]  # same-window (8000) is skipped
    assert clock.sleeps == []
    events = attempts_of(gateway, raw.headers["x-meterline-request-id"], 2)
    assert summary(events) == [(1, "small-window", "context_length"), (2, "big-window", "none")]


def test_client_header_lowers_or_turns_off_retries(gateway: GatewayService) -> None:
    # header value, calls the mock fails, attempts made, answer (7 is above the configured 2 retries: 2 it is)
    for retries, failing, attempts, status in (("0", 1, 1, 429), ("1", 1, 2, 200), ("7", 3, 3, 429)):
        headers = {**faults("rate_limit", times=failing, retry_after="0.1"), "x-meterline-retries": retries}
        reply = chat(gateway, "header-model", **headers)
        assert (reply.status_code, reply.headers["x-meterline-attempts"]) == (status, str(attempts)), retries
    reply = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", **CHAT},
        headers=gateway.headers(**{"x-meterline-retries": "lots"}),
    )
    assert reply.status_code == 400
    assert (
        reply.json()["error"]["param"] == "x-meterline-retries" and "whole number" in reply.json()["error"]["message"]
    )


def test_a_keys_max_retries_caps_what_it_gets(gateway: GatewayService, clock: SkippingClock) -> None:
    # the key's max_retries, the request's header, attempts made, answer (the model may retry twice)
    cases = (({"max_retries": 0}, {}, 1, 429), ({"max_retries": 1}, {"x-meterline-retries": "0"}, 1, 429))
    cases += (({"max_retries": 1}, {}, 2, 200),)
    for fields, header, attempts, status in cases:
        created = httpx.post(
            gateway.url + "/api/v1/keys",
            json={"name": f"retries-{uuid.uuid4().hex[:6]}", **fields},
            headers=gateway.headers(),
        ).json()
        reply = httpx.post(
            gateway.url + "/v1/chat/completions",
            json={"model": "key-model", **CHAT},
            headers={"authorization": f"Bearer {created['key']}", **faults("rate_limit", times=1), **header},
        )
        assert (reply.status_code, reply.headers["x-meterline-attempts"]) == (status, str(attempts)), fields
        clock.advance(3600)  # past the breaker's window


def test_a_stream_is_retried_before_its_first_byte(gateway: GatewayService) -> None:
    client = gateway.openai()
    for headers in (faults("rate_limit", times=1, retry_after="1"), faults("timeout", times=1, timeout_s="5")):
        with client.chat.completions.with_streaming_response.create(
            model="quick-chat", **CHAT, stream=True, extra_headers=headers
        ) as response:
            text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices)
            assert text and response.headers["x-meterline-attempts"] == "2"
            request_id = response.headers["x-meterline-request-id"]
        first, second = attempts_of(gateway, request_id, 2)
        assert first["error_class"] in ("rate_limit", "timeout") and second["error_class"] == "none"
        assert second["streaming"] and second["cost_usd"] > 0


def test_a_stream_falls_back_and_still_hides_the_usage_the_gateway_asked_for(gateway: GatewayService) -> None:
    body = {"model": "chat-main", **CHAT, "stream": True}
    headers = gateway.headers(**faults("server_error", models="gpt-4o,gpt-4o-mini"))
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers) as reply:
        text = reply.read().decode()
        assert reply.headers["x-meterline-attempts"] == "4"
        request_id = reply.headers["x-meterline-request-id"]
    assert "gpt-4.1-mini" in text and "[DONE]" in text
    assert '"usage"' not in text  # the client did not ask for usage; the gateway did, for every model
    events = attempts_of(gateway, request_id, 4)
    assert summary(events)[-1] == (4, "chat-last", "none") and events[-1]["usage_source"] == "provider"


def test_a_stream_that_failed_mid_way_is_not_retried(gateway: GatewayService, mock_requests) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "quick-chat", **CHAT, "stream": True}
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers(**faults("disconnect"))
    ) as reply:
        text = reply.read().decode()
        request_id = reply.headers["x-meterline-request-id"]
    assert "word0" in text and '"error"' in text and "[DONE]" not in text
    assert len(upstream_models(mock_requests())) == 1
    (event,) = attempts_of(gateway, request_id, 1)
    assert event["error_class"] in ("network", "invalid_response") and event["input_tokens"] > 0


@pytest.mark.parametrize(
    ("path", "model", "body"), [("/v1/chat/completions", "quick-chat", CHAT), ("/v1/messages", "quick-claude", MESSAGE)]
)
def test_a_stalled_stream_ends_with_an_error_event_and_is_metered(
    gateway: GatewayService, mock_requests, path: str, model: str, body: dict
) -> None:  # type: ignore[no-untyped-def]
    headers = gateway.headers(**faults("stall", timeout_s="5"))
    with httpx.stream(
        "POST", gateway.url + path, json={"model": model, **body, "stream": True}, headers=headers
    ) as reply:
        text = reply.read().decode()
        request_id = reply.headers["x-meterline-request-id"]
    last = text.strip().split("\n\n")[-1]
    assert "stalled mid-stream" in last
    assert ("event: error" in last) if path == "/v1/messages" else last.startswith('data: {"error"')
    assert len(upstream_models(mock_requests())) == 1
    (event,) = attempts_of(gateway, request_id, 1)
    assert (event["status_code"], event["error_class"]) == (504, "timeout")
    assert event["input_tokens"] > 0 and event["output_tokens"] > 0 and event["cost_usd"] > 0


def test_retried_attempts_count_against_budgets(gateway: GatewayService) -> None:
    def spend() -> float:
        reply = httpx.get(gateway.url + "/api/v1/budgets", headers=gateway.headers())
        return next(row for row in reply.json()["data"] if row["name"] == "retried-feature")["spent_usd"]

    before = spend()
    headers = {**faults("server_error", models="gpt-4o,gpt-4o-mini"), "x-meterline-feature": "retried"}
    raw = gateway.openai().chat.completions.with_raw_response.create(model="chat-main", **CHAT, extra_headers=headers)
    events = attempts_of(gateway, raw.headers["x-meterline-request-id"], 4)
    assert all(event["cost_usd"] is not None for event in events)
    deadline = time.monotonic() + 10
    while spend() - before < sum(event["cost_usd"] for event in events) - 1e-12 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spend() - before == pytest.approx(sum(event["cost_usd"] for event in events))


def health(gateway: GatewayService, **headers: str) -> dict[str, dict[str, Any]]:
    reply = httpx.get(gateway.url + "/api/v1/providers/health", headers=headers or gateway.headers())
    assert reply.status_code == 200, reply.text
    assert reply.json()["breakers_enabled"] is True
    return {row["model"]: row for row in reply.json()["data"]}


def chat(gateway: GatewayService, model: str, **headers: str) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": model, **CHAT},
        headers=gateway.headers(**headers),
        timeout=30,
    )


def test_a_circuit_opens_skips_its_model_and_recovers(
    gateway: GatewayService, clock: SkippingClock, mock_requests, mock_provider: Service
) -> None:  # type: ignore[no-untyped-def]
    failing_a = faults("server_error", models="gpt-4o")
    for _ in range(3):  # breaker-a fails three times (its fallback answers); its breaker opens
        reply = chat(gateway, "breaker-a", **failing_a)
        assert reply.status_code == 200 and reply.headers["x-meterline-attempts"] == "2"
    state = health(gateway)
    assert state["breaker-a"]["state"] == "open" and state["breaker-a"]["retry_at"]
    assert "server_error" in state["breaker-a"]["last_error"]
    assert state["breaker-b"]["state"] == "closed"

    httpx.delete(mock_provider.url + "/_mock/requests")
    reply = chat(gateway, "breaker-a")  # skipped while open: straight to breaker-b
    assert reply.status_code == 200 and reply.json()["model"] == "gpt-4o-mini"
    assert upstream_models(mock_requests()) == ["gpt-4o-mini"]
    (event,) = attempts_of(gateway, reply.headers["x-meterline-request-id"], 1)
    assert summary([event]) == [(1, "breaker-b", "none")]

    for _ in range(3):
        assert chat(gateway, "breaker-b", **faults("server_error")).status_code == 500
    httpx.delete(mock_provider.url + "/_mock/requests")
    reply = chat(gateway, "breaker-a")  # both open: 503 in OpenAI's error shape, nothing sent upstream
    assert reply.status_code == 503 and int(reply.headers["retry-after"]) >= 1
    assert reply.headers["x-meterline-attempts"] == "0"
    error = reply.json()["error"]
    assert (error["code"], error["type"]) == ("circuit_open", "api_error")
    assert "circuit breaker of model 'breaker-a' on provider 'openai' is open" in error["message"]
    assert "lets a probe through at" in error["message"]
    assert upstream_models(mock_requests()) == []
    (event,) = attempts_of(gateway, reply.headers["x-meterline-request-id"], 1)
    assert (event["status_code"], event["error_class"], event["cost_usd"]) == (503, "circuit_open", 0)

    clock.advance(31)  # cool-downs over: the next calls are probes
    reply = chat(gateway, "breaker-a", **failing_a)  # breaker-a's probe fails, breaker-b's succeeds
    assert reply.status_code == 200 and reply.json()["model"] == "gpt-4o-mini"
    state = health(gateway)
    assert (state["breaker-a"]["state"], state["breaker-b"]["state"]) == ("open", "closed")

    clock.advance(31)
    reply = chat(gateway, "breaker-a")
    assert reply.status_code == 200 and reply.json()["model"] == "gpt-4o"
    assert health(gateway)["breaker-a"]["state"] == "closed"


def test_a_breaker_opened_by_one_gateway_process_is_open_in_another(
    make_gateway, new_redis_prefix, mock_provider: Service, mock_requests
) -> None:  # type: ignore[no-untyped-def]
    shared = f"""
resilience:
  breaker: {{failures: 2, cooldown_s: 120, redis_url: "{TEST_REDIS_URL}", key_prefix: "{new_redis_prefix()}"}}
"""
    pair = """
  - {name: shared-a, provider: openai, upstream_model: gpt-4o, fallbacks: [shared-b]}
  - {name: shared-b, provider: openai, upstream_model: gpt-4o-mini}
"""
    one, two = (make_gateway(extra=shared, extra_models=pair) for _ in range(2))
    for _ in range(2):  # shared-a fails twice in the first process (its fallback answers); its breaker opens
        assert chat(one, "shared-a", **faults("server_error", models="gpt-4o")).status_code == 200
    assert health(one)["shared-a"]["state"] == "open"
    deadline = time.monotonic() + 10
    while health(two)["shared-a"]["state"] != "open":
        assert time.monotonic() < deadline, "the second process did not hear of the opening"
        time.sleep(0.05)
    assert health(one)["shared-a"]["cause"] == "2 failures within 60 s"
    assert health(two)["shared-a"]["cause"] == "2 failures within 60 s in another gateway process"
    retry_at = [datetime.fromisoformat(health(service)["shared-a"]["retry_at"]) for service in (one, two)]
    assert abs(retry_at[1] - retry_at[0]) < timedelta(seconds=1), "the same cool-down in both"
    httpx.delete(mock_provider.url + "/_mock/requests")
    reply = chat(two, "shared-a")  # skipped there too, though it never failed there: straight to shared-b
    assert reply.status_code == 200 and reply.json()["model"] == "gpt-4o-mini"
    assert upstream_models(mock_requests()) == ["gpt-4o-mini"]


def test_provider_health_needs_a_reading_key(gateway: GatewayService) -> None:
    assert httpx.get(gateway.url + "/api/v1/providers/health").status_code == 401
    created = httpx.post(
        gateway.url + "/api/v1/keys",
        json={"name": f"reader-{uuid.uuid4().hex[:6]}", "team": "search", "scope": "read:team"},
        headers=gateway.headers(),
    ).json()
    assert set(health(gateway, authorization=f"Bearer {created['key']}")) >= {"chat-main", "breaker-a"}
    caller = httpx.post(
        gateway.url + "/api/v1/keys", json={"name": f"caller-{uuid.uuid4().hex[:6]}"}, headers=gateway.headers()
    ).json()
    reply = httpx.get(gateway.url + "/api/v1/providers/health", headers={"authorization": f"Bearer {caller['key']}"})
    assert reply.status_code == 403


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"needs Chromium at {CHROMIUM}")
def test_the_models_page_shows_the_breakers(gateway: GatewayService) -> None:
    for _ in range(3):
        chat(gateway, "breaker-b", **faults("server_error"))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        page = browser.new_page(base_url=gateway.url)
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.goto("/login?next=/models")
        page.fill("input[name=key]", MASTER_KEY)
        page.click("button[type=submit]")
        page.wait_for_url(gateway.url + "/models")
        card = page.locator("#provider-health")
        expect(card).not_to_have_attribute("aria-busy", "true")
        row = card.locator("tbody tr", has_text="breaker-b")
        expect(row).to_contain_text("open")
        expect(row).to_contain_text("server_error")
        expect(card.locator("tbody tr", has_text="chat-main")).to_contain_text("closed")
        browser.close()
    assert problems == []
