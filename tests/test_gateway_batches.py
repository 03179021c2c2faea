"""The OpenAI Files and Batch APIs through the gateway, driven by the official `openai` SDK against the mock.

Files and batches pass through; when a batch finishes (the gateway notices on retrieve, or its
poller finds it) each result becomes one event linked to the batch, attributed like the call
that created it and priced at batch rates, exactly once however often it is metered.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from typing import Any

import httpx
import openai
import pytest

from meterline.gateway.batch_registry import BatchRecord, BatchRegistry
from meterline.store.control import ControlDB
from tests.conftest import MASTER_KEY, free_port, gateway_config, worker_gateway

# genai-prices' openai/gpt-4o-mini batch prices (processing=batch), USD per million tokens: half the
# standard $0.15 input and $0.60 output.
GPT_4O_MINI_BATCH = {"input": 0.075, "output": 0.30}
TERMINAL = ("completed", "failed", "expired", "cancelled")


def batch_file(model: str, prompts: list[str], max_tokens: int = 4) -> io.BytesIO:
    lines = [
        {
            "custom_id": f"task-{number}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens},
        }
        for number, prompt in enumerate(prompts, start=1)
    ]
    return io.BytesIO("\n".join(json.dumps(line) for line in lines).encode())


def finished(client: openai.OpenAI, batch_id: str) -> Any:
    """The batch once the mock has run it, retrieved through the gateway."""
    deadline = time.monotonic() + 30
    batch = client.batches.retrieve(batch_id)
    while batch.status not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.05)
        batch = client.batches.retrieve(batch_id)
    return batch


def start_batch(client: openai.OpenAI, model: str, prompts: list[str], **headers: str) -> Any:
    upload = client.files.create(file=("requests.jsonl", batch_file(model, prompts)), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        extra_headers={"x-mock-batch-delay-s": "0.1", **headers},
    )


def test_each_result_becomes_one_event_attributed_and_priced_at_batch_rates(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway(extra="batches: {poll_interval_s: 3600}")  # only a retrieve notices the batch finish
    client = gateway.openai()
    prompts = ["Summarise document one", "Summarise the second document please"]
    # the file names the configured alias "fast"; upstream it is gpt-4o-mini
    batch = start_batch(
        client,
        "fast",
        prompts,
        **{"x-meterline-team": "research", "x-meterline-feature": "nightly-eval", "x-mock-reasoning-tokens": "2"},
    )
    assert batch.status == "validating"
    batch = finished(client, batch.id)
    assert (batch.status, batch.request_counts.completed, batch.request_counts.failed) == ("completed", 2, 0)
    assert batch.model == "gpt-4o-mini"
    results = [json.loads(line) for line in client.files.content(batch.output_file_id).text.splitlines()]

    events = gateway.events(expected=2, batch_id=batch.id)
    assert len(events) == 2
    by_task = {event["properties"]["custom_id"]: event for event in events}
    # each prompt: 3 tokens of message overhead plus its words; each answer: 4 tokens plus 2 of reasoning
    prompt_tokens = {"task-1": 3 + 3, "task-2": 3 + 5}
    for result in results:
        event, body = by_task[result["custom_id"]], result["response"]["body"]
        assert body["model"] == "gpt-4o-mini"
        assert (event["input_tokens"], event["output_tokens"], event["reasoning_tokens"]) == (
            prompt_tokens[result["custom_id"]],
            6,
            2,
        )
        assert event["input_tokens"] == body["usage"]["prompt_tokens"]
        assert (event["request_id"], event["response_id"]) == (result["id"], body["id"])
        assert (event["requested_model"], event["upstream_model"], event["response_model"]) == (
            "fast",
            "gpt-4o-mini",
            "gpt-4o-mini",
        )
        assert (event["operation"], event["provider"], event["batch_id"]) == ("chat", "openai", batch.id)
        assert (event["team"], event["feature"], event["usage_source"]) == ("research", "nightly-eval", "provider")
        assert event["service_tier"] == "default"
        expected = (event["input_tokens"] * GPT_4O_MINI_BATCH["input"] + 6 * GPT_4O_MINI_BATCH["output"]) / 1_000_000
        assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)
    # task-1: 6 x $0.075 + 6 x $0.30; task-2: 8 x $0.075 + 6 x $0.30 (per million tokens)
    assert sum(event["cost_usd"] for event in events) == pytest.approx((14 * 0.075 + 12 * 0.30) / 1e6, rel=1e-9)

    listed = client.batches.list()
    assert [item.id for item in listed.data] == [batch.id]
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"


def test_batch_results_are_charged_to_budgets_and_a_spent_budget_refuses_new_batches(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway(
        extra="""
