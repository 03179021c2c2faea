"""The request shape on every event: hashes and counts from each wire format, never the prompt text.

Unit checks of each `Dialect.request_shape`, then the official SDKs through a real gateway: a
client's own retries of a rate-limited call share one `request_hash` and record the Retry-After
they were given, and the insights API answers over that traffic.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from google.genai import types

from meterline.providers.anthropic import AnthropicDialect
from meterline.providers.estimate import estimate_tokens
from meterline.providers.gemini import GeminiDialect
from meterline.providers.openai import OpenAIDialect
from tests.conftest import MASTER_KEY
from tests.test_gateway_gemini import client, gemini_gateway

OPENAI, ANTHROPIC, GEMINI = OpenAIDialect(), AnthropicDialect(), GeminiDialect()
SYSTEM = "You are a support agent for Acme. Answer in two sentences."
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


def chat(question: str, **extra: object) -> dict:
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "tools": TOOLS,
        "max_completion_tokens": 200,
        **extra,
    }


def test_openai_chat_shape() -> None:
    shape = OPENAI.request_shape("chat", chat("Where is my order?"))
    assert (shape.n_messages, shape.tools_count, shape.max_tokens) == (2, 1, 200)
    assert len(shape.request_hash) == 32 and SYSTEM not in shape.request_hash
    # the prefix is the system prompt and the tools, and its tokens are estimated from them
    assert shape.system_tokens == estimate_tokens(SYSTEM + "\n" + '[{"type":"function","function":{"name":"lookup",'
                                                  '"parameters":{"type":"object","properties":{}}}}]')  # fmt: skip
    same_prefix = OPENAI.request_shape("chat", chat("Can I return it?"))
    assert same_prefix.prefix_hash == shape.prefix_hash and same_prefix.request_hash != shape.request_hash
    # key order, streaming and the end user's id do not change what the model answers
    reordered = dict(reversed(list(chat("Where is my order?", stream=True, user="u-1").items())))
    assert OPENAI.request_shape("chat", reordered).request_hash == shape.request_hash
    warmer = OPENAI.request_shape("chat", chat("Where is my order?", temperature=0.9))
    assert warmer.request_hash != shape.request_hash


def test_openai_other_operations() -> None:
    bare = OPENAI.request_shape("chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert (bare.prefix_hash, bare.system_tokens, bare.tools_count, bare.max_tokens) == (None, 0, 0, None)
    responses = OPENAI.request_shape(
        "responses", {"model": "m", "instructions": SYSTEM, "input": "hi", "max_output_tokens": 50}
    )
    assert responses.prefix_hash is not None and responses.system_tokens == estimate_tokens(SYSTEM)
    assert (responses.n_messages, responses.max_tokens) == (1, 50)
    batch = OPENAI.request_shape("embeddings", {"model": "e", "input": ["a", "b", "c"]})
    tokens = OPENAI.request_shape("embeddings", {"model": "e", "input": [101, 102, 103]})
    assert (batch.n_messages, tokens.n_messages, batch.max_tokens) == (3, 1, None)
    again = OPENAI.request_shape("embeddings", {"input": ["a", "b", "c"], "model": "e", "user": "someone"})
    assert again.request_hash == batch.request_hash
    assert OPENAI.request_shape("completion", {"model": "m", "prompt": ["a", "b"]}).n_messages == 2


def test_anthropic_messages_shape() -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 300,
        "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "lookup", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "Where is my order?"}],
        "metadata": {"user_id": "u-1"},
    }
    shape = ANTHROPIC.request_shape("messages", body)
    assert (shape.n_messages, shape.tools_count, shape.max_tokens) == (1, 1, 300)
    assert shape.prefix_hash is not None and shape.system_tokens > estimate_tokens(SYSTEM)
    other_user = ANTHROPIC.request_shape("messages", {**body, "metadata": {"user_id": "u-2"}, "stream": True})
    assert other_user.request_hash == shape.request_hash


def test_gemini_shape() -> None:
    body = {
        "systemInstruction": {"parts": [{"text": SYSTEM}]},
        "contents": [{"role": "user", "parts": [{"text": "Where is my order?"}]}],
        "tools": [{"functionDeclarations": [{"name": "lookup"}, {"name": "cancel"}]}],
        "generationConfig": {"maxOutputTokens": 120},
    }
    shape = GEMINI.request_shape("generate_content", body)
    assert (shape.n_messages, shape.tools_count, shape.max_tokens) == (1, 1, 120)  # one Tool declaring two functions
    assert shape.prefix_hash is not None and shape.system_tokens > estimate_tokens(SYSTEM)
    snake = {
        "system_instruction": body["systemInstruction"],
        **{k: v for k, v in body.items() if k != "systemInstruction"},
    }
    assert GEMINI.request_shape("generate_content", snake).prefix_hash == shape.prefix_hash
    batch = {"requests": [{"content": {"parts": [{"text": "a"}]}}, {"content": {"parts": [{"text": "b"}]}}]}
    assert GEMINI.request_shape("embeddings", batch).n_messages == 2
    # the model is never part of the hash: Gemini names it in the URL, the others in the body
    assert (
        OPENAI.request_shape("chat", chat("x")).request_hash
        == OPENAI.request_shape("chat", {**chat("x"), "model": "gpt-4o"}).request_hash
    )


def test_google_genai_call_records_its_shape(make_gateway, mock_provider) -> None:  # type: ignore[no-untyped-def]
    gateway = gemini_gateway(make_gateway, mock_provider)
    sdk = client(gateway, **{"x-meterline-feature": "gemini-shape"})
    config = types.GenerateContentConfig(system_instruction=SYSTEM, max_output_tokens=40)
    sdk.models.generate_content(model="gemini-2.5-flash", contents=["hello", "and more"], config=config)
    (event,) = gateway.events(feature="gemini-shape")
    assert (event["operation"], event["max_tokens"], event["tools_count"]) == ("generate_content", 40, 0)
    assert event["n_messages"] >= 1 and event["system_tokens"] == estimate_tokens(SYSTEM) and event["prefix_hash"]


def test_client_retries_share_a_request_hash_through_the_gateway(gateway) -> None:  # type: ignore[no-untyped-def]
    """The openai SDK retries a 429 itself (twice here): three requests to the gateway, one request hash."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER_KEY, max_retries=2)
    headers = {
        "x-mock-fault": "rate_limit",
        "x-mock-fault-times": "2",
        "x-mock-fault-key": "shape-retries",
        "x-mock-retry-after": "0.05",
        "x-meterline-feature": "shape-retries",
    }
    reply = client.chat.completions.create(**chat("Where is my order?"), extra_headers=headers)
    assert reply.choices[0].message.content
    events = sorted(gateway.events(expected=3, feature="shape-retries"), key=lambda event: event["started_at"])
    assert [event["error_class"] for event in events] == ["rate_limit", "rate_limit", "none"]
    assert len({event["request_id"] for event in events}) == 3  # each resend is a request of its own
    assert len({event["request_hash"] for event in events}) == 1  # but the same call
    assert [event["retry_after_s"] for event in events] == [0.05, 0.05, None]
    last = events[-1]
    assert (last["n_messages"], last["tools_count"], last["max_tokens"]) == (2, 1, 200)
    assert last["prefix_hash"] and last["system_tokens"] > 0
    assert not any(SYSTEM in str(value) for value in last.values())  # hashes only, never the text


