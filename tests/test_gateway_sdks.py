"""The official openai and anthropic SDKs work unmodified through the gateway, and each call leaves one priced event."""

from __future__ import annotations

import asyncio

import pytest

# Published prices, USD per million tokens (the bundled genai-prices snapshot).
GPT_4O_MINI = {"input": 0.15, "cached": 0.075, "output": 0.6}
EMBEDDING_3_SMALL = {"input": 0.02}
SONNET_4_5 = {"input": 3.0, "write_5m": 3.75, "write_1h": 6.0, "read": 0.3, "output": 15.0}


def per_million(tokens: int, price: float) -> float:
    return tokens * price / 1_000_000


def only_event(gateway, request_id: str) -> dict:  # type: ignore[no-untyped-def]
    events = gateway.events(request_id=request_id)
    assert len(events) == 1, events
    return events[0]


def test_chat_non_streaming(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "How much does this cost?"}],
        extra_headers={"x-mock-cached-tokens": "2", "x-mock-reasoning-tokens": "3", "x-meterline-feature": "faq"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    request_id = raw.headers["x-meterline-request-id"]
    event = only_event(gateway, request_id)
    usage = completion.usage
    assert event["input_tokens"] == usage.prompt_tokens
    assert event["output_tokens"] == usage.completion_tokens
    assert event["cache_read_tokens"] == 2
    assert event["reasoning_tokens"] == 3
    assert event["usage_source"] == "provider"
    assert (event["operation"], event["streaming"], event["provider"]) == ("chat", False, "openai")
    assert event["feature"] == "faq"
    expected = (
        per_million(usage.prompt_tokens - 2, GPT_4O_MINI["input"])
        + per_million(2, GPT_4O_MINI["cached"])
        + per_million(usage.completion_tokens, GPT_4O_MINI["output"])
    )
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert float(raw.headers["x-meterline-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    assert event["price_version"]


def test_chat_stream_without_include_usage_hides_the_usage_chunk(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream please"}], stream=True
    ) as raw:
        request_id = raw.headers["x-meterline-request-id"]
        chunks = list(raw.parse())
    assert chunks and all(chunk.usage is None for chunk in chunks)
    assert all(chunk.choices for chunk in chunks)
    assert all("usage" not in chunk.model_dump(exclude_unset=True) for chunk in chunks)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    event = only_event(gateway, request_id)
    assert event["streaming"] is True
    assert event["usage_source"] == "provider"
    assert event["output_tokens"] == len(text.split())
    assert event["ttft_ms"] is not None and event["ttft_ms"] <= event["duration_ms"]
    assert event["finish_reason"] == "stop"


def test_chat_stream_with_include_usage_keeps_it(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream with usage"}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-meterline-user": "alice"},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    usage = chunks[-1].usage
    events = gateway.events(user="alice")
    assert any(
        e["input_tokens"] == usage.prompt_tokens and e["output_tokens"] == usage.completion_tokens for e in events
    )


def test_async_client_concurrent_calls(gateway) -> None:  # type: ignore[no-untyped-def]
    async def run() -> list[str]:
        client = gateway.async_openai()
        replies = await asyncio.gather(
            *(
                client.chat.completions.with_raw_response.create(
                    model="fast", messages=[{"role": "user", "content": f"question {index}"}]
                )
                for index in range(10)
            )
        )
        await client.close()
        return [reply.headers["x-meterline-request-id"] for reply in replies]

    request_ids = asyncio.run(run())
    assert len(set(request_ids)) == 10
    for request_id in request_ids:
        event = only_event(gateway, request_id)
        assert event["requested_model"] == "fast"
        assert event["upstream_model"] == "gpt-4o-mini"
        assert event["cost_usd"] > 0


def test_async_client_stream(gateway) -> None:  # type: ignore[no-untyped-def]
    async def run() -> tuple[str, str]:
        client = gateway.async_openai()
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "async stream"}],
            stream=True,
            extra_headers={"x-meterline-session": "async-stream-session"},
        )
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in raw.parse()])
        await client.close()
        return raw.headers["x-meterline-request-id"], text

    request_id, text = asyncio.run(run())
    event = only_event(gateway, request_id)
    assert event["session_id"] == "async-stream-session"
    assert event["output_tokens"] == len(text.split())


