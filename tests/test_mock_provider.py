"""The mock provider speaks the OpenAI and Anthropic wire formats well enough for the official SDKs.

Each test drives a mock served in a background thread (its own event loop) with the sync
`openai` and `anthropic` clients, or with raw HTTP where a fault breaks what an SDK can parse.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anthropic
import httpx
import openai
import pytest
from aiohttp import web

from meterline.mock_provider.app import create_mock_app
from meterline.mock_provider.settings import MockSettings
from meterline.mock_provider.tokens import count_tokens, reply_chunks, reply_text

USER = {"role": "user", "content": "How much does this cost?"}  # 5 tokens + 3 overhead
SYSTEM_TEXT = "You are terse."  # 3 tokens + 3 overhead
DEFAULT_REPLY = reply_text(16)


@contextmanager
def serve(settings: MockSettings) -> Iterator[str]:
    """Run the mock on a free port in a background thread; yield its base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_mock_app(settings), access_log=None, handler_cancellation=True, shutdown_timeout=1)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with serve(MockSettings()) as url:
        yield url


def openai_client(url: str, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=options.pop("api_key", "sk-test"), max_retries=0, **options)


def anthropic_client(url: str, **options: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=options.pop("api_key", "sk-ant-test"), max_retries=0, **options)


def raw_post(url: str, path: str, body: object, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """POST with http.client, returning the response with its body unread."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection.request("POST", path, payload, {"content-type": "application/json", **(headers or {})})
    return connection.getresponse()


def received(url: str) -> list[dict[str, Any]]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("GET", "/_mock/requests")
    return json.loads(connection.getresponse().read())


CHAT = {"model": "gpt-test", "messages": [USER]}
MESSAGE = {"model": "claude-test", "max_tokens": 100, "messages": [USER]}
ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01"}


# --- token counting -------------------------------------------------------------------------


def test_count_tokens_counts_whitespace_separated_words() -> None:
    assert count_tokens("Hello, world!") == 2
    assert count_tokens("  spaced \n out\ttext ") == 3
    assert count_tokens("") == 0


def test_reply_text_is_exactly_the_requested_tokens_and_chunks_rebuild_it() -> None:
    for tokens in (0, 1, 7, 16):
        assert count_tokens(reply_text(tokens)) == tokens
        for chunk_tokens in (1, 3):
            chunks = reply_chunks(tokens, chunk_tokens)
            assert "".join(text for text, _ in chunks) == reply_text(tokens)
            assert sum(count for _, count in chunks) == tokens


def test_settings_reject_unknown_fault() -> None:
    with pytest.raises(ValueError, match="unknown fault"):
        MockSettings(fault="gremlins")


# --- OpenAI chat ----------------------------------------------------------------------------


def test_chat_completion_with_usage_details(mock_url: str) -> None:
    completion = openai_client(mock_url).chat.completions.create(
        model="gpt-test",
        messages=[{"role": "system", "content": SYSTEM_TEXT}, USER],
        extra_headers={"x-mock-cached-tokens": "4", "x-mock-reasoning-tokens": "3"},
    )
    assert completion.object == "chat.completion" and completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-test"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == ("assistant", DEFAULT_REPLY, "stop")
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (14, 19, 33)
    assert usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens_details.reasoning_tokens == 3


def test_chat_content_parts_and_limits(mock_url: str) -> None:
    client = openai_client(mock_url)
    parts = [{"type": "text", "text": "two words"}, {"type": "image_url", "image_url": {"url": "data:,"}}]
    completion = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": parts}], max_completion_tokens=5
    )
    assert completion.usage.prompt_tokens == 3 + 2 + 85  # message overhead, two words, a low-detail image
    assert (completion.usage.completion_tokens, completion.choices[0].finish_reason) == (5, "length")
    completion = client.chat.completions.create(**CHAT, max_tokens=50, extra_headers={"x-mock-output-tokens": "3"})
    assert (completion.choices[0].message.content, completion.choices[0].finish_reason) == ("word0 word1 word2", "stop")
    completion = client.chat.completions.create(**CHAT, n=2)
    assert [choice.index for choice in completion.choices] == [0, 1]
    assert completion.usage.completion_tokens == 32


def test_chat_stream_without_usage(mock_url: str) -> None:
    chunks = list(openai_client(mock_url).chat.completions.create(**CHAT, stream=True))
    assert all(chunk.object == "chat.completion.chunk" and chunk.choices for chunk in chunks)
    assert all("usage" not in chunk.model_dump(exclude_unset=True) for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks) == DEFAULT_REPLY
    assert [chunk.choices[0].finish_reason for chunk in chunks][-2:] == [None, "stop"]
    assert len({chunk.id for chunk in chunks}) == 1


def test_chat_stream_with_include_usage(mock_url: str) -> None:
    response = raw_post(
        mock_url, "/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert response.getheader("content-type").startswith("text/event-stream")
    events = response.read().decode().split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(event.removeprefix("data: ")) for event in events[:-2]]
    assert all(chunk["usage"] is None and chunk["choices"] for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == 8 and chunks[-1]["usage"]["completion_tokens"] == 16
    stream = openai_client(mock_url).chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}, max_tokens=4
    )
    parsed = list(stream)
    assert parsed[-1].usage.completion_tokens == 4
    assert parsed[-2].choices[0].finish_reason == "length"


def test_stream_chunk_tokens_and_pacing() -> None:
    with serve(MockSettings(stream_chunk_tokens=4, latency_ms=50, per_token_ms=5)) as url:
        started = time.monotonic()
        chunks = list(openai_client(url).chat.completions.create(**CHAT, stream=True))
        elapsed = time.monotonic() - started
    contents = [chunk.choices[0].delta.content for chunk in chunks[1:-1]]
    assert "".join(contents) == DEFAULT_REPLY
    assert [count_tokens(content) for content in contents] == [4, 4, 4, 4]
    assert elapsed >= 0.05 + 16 * 0.005


# --- OpenAI completions, embeddings, models --------------------------------------------------


def test_legacy_completions(mock_url: str) -> None:
    client = openai_client(mock_url)
    completion = client.completions.create(model="gpt-test", prompt="Once upon a time", max_tokens=5)
    assert completion.object == "text_completion"
    assert (completion.choices[0].text, completion.choices[0].finish_reason) == (reply_text(5), "length")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 5)
    completion = client.completions.create(model="gpt-test", prompt=["one", "two words", [1, 2, 3]])
    assert len(completion.choices) == 3
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (6, 48)
    chunks = list(
        client.completions.create(model="gpt-test", prompt="Once", stream=True, stream_options={"include_usage": True})
    )
    assert "".join(chunk.choices[0].text for chunk in chunks[:-1]) == DEFAULT_REPLY
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_embeddings_default_base64_and_float(mock_url: str) -> None:
    client = openai_client(mock_url)
    result = client.embeddings.create(model="embed-test", input=["first document", "second document here"])
    assert [item.index for item in result.data] == [0, 1]
    vector = result.data[0].embedding
    assert len(vector) == 8 and math.isclose(sum(value * value for value in vector), 1.0, rel_tol=1e-5)
    assert result.data[0].embedding != result.data[1].embedding
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (5, 5)
    assert received(mock_url)[-1]["body"]["encoding_format"] == "base64"
    as_floats = client.embeddings.create(model="embed-test", input="first document", encoding_format="float")
    assert as_floats.data[0].embedding == pytest.approx(vector, rel=1e-6)
    wide = client.embeddings.create(model="embed-test", input=[[1, 2, 3]], dimensions=32)
    assert len(wide.data[0].embedding) == 32 and wide.usage.prompt_tokens == 3


def test_models_list(mock_url: str) -> None:
    assert {model.id for model in openai_client(mock_url).models.list()} >= {"mock-gpt"}


# --- OpenAI Responses ------------------------------------------------------------------------


def test_responses_create(mock_url: str) -> None:
    client = openai_client(mock_url)
    response = client.responses.create(
        model="gpt-test",
        instructions="Be brief.",
        input="Write one line.",
        extra_headers={"x-mock-cached-tokens": "2", "x-mock-reasoning-tokens": "5"},
    )
    assert response.id.startswith("resp_") and response.status == "completed"
    assert response.output_text == DEFAULT_REPLY
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (11, 21, 32)
    assert usage.input_tokens_details.cached_tokens == 2
    assert usage.output_tokens_details.reasoning_tokens == 5
    items = [{"role": "user", "content": [{"type": "input_text", "text": "three word input"}]}]
    cut = client.responses.create(model="gpt-test", input=items, max_output_tokens=4)
    assert (cut.status, cut.incomplete_details.reason) == ("incomplete", "max_output_tokens")
    assert (cut.usage.input_tokens, cut.usage.output_tokens, cut.output_text) == (6, 4, reply_text(4))


def test_responses_stream(mock_url: str) -> None:
    client = openai_client(mock_url)
    events = list(client.responses.create(model="gpt-test", input="stream it", stream=True))
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert types.count("response.output_text.delta") == 16
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert events[-1].response.usage.output_tokens == 16
    with client.responses.stream(model="gpt-test", input="stream it", max_output_tokens=3) as stream:
        events = list(stream)
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == reply_text(3)
    assert (events[-1].type, events[-1].response.status) == ("response.incomplete", "incomplete")
    assert events[-1].response.usage.output_tokens == 3


# --- Anthropic -------------------------------------------------------------------------------


def test_anthropic_message_with_cache_usage(mock_url: str) -> None:
    client = anthropic_client(mock_url)
    message = client.messages.create(
        model="claude-test",
        max_tokens=100,
        system=[{"type": "text", "text": SYSTEM_TEXT}],
        messages=[USER],
        extra_headers={
            "x-mock-cached-tokens": "4",
            "x-mock-cache-write-tokens": "6",
            "x-mock-cache-write-1h-tokens": "2",
        },
    )
    assert message.id.startswith("msg_") and message.model == "claude-test"
    assert (message.content[0].text, message.stop_reason) == (DEFAULT_REPLY, "end_turn")
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (4, 4, 6)
    assert (usage.cache_creation.ephemeral_5m_input_tokens, usage.cache_creation.ephemeral_1h_input_tokens) == (4, 2)
    assert usage.output_tokens == 16
    cut = client.messages.create(**MESSAGE | {"max_tokens": 5})
    assert (cut.stop_reason, cut.usage.output_tokens, cut.content[0].text) == ("max_tokens", 5, reply_text(5))


def test_anthropic_stream(mock_url: str) -> None:
    client = anthropic_client(mock_url)
    with client.messages.stream(**MESSAGE, extra_headers={"x-mock-cached-tokens": "2"}) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == DEFAULT_REPLY
    assert (final.usage.input_tokens, final.usage.cache_read_input_tokens, final.usage.output_tokens) == (6, 2, 16)
    assert final.stop_reason == "end_turn"
    events = list(client.messages.create(**MESSAGE, stream=True))
    types = [event.type for event in events]
    assert types[:2] == ["message_start", "content_block_start"]
    assert types[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert types.count("content_block_delta") == 16
    assert events[-2].usage.output_tokens == 16


def test_anthropic_count_tokens_and_version_header(mock_url: str) -> None:
    client = anthropic_client(mock_url)
    counted = client.messages.count_tokens(model="claude-test", system=SYSTEM_TEXT, messages=[USER])
    assert counted.input_tokens == 14
    response = raw_post(mock_url, "/v1/messages", MESSAGE)
    assert response.status == 400
    assert json.loads(response.read()) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "anthropic-version: header is required"},
    }


# --- validation and errors -------------------------------------------------------------------


def test_invalid_requests_get_each_family_error_shape(mock_url: str) -> None:
    response = raw_post(mock_url, "/v1/chat/completions", b"{not json")
    error = json.loads(response.read())["error"]
    assert response.status == 400 and error["type"] == "invalid_request_error"
    assert "not valid JSON" in error["message"] and set(error) == {"message", "type", "param", "code"}
    response = raw_post(mock_url, "/v1/chat/completions", {"model": "gpt-test"})
    assert response.status == 400 and json.loads(response.read())["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        openai_client(mock_url).chat.completions.create(model="", messages=[USER])
    response = raw_post(mock_url, "/v1/messages", b'{"model": ', ANTHROPIC_HEADERS)
    assert response.status == 400 and json.loads(response.read())["error"]["type"] == "invalid_request_error"
    response = raw_post(mock_url, "/v1/messages", {"model": "claude-test", "messages": [USER]}, ANTHROPIC_HEADERS)
    assert response.status == 400 and "max_tokens" in json.loads(response.read())["error"]["message"]
    response = raw_post(mock_url, "/v1/chat/completions", CHAT, {"x-mock-fault": "gremlins"})
    assert response.status == 400 and "gremlins" in json.loads(response.read())["error"]["message"]


def test_require_key() -> None:
    with serve(MockSettings(require_key="right-key")) as url:
        with pytest.raises(openai.AuthenticationError):
            openai_client(url, api_key="wrong-key").chat.completions.create(**CHAT)
        assert openai_client(url, api_key="right-key").chat.completions.create(**CHAT).choices
        with pytest.raises(anthropic.AuthenticationError):
            anthropic_client(url, api_key="wrong-key").messages.create(**MESSAGE)
        assert anthropic_client(url, api_key="right-key").messages.create(**MESSAGE).content


# --- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "openai_status", "openai_code", "anthropic_status", "anthropic_type"),
    [
        ("rate_limit", 429, "rate_limit_exceeded", 429, "rate_limit_error"),
        ("server_error", 500, None, 500, "api_error"),
        ("overloaded", 503, None, 529, "overloaded_error"),
        ("context_length", 400, "context_length_exceeded", 400, "invalid_request_error"),
        ("auth", 401, "invalid_api_key", 401, "authentication_error"),
    ],
)
def test_error_faults_in_both_shapes(
    mock_url: str, fault: str, openai_status: int, openai_code: str | None, anthropic_status: int, anthropic_type: str
) -> None:
    response = raw_post(mock_url, "/v1/chat/completions", CHAT, {"x-mock-fault": fault})
    assert (response.status, json.loads(response.read())["error"]["code"]) == (openai_status, openai_code)
    response = raw_post(mock_url, "/v1/messages", MESSAGE, {"x-mock-fault": fault, **ANTHROPIC_HEADERS})
    body = json.loads(response.read())
    assert (response.status, body["type"], body["error"]["type"]) == (anthropic_status, "error", anthropic_type)
    if fault == "context_length":
        assert body["error"]["message"].startswith("prompt is too long")


def test_rate_limit_retry_headers(mock_url: str) -> None:
    response = raw_post(mock_url, "/v1/chat/completions", CHAT, {"x-mock-fault": "rate_limit"})
    assert (response.getheader("retry-after"), response.getheader("retry-after-ms")) == ("1", "1000")
    headers = {"x-mock-fault": "rate_limit", "x-mock-retry-after": "2.5"}
    response = raw_post(mock_url, "/v1/chat/completions", CHAT, headers)
    assert (response.getheader("retry-after"), response.getheader("retry-after-ms")) == ("3", "2500")


def test_fault_times_lets_the_sdk_retry_to_success(mock_url: str) -> None:
    client = openai.OpenAI(base_url=mock_url + "/v1", api_key="sk-test", max_retries=3)
    headers = {
        "x-mock-fault": "rate_limit",
        "x-mock-retry-after": "0.01",
        "x-mock-fault-times": "2",
        "x-mock-fault-key": "retry-test",
    }
    completion = client.chat.completions.create(**CHAT, extra_headers=headers)
    assert completion.choices[0].message.content == DEFAULT_REPLY
    attempts = [r for r in received(mock_url) if r["headers"].get("x-mock-fault-key") == "retry-test"]
    assert len(attempts) == 3


def test_fault_model_faults_only_the_named_models(mock_url: str) -> None:
    headers = {"x-mock-fault": "server_error", "x-mock-fault-model": "gpt-4o, other"}
    assert raw_post(mock_url, "/v1/chat/completions", {**CHAT, "model": "gpt-4o"}, headers).status == 500
    assert raw_post(mock_url, "/v1/chat/completions", {**CHAT, "model": "gpt-4o-mini"}, headers).status == 200


def test_stall_fault_goes_silent_mid_answer(mock_url: str) -> None:
    headers = {"x-mock-fault": "stall", "x-mock-timeout-s": "2"}
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    seen = []
    with (
        pytest.raises(httpx.ReadTimeout),
        httpx.stream("POST", mock_url + "/v1/chat/completions", json=body, headers=headers, timeout=0.5) as reply,
    ):
        seen.extend(reply.iter_text())
    assert "word0" in "".join(seen) and "[DONE]" not in "".join(seen)
    headers["x-mock-timeout-s"] = "0.1"
    with httpx.stream("POST", mock_url + "/v1/chat/completions", json=body, headers=headers, timeout=5) as reply:
        assert "[DONE]" in reply.read().decode()
    reply = httpx.post(mock_url + "/v1/chat/completions", json=CHAT, headers=headers, timeout=5)
    assert reply.json()["choices"][0]["message"]["content"] == DEFAULT_REPLY


def test_fault_rate_is_deterministic() -> None:
    with serve(MockSettings(fault="server_error", fault_rate=0.5)) as url:
        statuses = [raw_post(url, "/v1/chat/completions", CHAT).status for _ in range(6)]
    assert statuses == [200, 500] * 3


def test_timeout_fault_delays_the_answer(mock_url: str) -> None:
    with pytest.raises(openai.APITimeoutError):
        openai_client(mock_url, timeout=0.3).chat.completions.create(
            **CHAT, extra_headers={"x-mock-fault": "timeout", "x-mock-timeout-s": "2"}
        )
    started = time.monotonic()
    completion = openai_client(mock_url).chat.completions.create(
        **CHAT, extra_headers={"x-mock-fault": "timeout", "x-mock-timeout-s": "0.2"}
    )
    assert completion.choices and time.monotonic() - started >= 0.2


def test_malformed_fault_sends_non_json(mock_url: str) -> None:
    response = raw_post(mock_url, "/v1/chat/completions", CHAT, {"x-mock-fault": "malformed"})
    assert response.status == 200 and response.getheader("content-type") == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.read())
    response = raw_post(mock_url, "/v1/chat/completions", {**CHAT, "stream": True}, {"x-mock-fault": "malformed"})
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.read().decode().removeprefix("data: "))


def test_disconnect_fault(mock_url: str) -> None:
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        raw_post(mock_url, "/v1/chat/completions", CHAT, {"x-mock-fault": "disconnect"})
    for path, body, headers, final_events in [
        (
            "/v1/chat/completions",
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            {},
            ("[DONE]", '"choices":[]'),
        ),
        ("/v1/messages", {**MESSAGE, "stream": True}, ANTHROPIC_HEADERS, ("message_delta", "message_stop")),
    ]:
        response = raw_post(mock_url, path, body, {"x-mock-fault": "disconnect", **headers})
        assert response.status == 200
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        partial = cut.value.partial.decode()
        assert "word0" in partial and not any(final in partial for final in final_events)


def test_truncated_fault(mock_url: str) -> None:
    response = raw_post(mock_url, "/v1/chat/completions", CHAT, {"x-mock-fault": "truncated"})
    declared = int(response.getheader("content-length"))
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert len(cut.value.partial) == declared // 2
    with pytest.raises(openai.APIConnectionError):
        openai_client(mock_url).chat.completions.create(**CHAT, extra_headers={"x-mock-fault": "truncated"})
    response = raw_post(mock_url, "/v1/chat/completions", {**CHAT, "stream": True}, {"x-mock-fault": "truncated"})
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    assert cut.value.partial.startswith(b"data: {") and not cut.value.partial.endswith(b"\n\n")


# --- debug endpoints -------------------------------------------------------------------------


def test_request_log_shows_what_was_received(mock_url: str) -> None:
    host, port = mock_url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("DELETE", "/_mock/requests")
    assert connection.getresponse().read()
    openai_client(mock_url).chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}, extra_headers={"X-Custom-Trace": "kept"}
    ).close()
    (entry,) = received(mock_url)
    assert (entry["method"], entry["path"]) == ("POST", "/v1/chat/completions")
    assert entry["headers"]["x-custom-trace"] == "kept"
    assert entry["headers"]["authorization"] == "Bearer sk-test"
    assert entry["body"]["stream_options"] == {"include_usage": True}
    connection.request("GET", "/health")
    assert json.loads(connection.getresponse().read()) == {"status": "ok"}
