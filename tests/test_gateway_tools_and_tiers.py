"""Tool calls and images in chat and Messages requests are metered, and service tiers are recorded and priced.

Official SDKs through the gateway against the mock. Token counts are worked out by the mock's
documented rule (`meterline.mock_provider.tokens`): words of text, 3 per message, the word runs
of each tool definition's and tool call's JSON, 85 per image. Prices are genai-prices' published
ones: its service-tier variants for OpenAI; Anthropic publishes no Priority Tier token price, so
that tier pays the standard price unless the overrides file gives the negotiated one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# USD per million tokens
GPT_4O_MINI = {"input": 0.15, "output": 0.6}
GPT_4O_MINI_PRIORITY = {"input": 0.25, "output": 1.0}  # genai-prices openai/gpt-4o-mini service_tier=priority
GPT_5_MINI_FLEX = {"input": 0.125, "cached": 0.0125, "output": 1.0}  # service_tier=flex
HAIKU_4_5 = {"input": 1.0, "output": 5.0}
SONNET_4_5 = {"input": 3.0, "output": 15.0}

CHAT_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ANTHROPIC_WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
IMAGE_TOKENS = 85


def per_million(tokens: int, price: float) -> float:
    return tokens * price / 1_000_000


@pytest.fixture(scope="module")
def tier_gateway(make_gateway, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A gateway serving gpt-5-mini too, with a negotiated Priority Tier price for claude-haiku-4-5."""
    overrides = Path(tmp_path_factory.mktemp("tier-prices")) / "prices.yaml"
    overrides.write_text(
        """
variants:
  - {provider: anthropic, service_tier: priority, models: ["claude-haiku-4-5*"], percent_of_standard: 125}
"""
    )
    return make_gateway(
        extra_models="  - {name: gpt-5-mini, provider: openai}", pricing=f"pricing: {{overrides: {overrides}}}"
    )


def only_event(gateway, request_id: str) -> dict:  # type: ignore[no-untyped-def]
    events = gateway.events(request_id=request_id)
    assert len(events) == 1, events
    return events[0]


def test_chat_tool_calls_tool_definitions_and_images_are_counted(gateway) -> None:  # type: ignore[no-untyped-def]
    raw = gateway.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Is it raining in Paris?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "light rain, 14 degrees"},
        ],
        tools=[CHAT_WEATHER_TOOL],
        max_tokens=6,
    )
    completion = raw.parse()
    event = only_event(gateway, raw.headers["x-meterline-request-id"])
    # user: 3 + 5 words + an image; assistant: 3 + (name get_weather arguments city Paris);
    # tool: 3 + 4 words; the tool definition: type function function name get_weather description
    # Current weather in a city parameters type object properties city type string required city
    expected_input = (3 + 5 + IMAGE_TOKENS) + (3 + 5) + (3 + 4) + 20
    assert event["input_tokens"] == completion.usage.prompt_tokens == expected_input
    assert event["output_tokens"] == 6
    assert event["cost_usd"] == pytest.approx(
        per_million(expected_input, GPT_4O_MINI["input"]) + per_million(6, GPT_4O_MINI["output"]), rel=1e-9
    )


def test_messages_tool_use_tool_definitions_and_images_are_counted(gateway) -> None:  # type: ignore[no-untyped-def]
    raw = gateway.anthropic().messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=7,
        tools=[ANTHROPIC_WEATHER_TOOL],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Is it raining in Paris?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "light rain, 14 degrees"}],
            },
        ],
    )
    message = raw.parse()
    event = only_event(gateway, raw.headers["x-meterline-request-id"])
    # user: 3 + 5 words + an image; tool use: 3 + (get_weather city Paris); tool result: 3 + 4 words;
    # the tool definition: name get_weather description Current weather in a city input_schema type
    # object properties city type string required city
    expected_input = (3 + 5 + IMAGE_TOKENS) + (3 + 3) + (3 + 4) + 17
    assert event["input_tokens"] == message.usage.input_tokens == expected_input
    assert event["output_tokens"] == message.usage.output_tokens == 7
    assert event["cost_usd"] == pytest.approx(
        per_million(expected_input, HAIKU_4_5["input"]) + per_million(7, HAIKU_4_5["output"]), rel=1e-9
    )


