"""The Anthropic Messages wire format (`POST /v1/messages`, streaming and not).

Anthropic reports `input_tokens` without cache reads and writes (`cache_read_input_tokens`,
`cache_creation_input_tokens`, split by TTL in `cache_creation`); meterline adds them so
`input_tokens` counts every input token. In streams, `message_start` carries the input side
and `message_delta` carries cumulative counts: the latest value wins, deltas are never added
(some compatible servers send the input counts only in `message_delta`). The tier that served
the call is `usage.service_tier` (`standard`, `priority` or `batch`).
"""

from __future__ import annotations

from typing import Any

import orjson

from meterline.providers.base import (
    ApiError,
    Dialect,
    Endpoint,
    ProviderFamily,
    SSEEvent,
    StreamMeter,
    Usage,
    int_field,
    text_field,
)
from meterline.providers.fields import FieldRule, check_fields, positive_int, text_of_content
from meterline.providers.shape import RequestShape, shape_of

_RULES = {
    "model": FieldRule((str,)),
    "messages": FieldRule((list,), required=True),
    "max_tokens": FieldRule((int,), required=True),
    "system": FieldRule((str, list)),
    "stream": FieldRule((bool,)),
    "temperature": FieldRule((float,)),
    "top_p": FieldRule((float,)),
    "top_k": FieldRule((int,)),
    "metadata": FieldRule((dict,)),
    "tools": FieldRule((list,)),
    "tool_choice": FieldRule((dict,)),
    "service_tier": FieldRule((str,)),
}

_COUNT_TOKENS_RULES = {name: rule for name, rule in _RULES.items() if name != "max_tokens"}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}

_INPUT_FIELDS = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


class AnthropicDialect(Dialect):
    name = "anthropic"
    endpoints = (Endpoint("/v1/messages", "messages"), Endpoint("/v1/messages/count_tokens", "count_tokens"))

    def validate(self, operation: str, body: dict[str, Any]) -> None:
        check_fields(body, _COUNT_TOKENS_RULES if operation == "count_tokens" else _RULES)

    def error_body(self, error: ApiError) -> dict[str, Any]:
        error_type = _ERROR_TYPES.get(error.status, "api_error")
        return {"type": "error", "error": {"type": error_type, "message": error.message}}

    def stream_error_event(self, error: ApiError) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(self.error_body(error)) + b"\n\n"

    def request_text(self, operation: str, body: dict[str, Any]) -> str:
        parts = [text_of_content(body.get("system"))]
        parts.extend(text_of_content(m.get("content")) for m in body["messages"] if isinstance(m, dict))
        return "\n".join(parts)

    def request_user(self, body: dict[str, Any]) -> str | None:
        metadata = body.get("metadata")
        user = metadata.get("user_id") if isinstance(metadata, dict) else None
        return user if isinstance(user, str) and user else None

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        return positive_int(body, "max_tokens")

    def request_shape(self, operation: str, body: dict[str, Any]) -> RequestShape:
        """Instructions: `system` (a string or text blocks); `stream`, `metadata` (the end user's id) and
        `service_tier` do not change the answer."""
        system = body.get("system")
        return shape_of(
            body,
            answer_neutral=("stream", "metadata", "service_tier"),
            instructions=[system] if system else [],
            tools=body.get("tools"),
            n_messages=len(body["messages"]),
            max_tokens=self.max_output_tokens(body),
        )


class _UsageFields:
    """Anthropic usage counters as last reported; a later report of a field replaces the earlier one."""

    def __init__(self) -> None:
        self.values: dict[str, int] = {}

    def update(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for name in (*_INPUT_FIELDS, "output_tokens"):
            if isinstance(usage.get(name), int):
                self.values[name] = int_field(usage, name)
        creation = usage.get("cache_creation")
        if isinstance(creation, dict) and isinstance(creation.get("ephemeral_1h_input_tokens"), int):
            self.values["cache_write_1h"] = int_field(creation, "ephemeral_1h_input_tokens")

    def normalised(self) -> Usage | None:
        if not self.values:
            return None
        get = self.values.get
        return Usage(
            input_tokens=sum(get(name, 0) for name in _INPUT_FIELDS),
            output_tokens=get("output_tokens", 0),
            cache_read_tokens=get("cache_read_input_tokens", 0),
            cache_write_tokens=get("cache_creation_input_tokens", 0),
            cache_write_1h_tokens=get("cache_write_1h", 0),
        )


def usage_from_anthropic(usage: Any) -> Usage | None:
    fields = _UsageFields()
    fields.update(usage)
    return fields.normalised()


class AnthropicProvider(ProviderFamily):
    kind = "anthropic"
    pricing_id_default = "anthropic"
    dialect = "anthropic"
    operations = frozenset({"messages", "count_tokens"})
    default_headers = {"anthropic-version": "2023-06-01"}

    def path(self, operation: str) -> str:
        return "/v1/messages/count_tokens" if operation == "count_tokens" else "/v1/messages"

    def auth_headers(self) -> dict[str, str]:
        return {"x-api-key": self.config.api_key} if self.config.api_key else {}

    def usage_from_response(self, operation: str, payload: dict[str, Any]) -> Usage | None:
        return usage_from_anthropic(payload.get("usage"))

    def response_text(self, operation: str, payload: dict[str, Any]) -> str:
        return text_of_content(payload.get("content"))

    def finish_reason(self, operation: str, payload: dict[str, Any]) -> str | None:
        reason = payload.get("stop_reason")
        return str(reason) if reason else None

    def service_tier(self, operation: str, payload: dict[str, Any]) -> str | None:
        return text_field(payload, "usage", "service_tier")

    def stream_meter(self, operation: str, injected_usage_request: bool) -> StreamMeter:
        return MessagesStreamMeter()


class MessagesStreamMeter(StreamMeter):
    """message_start → content blocks → message_delta (cumulative usage) → message_stop."""

    def __init__(self) -> None:
        super().__init__()
        self.usage_fields = _UsageFields()

    def feed(self, event: SSEEvent) -> bytes | None:
        payload = self.json_object(event)
        if payload is None:
            return event.raw
        kind = payload.get("type") or event.event
        if kind == "message_start" and isinstance(payload.get("message"), dict):
            message = payload["message"]
            if isinstance(message.get("model"), str):
                self.state.response_model = message["model"]
            if isinstance(message.get("id"), str):
                self.state.response_id = message["id"]
            self.usage_fields.update(message.get("usage"))
            self.state.service_tier = text_field(message, "usage", "service_tier")
        elif kind == "content_block_delta" and isinstance(payload.get("delta"), dict):
            delta = payload["delta"]
            text = delta.get("text") if delta.get("type") == "text_delta" else delta.get("thinking")
            if isinstance(text, str):
                self.state.output_text_parts.append(text)
        elif kind == "message_delta":
            self.usage_fields.update(payload.get("usage"))
            self.state.service_tier = text_field(payload, "usage", "service_tier") or self.state.service_tier
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason"):
                self.state.finish_reason = str(delta["stop_reason"])
        elif kind == "message_stop":
            self.state.finished = True
        elif kind == "error":
            error = payload.get("error") if isinstance(payload.get("error"), dict) else {}
            self.state.error_class = "server_error" if error.get("type") != "rate_limit_error" else "rate_limit"
            self.state.error_message = str(error.get("message", ""))
        self.state.usage = self.usage_fields.normalised()
        return event.raw
