"""Unit checks of the gateway's pure pieces: SSE splitting, usage normalisation, attribution, config."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from meterline.config import ConfigError, interpolate_env, parse_config
from meterline.gateway.attribution import AttributionError, attribution_from_headers
from meterline.gateway.sse import SSESplitter
from meterline.providers.anthropic import MessagesStreamMeter, usage_from_anthropic
from meterline.providers.base import SSEEvent, classify_upstream_error
from meterline.providers.openai import ChatStreamMeter, usage_from_openai


def sse(data: dict | str, event: str | None = None) -> SSEEvent:
    text = data if isinstance(data, str) else orjson.dumps(data).decode()
    raw = (f"event: {event}\n" if event else "") + f"data: {text}\n\n"
    return SSEEvent(raw=raw.encode(), event=event, data=text)


def test_sse_splitter_handles_split_chunks_and_crlf() -> None:
    splitter = SSESplitter()
    assert splitter.feed(b'event: a\r\ndata: {"x"') == []
    events = splitter.feed(b": 1}\r\n\r\n: keep-alive\n\ndata: [DONE]\n\n")
    assert [(e.event, e.data) for e in events] == [("a", '{"x": 1}'), (None, ""), (None, "[DONE]")]
    assert splitter.feed(b"data: partial") == [] and splitter.leftover == b"data: partial"


def test_anthropic_usage_adds_cache_reads_and_writes_to_input() -> None:
    usage = usage_from_anthropic(
        {
            "input_tokens": 10,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
            "cache_creation": {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 30},
            "output_tokens": 7,
        }
    )
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens) == (160, 100, 50)
    assert (usage.cache_write_1h_tokens, usage.output_tokens) == (30, 7)


def test_anthropic_stream_takes_latest_cumulative_counts_never_sums() -> None:
    meter = MessagesStreamMeter()
    meter.feed(
        sse(
            {
                "type": "message_start",
                "message": {"model": "claude-x", "usage": {"input_tokens": 25, "output_tokens": 1}},
            }
        )
    )
    meter.feed(sse({"type": "content_block_delta", "delta": {"type": "text_delta", "text": "hi"}}))
    meter.feed(sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 15}}))
    meter.feed(sse({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 40}}))
    meter.feed(sse({"type": "message_stop"}))
    state = meter.state
    assert state.finished and state.usage is not None
    assert (state.usage.input_tokens, state.usage.output_tokens) == (25, 40)
    assert state.finish_reason == "end_turn" and state.response_model == "claude-x"


def test_anthropic_stream_with_input_only_in_the_delta() -> None:
    meter = MessagesStreamMeter()
    meter.feed(sse({"type": "message_start", "message": {"model": "m", "usage": {}}}))
    meter.feed(sse({"type": "message_delta", "delta": {}, "usage": {"input_tokens": 12, "output_tokens": 9}}))
    assert meter.state.usage is not None
    assert (meter.state.usage.input_tokens, meter.state.usage.output_tokens) == (12, 9)


def test_openai_stream_strips_the_usage_it_asked_for() -> None:
    meter = ChatStreamMeter("chat", injected_usage_request=True)
    chunk = {"id": "c", "model": "gpt", "choices": [{"index": 0, "delta": {"content": "hey"}}], "usage": None}
    forwarded = meter.feed(sse(chunk))
    assert forwarded is not None and b"usage" not in forwarded and b'"hey"' in forwarded
    usage_chunk = {"id": "c", "model": "gpt", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    assert meter.feed(sse(usage_chunk)) is None
    assert meter.feed(sse("[DONE]")) == b"data: [DONE]\n\n" and meter.state.finished
    assert meter.state.usage is not None and meter.state.usage.input_tokens == 3


def test_openai_usage_ignores_garbage_values() -> None:
    usage = usage_from_openai("chat", {"prompt_tokens": "12", "completion_tokens": -1, "prompt_tokens_details": None})
    assert usage is not None and (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens) == (0, 0, 0)
    assert usage_from_openai("chat", None) is None


@pytest.mark.parametrize(
    ("status", "code", "message", "expected"),
    [
        (429, None, "", "rate_limit"),
        (400, "context_length_exceeded", "", "context_length"),
        (400, "invalid_request_error", "prompt is too long: 210000 tokens", "context_length"),
        (400, "content_filter", "", "content_filter"),
        (529, "overloaded_error", "", "server_error"),
        (403, None, "", "auth"),
        (422, None, "bad", "bad_request"),
    ],
)
def test_upstream_error_classes(status: int, code: str | None, message: str, expected: str) -> None:
    assert classify_upstream_error(status, code, message) == expected


def test_attribution_validation() -> None:
    attribution = attribution_from_headers({"X-Meterline-Feature": " search ", "X-Meterline-Property-Tier": "gold"})
    assert attribution.feature == "search" and attribution.properties == {"tier": "gold"}
    with pytest.raises(AttributionError, match="x-meterline-agent-step"):
        attribution_from_headers({"x-meterline-agent-step": "-1"})
    with pytest.raises(AttributionError, match="traceparent"):
        attribution_from_headers({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"})
    with pytest.raises(AttributionError, match="control characters"):
        attribution_from_headers({"x-meterline-user": "a\x00b"})


def test_config_interpolation_and_defaults(tmp_path: Path) -> None:
    assert interpolate_env("k: ${A}/${B:-fallback}", {"A": "x"}) == "k: x/fallback"
    with pytest.raises(ConfigError, match="MISSING"):
        interpolate_env("k: ${MISSING}", {})
    providers = "providers:\n  o: {kind: openai, base_url: 'http://h/v1/'}\n"
    config = parse_config(providers + "models:\n  - {name: a, provider: o, upstream_model: b}\n", tmp_path)
    assert config.providers["o"].base_url == "http://h/v1"
    assert config.model("a").upstream_name == "b"  # type: ignore[union-attr]
    assert config.store.path == tmp_path / "meterline-data/meterline.duckdb"
    with pytest.raises(ConfigError, match="listed twice"):
        parse_config(providers + "models:\n  - {name: a, provider: o}\n  - {name: a, provider: o}\n", tmp_path)
