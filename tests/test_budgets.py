"""Budgets, rate limits and agent guardrails end to end: real gateway processes, the mock provider, real Redis."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from meterline.budgets.rules import format_usd
from meterline.providers.estimate import estimate_tokens
from tests.conftest import Service, free_port, redis_budgets

# gpt-4o-mini in the bundled genai-prices snapshot, USD per token
MINI_INPUT, MINI_OUTPUT = 0.15e-6, 0.6e-6


@dataclass
class Webhook:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)

    def notices(self, kind: str, timeout_s: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = [hook for hook in self.received if hook["body"]["kind"] == kind]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    """A tiny aiohttp server, in a thread of its own, that keeps what is POSTed to it."""
    hook = Webhook(f"http://127.0.0.1:{free_port()}/hook")
    port = int(hook.url.split(":")[2].split("/")[0])

    async def receive(request: web.Request) -> web.Response:
        hook.received.append({"body": await request.json(), "headers": dict(request.headers)})
        return web.Response(status=204)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield hook
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.fixture(scope="module")
def slow_mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A mock provider that takes 300 ms per call, so concurrent calls are really in flight together."""
    folder = tmp_path_factory.mktemp("slow-mock")
    port = free_port()
    service = Service(["mock-provider", "--port", str(port), "--latency-ms", "300"], folder, port, folder / "mock.log")
    service.start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def gateway(make_gateway, webhook: Webhook, slow_mock: Service):  # type: ignore[no-untyped-def]
    return make_gateway(
        extra_providers=f"  slow: {{kind: openai, base_url: {slow_mock.url}/v1, api_key: x}}",
        extra_models="  - {name: slow-mini, provider: slow, upstream_model: gpt-4o-mini}",
        extra=f"""
budgets:
  default_output_tokens: 200
  budgets:
    - {{name: hard-cap, scope: "team:capped", period: month, limit_usd: 0.00005, actions: [block]}}
    - {{name: chat-downgrade, scope: "feature:chat", period: day, limit_usd: 0.00001, actions: [downgrade],
       downgrade: {{gpt-4o: gpt-4o-mini}}}}
    - {{name: watched, scope: "team:watched", period: day, limit_usd: 0.0001, actions: [alert], thresholds: [50, 100]}}
  quotas: {{user_rpm: 3}}
  agents: {{max_steps: 4, max_cost_usd: 0.001, loop_threshold: 3}}
alerts:
  webhooks: [{{url: "{webhook.url}", headers: {{x-test-secret: s3cret}}}}]
""",
    )


def chat(  # type: ignore[no-untyped-def]
    gateway, model: str = "gpt-4o-mini", output_tokens: int = 16, prompt: str = "hello there", key: str = "", **headers
) -> httpx.Response:
    """One chat call asking for (and, from the mock, getting) `output_tokens` tokens."""
    body = {"model": model, "max_tokens": output_tokens, "messages": [{"role": "user", "content": prompt}]}
    sent = {"x-mock-output-tokens": str(output_tokens), **{k.replace("_", "-"): v for k, v in headers.items()}}
    if key:
        sent["authorization"] = f"Bearer {key}"
    return httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers(**sent), timeout=30)


def set_budget(gateway, **budget: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    reply = httpx.post(gateway.url + "/api/v1/budgets", json=budget, headers=gateway.headers())
    assert reply.status_code == 201, reply.text
    return reply.json()


def budget_listing(gateway, name: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    rows = httpx.get(gateway.url + "/api/v1/budgets", headers=gateway.headers()).json()["data"]
    return next(row for row in rows if row["name"] == name)


def new_key(gateway, name: str, **limits: int) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    reply = httpx.post(gateway.url + "/api/v1/keys", json={"name": name, **limits}, headers=gateway.headers())
    assert reply.status_code == 201, reply.text
    return reply.json()["key"], reply.json()["key_id"]


def next_utc_midnight() -> datetime:
    return datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), UTC)


def fresh_minute() -> None:
    """Wait for a new minute when this one is nearly over, so a per-minute count is not cut in two."""
    second = datetime.now(UTC).second
    if second >= 50:
        time.sleep(60.5 - second)


def spent_by(gateway, expected: int, **filters: str) -> float:  # type: ignore[no-untyped-def]
    events = gateway.events(expected=expected, **filters)
    return sum(event["cost_usd"] or 0 for event in events if event["error_class"] != "budget_blocked")