def test_anthropic_sdk_call_records_its_shape(gateway) -> None:  # type: ignore[no-untyped-def]
    message = gateway.anthropic().messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        system=SYSTEM,
        messages=[{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"},
                  {"role": "user", "content": "bye"}],
    )  # fmt: skip
    (event,) = gateway.events(request_id=message.headers["x-meterline-request-id"])
    assert (event["n_messages"], event["tools_count"], event["max_tokens"]) == (3, 0, 64)
    assert event["system_tokens"] == estimate_tokens(SYSTEM) and event["prefix_hash"]


def test_insights_api_answers_and_names_bad_parameters(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = httpx.get(gateway.url + "/api/v1/insights", params={"since": "1d"}, headers=gateway.headers())
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["month_days"] == 30 and body["detectors"][0] == "retry_amplifier"
    assert all(finding["usd_per_month"] >= 1 for finding in body["findings"])
    bad = httpx.get(gateway.url + "/api/v1/insights", params={"detector": "nope"}, headers=gateway.headers())
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "detector"
    assert httpx.get(gateway.url + "/api/v1/insights").status_code == 401


@pytest.mark.parametrize("endpoint", ["chargeback", "usage/daily", "forecast?group_by=feature"])
def test_other_new_endpoints_answer(gateway, endpoint: str) -> None:  # type: ignore[no-untyped-def]
    reply = httpx.get(f"{gateway.url}/api/v1/{endpoint}", headers=gateway.headers())
    assert reply.status_code == 200, reply.text