def test_openai_service_tiers_are_recorded_and_priced(tier_gateway) -> None:  # type: ignore[no-untyped-def]
    client = tier_gateway.openai()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "priority please"}],
        service_tier="priority",
        max_tokens=10,
    )
    assert raw.parse().service_tier == "priority"
    event = only_event(tier_gateway, raw.headers["x-meterline-request-id"])
    assert event["service_tier"] == "priority"
    # 3 + 2 input tokens, 10 output, at the priority rates
    priority = per_million(5, GPT_4O_MINI_PRIORITY["input"]) + per_million(10, GPT_4O_MINI_PRIORITY["output"])
    assert event["cost_usd"] == pytest.approx(priority, rel=1e-9)

    raw = client.responses.with_raw_response.create(
        model="gpt-5-mini",
        input="a flex request for later",
        service_tier="flex",
        extra_headers={"x-mock-output-tokens": "12", "x-mock-cached-tokens": "4"},
    )
    assert raw.parse().service_tier == "flex"
    event = only_event(tier_gateway, raw.headers["x-meterline-request-id"])
    assert (event["service_tier"], event["input_tokens"], event["cache_read_tokens"]) == ("flex", 3 + 5, 4)
    flex = (
        per_million(8 - 4, GPT_5_MINI_FLEX["input"])
        + per_million(4, GPT_5_MINI_FLEX["cached"])
        + per_million(12, GPT_5_MINI_FLEX["output"])
    )
    assert event["cost_usd"] == pytest.approx(flex, rel=1e-9)

    # "auto" is served in the project's tier, which the response reports: that is what is recorded
    with client.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "whatever tier"}],
        service_tier="auto",
        stream=True,
        max_tokens=3,
        extra_headers={"x-mock-service-tier": "default"},
    ) as streamed:
        request_id = streamed.headers["x-meterline-request-id"]
        list(streamed.parse())
    event = only_event(tier_gateway, request_id)
    assert event["service_tier"] == "default"
    assert event["cost_usd"] == pytest.approx(
        per_million(5, GPT_4O_MINI["input"]) + per_million(3, GPT_4O_MINI["output"]), rel=1e-9
    )


def test_anthropic_service_tiers_are_recorded_and_priced(tier_gateway) -> None:  # type: ignore[no-untyped-def]
    client = tier_gateway.anthropic()
    question = [{"role": "user", "content": "Which tier served this?"}]  # 3 + 4 input tokens
    raw = client.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=8, messages=question, service_tier="standard_only"
    )
    assert raw.parse().usage.service_tier == "standard"
    event = only_event(tier_gateway, raw.headers["x-meterline-request-id"])
    assert event["service_tier"] == "standard"
    standard = per_million(7, HAIKU_4_5["input"]) + per_million(8, HAIKU_4_5["output"])
    assert event["cost_usd"] == pytest.approx(standard, rel=1e-9)

    # served from Priority Tier capacity: the overrides file's negotiated price, 125% of standard
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=8,
        messages=question,
        service_tier="auto",
        extra_headers={"x-mock-service-tier": "priority", "x-meterline-feature": "priority-stream"},
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.service_tier == "priority"
    (event,) = tier_gateway.events(feature="priority-stream")
    assert (event["service_tier"], event["streaming"]) == ("priority", True)
    assert event["cost_usd"] == pytest.approx(standard * 1.25, rel=1e-9)

    # no price for Sonnet's Priority Tier anywhere: the standard price
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-5",
        max_tokens=8,
        messages=question,
        extra_headers={"x-mock-service-tier": "priority"},
    )
    event = only_event(tier_gateway, raw.headers["x-meterline-request-id"])
    assert event["service_tier"] == "priority"
    assert event["cost_usd"] == pytest.approx(
        per_million(7, SONNET_4_5["input"]) + per_million(8, SONNET_4_5["output"]), rel=1e-9
    )
