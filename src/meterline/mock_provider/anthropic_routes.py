"""The Anthropic wire format: `POST /v1/messages`, `/v1/messages/count_tokens`, and errors.

Like the real API, requests need the `anthropic-version` header, and `/v1/messages` needs
`model`, `messages` and `max_tokens`. `input_tokens` excludes cache reads and writes, which
are reported as `cache_read_input_tokens` and `cache_creation_input_tokens` (split into
5-minute and 1-hour parts in `cache_creation`). A stream sends message_start (input usage,
output_tokens 1), content_block_start, ping, text deltas, content_block_stop, message_delta
(stop reason and cumulative usage) and message_stop. count_tokens reports the full prompt
as counted (`tokens.py`: text, tool definitions, tool-use blocks, images), ignoring cache
headers. `usage.service_tier` is `standard` for `service_tier: standard_only`; for `auto` (the
default) it is `x-mock-service-tier` if sent (`priority`, as for an account with Priority Tier
capacity), else `standard`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meterline.mock_provider.delivery import JsonAnswer, StreamAnswer, json_response
from meterline.mock_provider.errors import (
    AUTHENTICATION,
    CONTEXT_LENGTH,
    INVALID_REQUEST,
    NOT_FOUND,
    OVERLOADED,
    RATE_LIMIT,
    SERVER,
    ApiError,
)
from meterline.mock_provider.pipeline import Answer, Call, Family
from meterline.mock_provider.reply import Reply, new_id
from meterline.mock_provider.sse import typed_event
from meterline.mock_provider.tokens import (
    MESSAGE_OVERHEAD,
    content_tokens,
    messages_tokens,
    reply_chunks,
    reply_text,
    tools_tokens,
)

# kind -> (status, error type, standard message)
_ERRORS: dict[str, tuple[int, str, str]] = {
    INVALID_REQUEST: (400, "invalid_request_error", "Invalid request."),
    NOT_FOUND: (404, "not_found_error", "Not found."),
    AUTHENTICATION: (401, "authentication_error", "invalid x-api-key"),
    RATE_LIMIT: (429, "rate_limit_error", "Number of requests has exceeded your rate limit (mock fault)."),
    SERVER: (500, "api_error", "Internal server error (mock fault)."),
    OVERLOADED: (529, "overloaded_error", "Overloaded (mock fault)."),
    CONTEXT_LENGTH: (400, "invalid_request_error", "prompt is too long: 200001 tokens > 200000 maximum"),
}

SERVICE_TIERS = ("auto", "standard_only")

# message_delta repeats these, cumulatively, as the real API does
_CUMULATIVE_USAGE_KEYS = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")


def render_error(error: ApiError) -> web.Response:
    """`{"type": "error", "error": {"type", "message"}}` with the kind's status."""
    status, error_type, message = _ERRORS[error.kind]
    body = {"type": "error", "error": {"type": error_type, "message": error.message or message}}
    return json_response(body, status, error.headers)


ANTHROPIC = Family(render_error=render_error, request_id_header="request-id", required_header="anthropic-version")


def messages(call: Call) -> Answer:
    body = call.body
    model = _require(body, "model", str)
    if body.get("max_tokens") is None:
        raise ApiError(INVALID_REQUEST, "max_tokens: Field required")
    reply = call.plan("max_tokens")
    usage = _usage(reply, reply.prompt_total(_prompt_tokens(body)), _served_tier(call))
    stop_reason = "max_tokens" if reply.cut else "end_turn"
    message = {
        "id": new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": reply_text(reply.output_tokens)}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage,
    }
    if not body.get("stream"):
        return JsonAnswer(message, reply.output_tokens)
    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "usage": {**usage, "output_tokens": min(1, reply.output_tokens)},
    }
    final_usage = {key: usage[key] for key in _CUMULATIVE_USAGE_KEYS}
    events = [
        (typed_event(payload), 0)
        for payload in (
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            {"type": "ping"},
        )
    ]
    for text, tokens in reply_chunks(reply.output_tokens, call.settings.stream_chunk_tokens):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        events.append((typed_event(delta), tokens))
    events += [
        (typed_event(payload), 0)
        for payload in (
            {"type": "content_block_stop", "index": 0},
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": final_usage,
            },
            {"type": "message_stop"},
        )
    ]
    error = {"type": "error", "error": {"type": "overloaded_error", "message": _ERRORS[OVERLOADED][2]}}
    return StreamAnswer(events, lambda sent: typed_event(error))


def count_tokens(call: Call) -> Answer:
    _require(call.body, "model", str)
    return JsonAnswer({"input_tokens": _prompt_tokens(call.body)})


def _served_tier(call: Call) -> str:
    asked = call.body.get("service_tier", "auto")
    if asked not in SERVICE_TIERS:
        raise ApiError(INVALID_REQUEST, f"service_tier: Input should be {' or '.join(map(repr, SERVICE_TIERS))}")
    return "standard" if asked == "standard_only" else call.headers.get("x-mock-service-tier", "standard")


def _prompt_tokens(body: dict[str, Any]) -> int:
    """Messages, the system prompt (a string or text blocks) and tool definitions, as counted by `tokens.py`."""
    tokens = messages_tokens(_require(body, "messages", list)) + tools_tokens(body)
    system = body.get("system")
    if system:
        tokens += MESSAGE_OVERHEAD + content_tokens(system)
    return tokens


def _usage(reply: Reply, prompt_tokens: int, service_tier: str) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens - reply.cached_tokens - reply.cache_write_tokens,
        "cache_creation_input_tokens": reply.cache_write_tokens,
        "cache_read_input_tokens": reply.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": reply.cache_write_tokens - reply.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": reply.cache_write_1h_tokens,
        },
        "output_tokens": reply.output_tokens,
        "service_tier": service_tier,
    }


def _require(body: dict[str, Any], field: str, kind: type) -> Any:
    value = body.get(field)
    if value is None:
        raise ApiError(INVALID_REQUEST, f"{field}: Field required")
    if not isinstance(value, kind):
        raise ApiError(INVALID_REQUEST, f"{field}: Input should be a valid {'string' if kind is str else 'list'}")
    return value