def test_a_key_budget_throttles_at_its_limit_with_the_documented_429(gateway) -> None:  # type: ignore[no-untyped-def]
    key, key_id = new_key(gateway, "budgeted-app")
    set_budget(gateway, name="app-daily", scope=f"key:{key_id}", period="day", limit_usd=0.0003, actions=["throttle"])
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    calls = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for calls in range(1, 20):  # noqa: B007 — counted for the assertion below
            client.chat.completions.create(
                model="gpt-4o-mini",
                max_tokens=100,
                messages=[{"role": "user", "content": "spend a little"}],
                extra_headers={"x-mock-output-tokens": "100"},
            )
    # each call reserves about what it spends (100 output tokens, ~$0.00006): four fit in $0.0003
    assert calls == 5
    spent_per_call = (3 + 3) * MINI_INPUT + 100 * MINI_OUTPUT  # the mock counts 3 words + 3 per message
    estimate = estimate_tokens("spend a little") * MINI_INPUT + 100 * MINI_OUTPUT
    error = refused.value
    assert error.status_code == 429 and error.code == "budget_exceeded"
    body = error.response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "rate_limit_error" and body["error"]["param"] is None
    message = body["error"]["message"]
    reset = next_utc_midnight()
    assert message.startswith(
        f"budget 'app-daily' (key {key_id}, per day) is used up: {format_usd(4 * spent_per_call)}"
    )
    assert "of its $0.0003 limit is spent or held by calls in flight, and this call is estimated at " in message
    assert f"this call is estimated at {format_usd(estimate)}; it resets at {reset.isoformat()}" in message
    assert message.endswith(f"it resets at {reset.isoformat()}")
    retry_after = int(error.response.headers["retry-after"])
    assert abs(retry_after - (reset - datetime.now(UTC)).total_seconds()) < 5

    (blocked,) = gateway.events(request_id=error.response.headers["x-meterline-request-id"])
    assert (blocked["status_code"], blocked["error_class"], blocked["key_id"]) == (429, "budget_blocked", key_id)
    assert (blocked["input_tokens"], blocked["output_tokens"], blocked["cost_usd"]) == (0, 0, 0)
    assert blocked["error_message"] == message
    listed = budget_listing(gateway, "app-daily")
    assert (listed["spent_usd"], listed["source"]) == (pytest.approx(4 * spent_per_call), "api")
    assert listed["percent"] == pytest.approx(100 * 4 * spent_per_call / 0.0003, abs=0.01)


def test_a_hard_cap_refuses_with_402_in_each_clients_shape(gateway) -> None:  # type: ignore[no-untyped-def]
    statuses = [chat(gateway, output_tokens=30, x_meterline_team="capped").status_code for _ in range(4)]
    assert statuses[0] == 200 and 402 in statuses
    refused = chat(gateway, output_tokens=30, x_meterline_team="capped")
    assert refused.status_code == 402 and "retry-after" not in refused.headers
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "budget_exceeded")
    assert error["message"].startswith("budget 'hard-cap' (team capped, per month) is a hard cap and is used up: ")
    anthropic = httpx.post(
        gateway.url + "/v1/messages",
        json={"model": "claude-haiku-4-5", "max_tokens": 30, "messages": [{"role": "user", "content": "hi"}]},
        headers=gateway.headers(**{"x-meterline-team": "capped", "anthropic-version": "2023-06-01"}),
    )
    assert anthropic.status_code == 402
    assert anthropic.json()["type"] == "error" and anthropic.json()["error"]["type"] == "billing_error"
    assert "budget 'hard-cap'" in anthropic.json()["error"]["message"]


def test_downgrade_serves_the_cheaper_model_and_the_event_says_so(gateway) -> None:  # type: ignore[no-untyped-def]
    over = chat(gateway, model="gpt-4o", x_meterline_feature="chat")  # the budget is too small for any call
    assert over.status_code == 200 and over.json()["model"] == "gpt-4o-mini"
    (event,) = gateway.events(request_id=over.headers["x-meterline-request-id"])
    assert (event["requested_model"], event["served_model"], event["upstream_model"]) == (
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4o-mini",
    )
    assert event["cost_usd"] == pytest.approx(5 * MINI_INPUT + 16 * MINI_OUTPUT)  # priced as the model that served
    unmapped = chat(gateway, model="gpt-4o-mini", x_meterline_feature="chat")  # no cheaper model: served
    assert unmapped.status_code == 200 and unmapped.json()["model"] == "gpt-4o-mini"
    elsewhere = chat(gateway, model="gpt-4o", x_meterline_feature="search")
    (event,) = gateway.events(request_id=elsewhere.headers["x-meterline-request-id"])
    assert elsewhere.json()["model"] == "gpt-4o" and event["served_model"] == "gpt-4o"


