"""The OpenAI wire format: chat completions, completions, embeddings and responses.

Serves OpenAI itself (`kind: openai`) and every server that speaks its format (`kind:
openai_compatible`: vLLM, Ollama, Groq, Together, ...). Usage comes from `usage`
(`prompt_tokens` includes cached tokens, `completion_tokens` includes reasoning); for streamed
chat and completions the gateway asks for usage with `stream_options.include_usage` and, when
the client did not ask for it, removes that extra chunk and the `usage: null` keys again.
"""

from __future__ import annotations

from typing import Any

import orjson

from meterline.providers.base import (
    ApiError,
    Dialect,
    ProviderFamily,
    SSEEvent,
    StreamMeter,
    Usage,
    int_field,
)
from meterline.providers.fields import FieldRule, check_fields, positive_int, text_of_content

_PATHS = {
    "chat": "/chat/completions",
    "completion": "/completions",
    "embeddings": "/embeddings",
    "responses": "/responses",
}

_SAMPLING = {
    "stream": FieldRule((bool,)),
    "temperature": FieldRule((float,)),
    "top_p": FieldRule((float,)),
    "n": FieldRule((int,)),
    "user": FieldRule((str,)),
}

_RULES: dict[str, dict[str, FieldRule]] = {
    "chat": {
        "model": FieldRule((str,), required=True),
        "messages": FieldRule((list,), required=True),
        "max_tokens": FieldRule((int,)),
        "max_completion_tokens": FieldRule((int,)),
        "stream_options": FieldRule((dict,)),
        "tools": FieldRule((list,)),
        **_SAMPLING,
    },
    "completion": {
        "model": FieldRule((str,), required=True),
        "prompt": FieldRule((str, list), required=True),
        "max_tokens": FieldRule((int,)),
        "stream_options": FieldRule((dict,)),
        **_SAMPLING,
    },
    "embeddings": {
        "model": FieldRule((str,), required=True),
        "input": FieldRule((str, list), required=True),
        "dimensions": FieldRule((int,)),
        "encoding_format": FieldRule((str,)),
        "user": FieldRule((str,)),
    },
    "responses": {
        "model": FieldRule((str,), required=True),
        "input": FieldRule((str, list), required=True),
        "instructions": FieldRule((str,)),
        "max_output_tokens": FieldRule((int,)),
        "tools": FieldRule((list,)),
        **_SAMPLING,
    },
}

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class OpenAIDialect(Dialect):
    name = "openai"

    def validate(self, operation: str, body: dict[str, Any]) -> None:
        check_fields(body, _RULES[operation])

    def error_body(self, error: ApiError) -> dict[str, Any]:
        error_type = _ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
        return {"error": {"message": error.message, "type": error_type, "param": error.param, "code": error.kind}}

    def stream_error_event(self, error: ApiError) -> bytes:
        return b"data: " + orjson.dumps(self.error_body(error)) + b"\n\n"

    def request_text(self, operation: str, body: dict[str, Any]) -> str:
        if operation == "chat":
            return "\n".join(text_of_content(m.get("content")) for m in body["messages"] if isinstance(m, dict))
        if operation == "completion":
            return text_of_content(body["prompt"])
        if operation == "embeddings":
            return text_of_content(body["input"])
        return "\n".join((str(body.get("instructions") or ""), text_of_content(body["input"])))

    def request_user(self, body: dict[str, Any]) -> str | None:
        user = body.get("user")
        return user if isinstance(user, str) and user else None

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        return positive_int(body, "max_completion_tokens", "max_tokens", "max_output_tokens")


def usage_from_openai(operation: str, usage: Any) -> Usage | None:
    """Normalise an OpenAI `usage` object (chat/completions/embeddings or responses naming)."""
    if not isinstance(usage, dict):
        return None
    if operation == "responses":
        return Usage(
            input_tokens=int_field(usage, "input_tokens"),
            output_tokens=int_field(usage, "output_tokens"),
            cache_read_tokens=int_field(usage, "input_tokens_details", "cached_tokens"),
            reasoning_tokens=int_field(usage, "output_tokens_details", "reasoning_tokens"),
        )
    return Usage(
        input_tokens=int_field(usage, "prompt_tokens"),
        output_tokens=int_field(usage, "completion_tokens"),
        cache_read_tokens=int_field(usage, "prompt_tokens_details", "cached_tokens"),
        reasoning_tokens=int_field(usage, "completion_tokens_details", "reasoning_tokens"),
    )


