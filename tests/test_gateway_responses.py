"""The OpenAI Responses API through the gateway with the official SDK: tools, images, reasoning, how streams end.

Each call leaves one event whose tokens are the usage the mock reported, normalised, and whose
cost is worked out here by hand from gpt-4o-mini's published prices. The mock counts tokens by
its documented rule (`meterline.mock_provider.tokens`): words of text, 3 per message, the word
runs of each tool definition's JSON, 85 per image.
"""

from __future__ import annotations

import pytest

# genai-prices openai/gpt-4o-mini, USD per million tokens
GPT_4O_MINI = {"input": 0.15, "cached": 0.075, "output": 0.6}

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
# its JSON's word runs: type function name get_weather description Current weather in a city parameters
# type object properties city type string required city
WEATHER_TOOL_TOKENS = 19
PHOTO_QUESTION = [
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is the weather where this photo was taken?"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="},
        ],
    }
]
PHOTO_QUESTION_TOKENS = 3 + 9 + 85  # message overhead, nine words, one image


def only_event(gateway, request_id: str) -> dict:  # type: ignore[no-untyped-def]
    events = gateway.events(request_id=request_id)
    assert len(events) == 1, events
    return events[0]


def cost(input_tokens: int, output_tokens: int, cached: int = 0) -> float:
    return (
        (input_tokens - cached) * GPT_4O_MINI["input"]
        + cached * GPT_4O_MINI["cached"]
        + output_tokens * GPT_4O_MINI["output"]
    ) / 1_000_000


def test_a_tool_call_with_an_image_and_reasoning(gateway) -> None:  # type: ignore[no-untyped-def]
    raw = gateway.openai().responses.with_raw_response.create(
        model="gpt-4o-mini",
        input=PHOTO_QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        reasoning={"effort": "low"},
        extra_headers={"x-mock-output-tokens": "3", "x-mock-reasoning-tokens": "5", "x-mock-cached-tokens": "16"},
    )
    response = raw.parse()
    reasoning, call = response.output
    assert (reasoning.type, call.type, call.name) == ("reasoning", "function_call", "get_weather")
    assert call.arguments == '{"city":"word0 word1 word2"}'
    event = only_event(gateway, raw.headers["x-meterline-request-id"])
    assert event["input_tokens"] == response.usage.input_tokens == PHOTO_QUESTION_TOKENS + WEATHER_TOOL_TOKENS
    assert (event["output_tokens"], event["reasoning_tokens"], event["cache_read_tokens"]) == (3 + 5, 5, 16)
    assert (event["response_id"], event["finish_reason"], event["service_tier"]) == (
        response.id,
        "completed",
        "default",
    )
    # 100 uncached input tokens at $0.15, 16 cached at $0.075, 8 output at $0.60 per million
    assert event["cost_usd"] == pytest.approx(cost(116, 8, cached=16), rel=1e-9)
    assert event["cost_usd"] == pytest.approx(21.0 / 1e6, rel=1e-9)
    assert float(raw.headers["x-meterline-cost-usd"]) == pytest.approx(21.0 / 1e6, rel=1e-6)


def test_the_stream_helper_with_a_tool_call(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    with client.responses.with_streaming_response.create(
        model="gpt-4o-mini",
        input="Weather in Paris?",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        stream=True,
        extra_headers={"x-mock-output-tokens": "4", "x-meterline-feature": "weather"},
    ) as raw:
        request_id = raw.headers["x-meterline-request-id"]
        kinds = [event.type for event in raw.parse()]
    assert kinds[-1] == "response.completed" and "response.function_call_arguments.delta" in kinds
    event = only_event(gateway, request_id)
    # "Weather in Paris?": 3 + 3 tokens; the answer: 4 tokens
    assert (event["input_tokens"], event["output_tokens"], event["streaming"]) == (6 + WEATHER_TOOL_TOKENS, 4, True)
    assert event["cost_usd"] == pytest.approx(cost(25, 4), rel=1e-9)

    with client.responses.stream(
        model="gpt-4o-mini",
        input="Tell me about reasoning",
        extra_headers={"x-mock-output-tokens": "6", "x-mock-reasoning-tokens": "10", "x-meterline-feature": "helper"},
    ) as stream:
        text = "".join(event.delta for event in stream if event.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert text == final.output_text == "word0 word1 word2 word3 word4 word5"
    (event,) = gateway.events(feature="helper")
    assert (event["output_tokens"], event["reasoning_tokens"]) == (final.usage.output_tokens, 10) == (16, 10)
    assert event["input_tokens"] == final.usage.input_tokens == 3 + 4
    assert (event["response_id"], event["usage_source"]) == (final.id, "provider")
    assert event["cost_usd"] == pytest.approx(cost(7, 16), rel=1e-9)


def test_an_incomplete_stream_is_priced_from_its_final_usage(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.openai().responses.with_streaming_response.create(
        model="gpt-4o-mini", input="Write a long essay", max_output_tokens=5, stream=True
    ) as raw:
        request_id = raw.headers["x-meterline-request-id"]
        events = list(raw.parse())
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    event = only_event(gateway, request_id)
    assert (event["finish_reason"], event["output_tokens"], event["usage_source"]) == (
        "max_output_tokens",
        5,
        "provider",
    )
    assert event["cost_usd"] == pytest.approx(cost(3 + 4, 5), rel=1e-9)


def test_a_stream_that_fails_is_recorded_as_failed_with_estimated_usage(gateway) -> None:  # type: ignore[no-untyped-def]
    with gateway.openai().responses.with_streaming_response.create(
        model="gpt-4o-mini",
        input="this stream breaks",
        stream=True,
        extra_headers={"x-mock-fault": "stream_error", "x-mock-output-tokens": "8"},
    ) as raw:
        request_id = raw.headers["x-meterline-request-id"]
        events = list(raw.parse())
    assert [event.type for event in events][-2:] == ["error", "response.failed"]
    assert events[-1].response.error.code == "server_error"
    event = only_event(gateway, request_id)
    assert (event["status_code"], event["error_class"]) == (200, "server_error")
    assert event["error_message"] == "The server had an error while processing your request (mock fault)."
    # no usage came: the words streamed before the failure, and the prompt, are estimated
    assert event["usage_source"] == "estimated"
    assert event["output_tokens"] > 0 and event["input_tokens"] > 0