batches: {poll_interval_s: 3600}
budgets:
  budgets: [{name: nightly, scope: "team:nightly", period: month, limit_usd: 0.000001, actions: [block]}]
"""
    )
    client = gateway.openai()
    team = {"x-meterline-team": "nightly"}
    prompts = ["Summarise document one", "Summarise the second document please"]
    batch = finished(client, start_batch(client, "gpt-4o-mini", prompts, **team).id)
    assert batch.status == "completed"
    events = gateway.events(expected=2, batch_id=batch.id)
    cost = sum(event["cost_usd"] for event in events)
    assert cost > 0.000001
    budgets = httpx.get(gateway.url + "/api/v1/budgets", headers=gateway.headers()).json()["data"]
    (nightly,) = [row for row in budgets if row["name"] == "nightly"]
    assert nightly["spent_usd"] == pytest.approx(cost, rel=1e-9)

    # the results overspent the team's hard cap: its next call and its next batch are refused
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one more"}]}
    refused = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers(**team))
    assert (refused.status_code, refused.json()["error"]["code"]) == (402, "budget_exceeded")
    with pytest.raises(openai.APIStatusError) as second:
        start_batch(client, "gpt-4o-mini", prompts, **team)
    assert second.value.status_code == 402
    assert "budget 'nightly'" in second.value.message
    blocked = [
        event for event in gateway.events(expected=4, team="nightly") if event["error_class"] == "budget_blocked"
    ]
    assert [event["status_code"] for event in blocked] == [402, 402]


def test_a_finished_batch_is_metered_once_by_the_poller_across_repeats_and_restarts(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway(extra="batches: {poll_interval_s: 0.1}")
    client = gateway.openai()
    batch = start_batch(client, "gpt-4o-mini", ["first question", "second question"], **{"x-meterline-user": "u-7"})
    events = gateway.events(expected=2, batch_id=batch.id)  # nobody retrieves it: the poller meters it
    assert len(events) == 2 and {event["user"] for event in events} == {"u-7"}
    control = gateway.data_dir / "control.sqlite"

    def meter_again() -> None:
        """Forget that the batch was metered, wait for the poller to meter it again, then flush the spool."""
        with sqlite3.connect(control) as db:
            db.execute("UPDATE batches SET metered_at = NULL WHERE batch_id = ?", (batch.id,))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with sqlite3.connect(control) as db:
                (metered,) = db.execute("SELECT metered_at FROM batches WHERE batch_id = ?", (batch.id,)).fetchone()
            if metered is not None:
                break
            time.sleep(0.05)
        # an event spooled after the repeated ones is loaded after them: once it is stored, they were offered too
        marker = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "marker"}]
        )
        assert gateway.events(request_id=marker.headers["x-meterline-request-id"])

    meter_again()
    assert gateway.events(batch_id=batch.id) == events
    gateway.stop()
    gateway.start()
    meter_again()
    assert gateway.events(batch_id=batch.id) == events


def test_bad_batch_files_are_refused_naming_the_line(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    lines = [
        {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o-mini"}},
        {"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "gpt-4o"}},
    ]
    content = "\n".join(json.dumps(line) for line in lines).encode()
    with pytest.raises(openai.BadRequestError) as mixed:
        client.files.create(file=("mixed.jsonl", content), purpose="batch")
    assert "batch file line 1: missing required field 'messages'" in str(mixed.value)
    lines[0]["body"]["messages"] = lines[1]["body"]["messages"] = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as two_models:
        client.files.create(
            file=("mixed.jsonl", "\n".join(json.dumps(line) for line in lines).encode()), purpose="batch"
        )
    assert "batch file line 2: the request is for gpt-4o" in str(two_models.value)
    with pytest.raises(openai.BadRequestError) as unknown:
        client.files.create(file=("unknown.jsonl", batch_file("gpt-9", ["hi"])), purpose="batch")
    assert "batch file line 1: model 'gpt-9' is not configured on this gateway" in str(unknown.value)
    with pytest.raises(openai.BadRequestError) as purpose:
        client.files.create(file=("notes.txt", b"notes"), purpose="assistants")
    assert "Batch API only" in str(purpose.value)


def test_a_key_sees_only_its_own_files_and_batches(gateway) -> None:  # type: ignore[no-untyped-def]
    keys = []
    for name in ("batch-owner", "batch-stranger"):
        reply = httpx.post(gateway.url + "/api/v1/keys", json={"name": name, "team": name}, headers=gateway.headers())
        assert reply.status_code == 201, reply.text
        keys.append(reply.json()["key"])
    owner = openai.OpenAI(base_url=gateway.url + "/v1", api_key=keys[0], max_retries=0)
    stranger = openai.OpenAI(base_url=gateway.url + "/v1", api_key=keys[1], max_retries=0)
    batch = start_batch(owner, "gpt-4o-mini", ["mine"])
    with pytest.raises(openai.NotFoundError):
        stranger.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        stranger.files.retrieve(batch.input_file_id)
    with pytest.raises(openai.NotFoundError):
        stranger.batches.create(
            input_file_id=batch.input_file_id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert stranger.batches.list().data == []
    assert [item.id for item in owner.batches.list().data] == [batch.id]
    (event,) = gateway.events(batch_id=finished(owner, batch.id).id)
    assert event["team"] == "batch-owner"


def test_a_cancelled_batch_costs_nothing(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    batch = start_batch(client, "gpt-4o-mini", ["never run"], **{"x-mock-batch-delay-s": "30"})
    assert client.batches.cancel(batch.id).status == "cancelling"
    assert finished(client, batch.id).status == "cancelled"
    marker = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "after the cancel"}]
    )
    assert gateway.events(request_id=marker.headers["x-meterline-request-id"])
    assert gateway.events(batch_id=batch.id, timeout_s=0) == []


def test_one_process_claims_a_batch_for_metering_at_a_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first, second = (BatchRegistry(ControlDB(tmp_path / "control.sqlite")) for _ in range(2))
    first.add_batch(
        BatchRecord("batch_1", "openai", "key", "m", "m", "/v1/chat/completions", {}, "completed", None, None, False)
    )
    assert first.claim("batch_1", lease_s=60)
    assert not second.claim("batch_1", lease_s=60)
    first.release("batch_1")
    assert second.claim("batch_1", lease_s=60)
    second.metered("batch_1", events=3)
    assert not first.claim("batch_1", lease_s=60)
    assert first.unmetered() == []


def test_workers_that_all_notice_a_finished_batch_meter_it_once(mock_provider, tmp_path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    (tmp_path / "meterline.yaml").write_text(
        gateway_config(mock_provider.url, port, extra="batches: {poll_interval_s: 0.1}")
    )
    service = worker_gateway(tmp_path, port)
    try:
        deadline = time.monotonic() + 30
        while "worker 1 listening" not in service.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        client = service.openai()
        batch = start_batch(client, "gpt-4o-mini", [f"question {number}" for number in range(5)])
        # retrieves land on both workers (the kernel spreads connections) while worker 0 also polls
        batch = finished(client, batch.id)
        for _ in range(10):
            openai.OpenAI(base_url=service.url + "/v1", api_key=MASTER_KEY, max_retries=0).batches.retrieve(batch.id)
        events = service.events(expected=5, batch_id=batch.id)
        marker = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "after the batch"}]
        )
        assert service.events(request_id=marker.headers["x-meterline-request-id"])
        assert len(service.events(batch_id=batch.id)) == len(events) == 5
        assert len({event["event_id"] for event in events}) == 5
    finally:
        service.stop()