class OpenAIProvider(ProviderFamily):
    kind = "openai"
    pricing_id_default = "openai"
    dialect = "openai"
    operations = frozenset(_PATHS)

    def path(self, operation: str) -> str:
        return _PATHS[operation]

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    def shape_body(self, operation: str, body: dict[str, Any]) -> bool:
        """Ask for usage in chat and completion streams when the client did not."""
        if operation not in ("chat", "completion") or body.get("stream") is not True:
            return False
        options = body.get("stream_options") or {}
        if options.get("include_usage") is True:
            return False
        body["stream_options"] = {**options, "include_usage": True}
        return True

    def usage_from_response(self, operation: str, payload: dict[str, Any]) -> Usage | None:
        return usage_from_openai(operation, payload.get("usage"))

    def finish_reason(self, operation: str, payload: dict[str, Any]) -> str | None:
        return finish_reason_of(operation, payload)

    def response_text(self, operation: str, payload: dict[str, Any]) -> str:
        if operation == "responses":
            items = payload.get("output") if isinstance(payload.get("output"), list) else []
            return "\n".join(text_of_content(item.get("content")) for item in items if isinstance(item, dict))
        choices = payload.get("choices") if isinstance(payload.get("choices"), list) else []
        texts = []
        for choice in choices:
            if isinstance(choice, dict):
                message = choice.get("message")
                texts.append(
                    text_of_content(message.get("content") if isinstance(message, dict) else choice.get("text"))
                )
        return "\n".join(texts)

    def stream_meter(self, operation: str, injected_usage_request: bool) -> StreamMeter:
        if operation == "responses":
            return ResponsesStreamMeter()
        return ChatStreamMeter(operation, injected_usage_request)


class OpenAICompatibleProvider(OpenAIProvider):
    """Any server speaking OpenAI's format; priced from overrides unless `pricing_provider` is set."""

    kind = "openai_compatible"
    pricing_id_default = None


def finish_reason_of(operation: str, payload: dict[str, Any]) -> str | None:
    if operation == "responses":
        details = payload.get("incomplete_details")
        if isinstance(details, dict) and details.get("reason"):
            return str(details["reason"])
        status = payload.get("status")
        return str(status) if status else None
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        reason = choices[0].get("finish_reason")
        return str(reason) if reason else None
    return None


class ChatStreamMeter(StreamMeter):
    """Chat-completion and completion chunks; `data: [DONE]` closes the stream."""

    def __init__(self, operation: str, injected_usage_request: bool) -> None:
        super().__init__()
        self.operation = operation
        self.injected = injected_usage_request

    def feed(self, event: SSEEvent) -> bytes | None:
        if event.data == "[DONE]":
            self.state.finished = True
            return event.raw
        chunk = self.json_object(event, unit="chunk")
        if chunk is None:
            return event.raw
        if isinstance(chunk.get("error"), dict):
            self.state.error_class = "server_error"
            self.state.error_message = str(chunk["error"].get("message", ""))
            return event.raw
        if isinstance(chunk.get("model"), str):
            self.state.response_model = chunk["model"]
        if isinstance(chunk.get("id"), str):
            self.state.response_id = chunk["id"]
        usage = usage_from_openai(self.operation, chunk.get("usage"))
        if usage is not None:
            self.state.usage = usage
        choices = chunk.get("choices") or []
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.state.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                self.state.output_text_parts.append(text)
        if not self.injected:
            return event.raw
        if usage is not None and not choices:
            return None
        if "usage" in chunk:
            del chunk["usage"]
            return b"data: " + orjson.dumps(chunk) + b"\n\n"
        return event.raw


class ResponsesStreamMeter(StreamMeter):
    """Responses API typed events; `response.completed` (or incomplete/failed) carries usage and closes."""

    def feed(self, event: SSEEvent) -> bytes | None:
        payload = self.json_object(event)
        if payload is None:
            return event.raw
        kind = event.event or payload.get("type")
        if kind == "response.output_text.delta" and isinstance(payload.get("delta"), str):
            self.state.output_text_parts.append(payload["delta"])
        elif kind in _RESPONSES_TERMINAL and isinstance(payload.get("response"), dict):
            response = payload["response"]
            self.state.finished = True
            self.state.usage = usage_from_openai("responses", response.get("usage"))
            self.state.finish_reason = finish_reason_of("responses", response)
            if isinstance(response.get("model"), str):
                self.state.response_model = response["model"]
            if isinstance(response.get("id"), str):
                self.state.response_id = response["id"]
            if kind == "response.failed":
                self.state.error_class = "server_error"
        elif kind == "error":
            self.state.error_class = "server_error"
            self.state.error_message = str(payload.get("message", ""))
        return event.raw