def test_embeddings(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["first document", "second document here"]
    )
    result = raw.parse()
    assert len(result.data) == 2 and len(result.data[0].embedding) > 0
    event = only_event(gateway, raw.headers["x-meterline-request-id"])
    assert event["operation"] == "embeddings"
    assert event["input_tokens"] == result.usage.prompt_tokens
    assert event["output_tokens"] == 0
    assert event["cost_usd"] == pytest.approx(per_million(result.usage.prompt_tokens, EMBEDDING_3_SMALL["input"]))


def test_responses_api(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    raw = client.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Write one line.", extra_headers={"x-mock-cached-tokens": "1"}
    )
    response = raw.parse()
    assert response.output_text
    event = only_event(gateway, raw.headers["x-meterline-request-id"])
    assert event["operation"] == "responses"
    assert event["input_tokens"] == response.usage.input_tokens
    assert event["output_tokens"] == response.usage.output_tokens
    assert event["cache_read_tokens"] == 1


def test_responses_api_stream(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    with client.responses.with_streaming_response.create(
        model="gpt-4o-mini", input="stream a response", stream=True
    ) as raw:
        request_id = raw.headers["x-meterline-request-id"]
        events = list(raw.parse())
    completed = [e for e in events if e.type == "response.completed"]
    assert len(completed) == 1
    event = only_event(gateway, request_id)
    assert event["streaming"] is True
    assert event["output_tokens"] == completed[0].response.usage.output_tokens
    assert event["usage_source"] == "provider"


def test_legacy_completions(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    raw = client.completions.with_raw_response.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=5)
    completion = raw.parse()
    event = only_event(gateway, raw.headers["x-meterline-request-id"])
    assert event["operation"] == "completion"
    assert event["output_tokens"] == completion.usage.completion_tokens == 5
    assert event["finish_reason"] == "length"


def test_anthropic_messages_with_cache_tokens(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.anthropic()
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=64,
        system="You are terse.",
        messages=[{"role": "user", "content": "Summarise the plot of Hamlet."}],
        extra_headers={
            "x-mock-cached-tokens": "40",
            "x-mock-cache-write-tokens": "30",
            "x-mock-cache-write-1h-tokens": "10",
            "x-meterline-team": "literature",
        },
    )
    message = raw.parse()
    assert message.content[0].text
    event = only_event(gateway, raw.headers["x-meterline-request-id"])
    usage = message.usage
    assert usage.cache_read_input_tokens == 40 and usage.cache_creation_input_tokens == 30
    assert event["input_tokens"] == usage.input_tokens + 40 + 30
    assert (event["cache_read_tokens"], event["cache_write_tokens"], event["cache_write_1h_tokens"]) == (40, 30, 10)
    assert event["output_tokens"] == usage.output_tokens
    assert event["team"] == "literature"
    expected = (
        per_million(usage.input_tokens, SONNET_4_5["input"])
        + per_million(20, SONNET_4_5["write_5m"])
        + per_million(10, SONNET_4_5["write_1h"])
        + per_million(40, SONNET_4_5["read"])
        + per_million(usage.output_tokens, SONNET_4_5["output"])
    )
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_anthropic_messages_stream(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.anthropic()
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=[{"role": "user", "content": "Tell me a story"}],
        extra_headers={"x-meterline-feature": "stories", "x-mock-cached-tokens": "5"},
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    (event,) = gateway.events(feature="stories")
    assert event["streaming"] is True
    assert event["operation"] == "messages"
    assert event["output_tokens"] == final.usage.output_tokens
    assert event["input_tokens"] == final.usage.input_tokens + 5
    assert event["cache_read_tokens"] == 5
    assert event["finish_reason"] == "end_turn"
    assert event["response_model"] == "claude-haiku-4-5"


def test_anthropic_count_tokens_passes_through(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.anthropic()
    counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens > 0


def test_models_list_in_both_shapes(gateway) -> None:  # type: ignore[no-untyped-def]
    openai_ids = {model.id for model in gateway.openai().models.list()}
    assert {"gpt-4o-mini", "fast", "claude-sonnet-4-5"} <= openai_ids
    anthropic_ids = {model.id for model in gateway.anthropic().models.list()}
    assert anthropic_ids == openai_ids