def test_concurrent_calls_overshoot_a_nearly_spent_budget_by_at_most_their_estimates(gateway) -> None:  # type: ignore[no-untyped-def]
    limit = 0.0006
    set_budget(gateway, name="burst", scope="team:burst", period="day", limit_usd=limit, actions=["throttle"])
    assert chat(gateway, output_tokens=700, x_meterline_team="burst").status_code == 200  # ~70% spent
    estimate = estimate_tokens("hello there") * MINI_INPUT + 100 * MINI_OUTPUT

    async def burst() -> list[httpx.Response]:
        body = {"model": "slow-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "hello there"}]}
        headers = gateway.headers(**{"x-meterline-team": "burst", "x-mock-output-tokens": "100"})
        async with httpx.AsyncClient(timeout=30) as client:
            calls = [client.post(gateway.url + "/v1/chat/completions", json=body, headers=headers) for _ in range(50)]
            return await asyncio.gather(*calls)

    replies = asyncio.run(burst())
    served = [reply for reply in replies if reply.status_code == 200]
    refused = [reply for reply in replies if reply.status_code == 429]
    assert len(served) + len(refused) == 50 and len(served) >= 1 and len(refused) >= 40
    assert all(reply.json()["error"]["code"] == "budget_exceeded" for reply in refused)
    spent = spent_by(gateway, expected=51, team="burst")
    in_flight_estimate = len(served) * estimate
    assert limit - estimate < spent <= limit + in_flight_estimate
    assert spent <= limit * 1.01  # in fact only by what the estimates fell short of the real cost
    assert budget_listing(gateway, "burst")["spent_usd"] == pytest.approx(spent)


def test_a_users_requests_per_minute_are_limited(gateway) -> None:  # type: ignore[no-untyped-def]
    fresh_minute()
    statuses = [chat(gateway, x_meterline_user="rpm-user").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    refused = chat(gateway, x_meterline_user="rpm-user")
    error = refused.json()["error"]
    assert (refused.status_code, error["type"], error["code"]) == (429, "rate_limit_error", "rate_limit_exceeded")
    assert error["message"].startswith("user 'rpm-user' may send 3 requests per minute (budgets.quotas) and has sent 3")
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert chat(gateway, x_meterline_user="another-user").status_code == 200
    (event,) = gateway.events(request_id=refused.headers["x-meterline-request-id"])
    assert (event["error_class"], event["user"], event["status_code"]) == ("budget_blocked", "rpm-user", 429)


def test_a_keys_requests_per_minute_are_limited(gateway) -> None:  # type: ignore[no-untyped-def]
    fresh_minute()
    key, key_id = new_key(gateway, "rpm-limited", rpm_limit=2)
    statuses = [chat(gateway, key=key).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    message = chat(gateway, key=key).json()["error"]["message"]
    assert message.startswith(f"key '{key_id}' may send 2 requests per minute (the key's limit) and has sent 2")


def agent_call(gateway, run: str, prompt: str, output_tokens: int = 16) -> httpx.Response:  # type: ignore[no-untyped-def]
    return chat(gateway, prompt=prompt, output_tokens=output_tokens, x_meterline_agent_run=run)


def test_an_agent_runs_step_limit_trips_and_is_recorded_on_the_run(gateway) -> None:  # type: ignore[no-untyped-def]
    assert [agent_call(gateway, "steps-run", f"step {n}").status_code for n in range(4)] == [200] * 4
    refused = agent_call(gateway, "steps-run", "step 5")
    error = refused.json()["error"]
    assert (refused.status_code, error["code"]) == (400, "agent_limit_exceeded")
    assert error["message"] == (
        "agent run 'steps-run' has made 4 calls; its limit is 4 (agents.max_steps); start a new run or raise the limit"
    )
    (event,) = gateway.events(request_id=refused.headers["x-meterline-request-id"])
    assert (event["agent_run_id"], event["error_class"], event["status_code"]) == ("steps-run", "budget_blocked", 400)
    notices = httpx.get(gateway.url + "/api/v1/notices", headers=gateway.headers()).json()["data"]
    (notice,) = [n for n in notices if n["subject"] == "agent run steps-run"]
    assert notice["kind"] == "agent_guardrail" and notice["details"]["setting"] == "max_steps"


def test_an_agent_runs_cost_limit_trips(gateway) -> None:  # type: ignore[no-untyped-def]
    assert agent_call(gateway, "cost-run", "think hard", output_tokens=1000).status_code == 200  # ~$0.0006
    refused = agent_call(gateway, "cost-run", "think harder", output_tokens=1000)  # would pass $0.001
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("agent run 'cost-run' has cost $0.000601")
    assert "against its limit of $0.001 (agents.max_cost_usd)" in refused.json()["error"]["message"]


def test_loop_detection_trips_on_repeated_prompts_and_not_on_distinct_ones(gateway) -> None:  # type: ignore[no-untyped-def]
    prompts = ["What is the next step?", "what is the  next step?", "WHAT IS THE NEXT STEP?\n"]
    statuses = [agent_call(gateway, "loop-run", prompt).status_code for prompt in prompts]
    assert statuses == [200, 200, 400]
    message = agent_call(gateway, "loop-run", prompts[0]).json()["error"]["message"]
    assert "agent run 'loop-run' sent the same model the same prompt 3 times" in message
    distinct = ["What is the next step?", "Search the docs", "Summarise what was found"]
    assert [agent_call(gateway, "varied-run", prompt).status_code for prompt in distinct] == [200] * 3


def test_crossing_a_threshold_is_noticed_once_and_posted_to_the_webhook(gateway, webhook: Webhook) -> None:  # type: ignore[no-untyped-def]
    for _ in range(8):  # ~$0.0000107 each against $0.0001: past 50% after five calls; alert-only never refuses
        assert chat(gateway, x_meterline_team="watched").status_code == 200
    (posted,) = webhook.notices("budget_threshold")
    body = posted["body"]
    assert posted["headers"]["x-test-secret"] == "s3cret"
    assert (body["subject"], body["details"]["threshold"], body["details"]["limit_usd"]) == ("watched", 50.0, 0.0001)
    assert body["message"].startswith("budget 'watched' (team watched, per day) reached 50% of its $0.0001 limit: ")
    notices = httpx.get(gateway.url + "/api/v1/notices", params={"limit": 1000}, headers=gateway.headers()).json()
    stored = [n for n in notices["data"] if n["kind"] == "budget_threshold" and n["subject"] == "watched"]
    assert [n["message"] for n in stored] == [body["message"]]


def test_budgets_api_validates_lists_and_deletes(gateway) -> None:  # type: ignore[no-untyped-def]
    bad = httpx.post(
        gateway.url + "/api/v1/budgets",
        json={"scope": "team:x", "period": "year", "limit_usd": 1},
        headers=gateway.headers(),
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "period"
    unknown_model = httpx.post(
        gateway.url + "/api/v1/budgets",
        json={"scope": "model:gpt-9", "period": "day", "limit_usd": 1},
        headers=gateway.headers(),
    )
    assert unknown_model.status_code == 400 and "'gpt-9' is not a configured model" in unknown_model.text
    taken = httpx.post(
        gateway.url + "/api/v1/budgets",
        json={"name": "watched", "scope": "team:x", "period": "day", "limit_usd": 1},
        headers=gateway.headers(),
    )
    assert taken.status_code == 409
    created = set_budget(gateway, scope="team:api", period="week", limit_tokens=5000, actions=["alert", "throttle"])
    assert created["name"] == "team:api:week" and created["source"] == "api"
    rows = httpx.get(gateway.url + "/api/v1/budgets", headers=gateway.headers()).json()["data"]
    by_name = {row["name"]: row for row in rows}
    assert by_name["watched"]["source"] == "config" and by_name["team:api:week"]["limit_tokens"] == 5000
    week_start = datetime.fromisoformat(by_name["team:api:week"]["period_start"])
    assert week_start.weekday() == 0 and week_start.tzinfo is not None
    assert httpx.delete(gateway.url + "/api/v1/budgets/team:api:week", headers=gateway.headers()).status_code == 200
    assert httpx.delete(gateway.url + "/api/v1/budgets/team:api:week", headers=gateway.headers()).status_code == 404
    assert httpx.delete(gateway.url + "/api/v1/budgets/watched", headers=gateway.headers()).status_code == 409
    assert httpx.get(gateway.url + "/api/v1/budgets").status_code == 401


def test_budgets_cli_sets_lists_and_deletes(gateway) -> None:  # type: ignore[no-untyped-def]
    result = gateway.cli(
        "budgets", "set", "--scope", "team:cli", "--period", "day", "--limit-usd", "0.00002",
        "--action", "throttle", "--action", "alert", "--name", "cli-budget",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "set budget 'cli-budget' (team cli, per day): $0.00002, actions throttle, alert" in result.stdout
    assert chat(gateway, x_meterline_team="cli").status_code == 200  # applies from the next request on
    assert chat(gateway, x_meterline_team="cli").status_code == 429
    listed = gateway.cli("budgets", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [row for row in json.loads(listed.stdout) if row["name"] == "cli-budget"]
    assert row["source"] == "api" and row["spent_usd"] == pytest.approx(5 * MINI_INPUT + 16 * MINI_OUTPUT)
    table = gateway.cli("budgets", "list")
    assert table.returncode == 0 and "cli-budget" in table.stdout and "watched" in table.stdout
    bad = gateway.cli("budgets", "set", "--scope", "team:cli", "--period", "day", "--downgrade", "gpt-4o")
    assert bad.returncode != 0 and "'gpt-4o' is not MODEL=CHEAPER" in bad.stderr
    assert gateway.cli("budgets", "delete", "cli-budget").returncode == 0
    assert chat(gateway, x_meterline_team="cli").status_code == 200
    missing = gateway.cli("budgets", "delete", "cli-budget")
    assert missing.returncode == 1 and "there is no budget named 'cli-budget'" in missing.stderr
    for command in (("budgets", "set"), ("budgets", "list"), ("budgets", "delete")):
        assert "Example" in gateway.cli(*command, "--help").stdout


def test_spend_survives_a_restart_of_the_in_process_counters(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway(
        extra="budgets: {budgets: [{name: persist, scope: 'team:persist', period: day, limit_usd: 0.0002, "
        "actions: [throttle]}]}"
    )
    for _ in range(2):
        assert chat(gateway, output_tokens=100, x_meterline_team="persist").status_code == 200
    before = budget_listing(gateway, "persist")["spent_usd"]
    gateway.stop()
    offline = gateway.cli("budgets", "list", "--json")  # no server: the spend is read from the store file
    assert offline.returncode == 0, offline.stderr
    assert [row["spent_usd"] for row in json.loads(offline.stdout)] == [pytest.approx(before)]
    gateway.start()
    assert budget_listing(gateway, "persist")["spent_usd"] == pytest.approx(before)
    statuses = [chat(gateway, output_tokens=100, x_meterline_team="persist").status_code for _ in range(3)]
    assert statuses == [200, 429, 429]  # three calls of ~$0.00006 fit in $0.0002, two of them before the restart
    assert spent_by(gateway, expected=5, team="persist") <= 0.0002


SHARED_BUDGET = '[{name: shared, scope: "team:shared", period: day, limit_usd: 0.0002, actions: [throttle]}]'


def redis_gateway(make_gateway, prefix: str):  # type: ignore[no-untyped-def]
    return make_gateway(extra=redis_budgets(prefix, SHARED_BUDGET))


def test_two_gateways_share_counters_through_redis_and_keep_them_over_a_restart(  # type: ignore[no-untyped-def]
    make_gateway, new_redis_prefix
) -> None:
    prefix = new_redis_prefix()
    first, second = redis_gateway(make_gateway, prefix), redis_gateway(make_gateway, prefix)
    statuses = [chat(first, output_tokens=100, x_meterline_team="shared").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    spent = budget_listing(first, "shared")["spent_usd"]
    assert budget_listing(second, "shared")["spent_usd"] == pytest.approx(spent)
    refused = chat(second, output_tokens=100, x_meterline_team="shared")  # the other process: nothing spent there
    assert refused.status_code == 429 and "budget 'shared'" in refused.json()["error"]["message"]
    assert chat(second, output_tokens=10, x_meterline_team="shared").status_code == 200  # a smaller call still fits
    first.stop()
    first.start()
    after = budget_listing(first, "shared")["spent_usd"]
    assert after == pytest.approx(budget_listing(second, "shared")["spent_usd"]) and after > spent
    assert chat(first, output_tokens=100, x_meterline_team="shared").status_code == 429
