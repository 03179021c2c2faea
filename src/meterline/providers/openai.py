"""The OpenAI wire format: chat completions, completions, embeddings and responses.

Serves OpenAI itself (`kind: openai`), Azure OpenAI (`meterline.providers.azure`) and every
server that speaks its format (`kind: openai_compatible`: vLLM, Ollama, Groq, Together,
DeepSeek, Mistral, OpenRouter, ...). Clients call it at OpenAI's URLs (`/v1/...`) and at Azure's
(`/openai/deployments/{deployment}/...`, `/openai/v1/...`). Usage comes from `usage`
(`prompt_tokens` includes cached tokens and cache writes, `completion_tokens` includes
reasoning; the Responses API names them `input_tokens`/`output_tokens` with
`input_tokens_details` and `output_tokens_details`); for streamed chat and completions the
gateway asks for usage with `stream_options.include_usage` and, when the client did not ask for
it, removes that extra chunk and the `usage: null` keys again. Responses API streams are typed
events: `response.completed`, `response.incomplete` or `response.failed` carries the final
response with its usage and ends the stream; an `error` event reports a failure. The
`service_tier` a response reports (`default`, `flex`, `priority`, ...) is recorded.

What compatible servers do differently, all read by the same code:

- no `prompt_tokens_details` at all (vLLM, Ollama), or `null`;
- DeepSeek reports cache reads as `prompt_cache_hit_tokens` (with `prompt_cache_miss_tokens`);
- OpenRouter adds `prompt_tokens_details.cache_write_tokens` and the `cost` it charged (kept as the
  event property `reported_cost_usd`, never used as the cost);
- Groq streams usage in its last chunk as `x_groq.usage`; Together, Mistral and OpenRouter put
  `usage` in their last chunk without being asked, and Mistral rejects `stream_options`, so for
  these (by `pricing_provider`) nothing is asked for unless the provider sets `stream_usage: request`.
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
    classify_upstream_error,
    int_field,
    text_field,
)
from meterline.providers.fields import FieldRule, check_fields, positive_int, text_of_content
from meterline.providers.shape import RequestShape, count_of, shape_of

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
        "model": FieldRule((str,)),
        "messages": FieldRule((list,), required=True),
        "max_tokens": FieldRule((int,)),
        "max_completion_tokens": FieldRule((int,)),
        "stream_options": FieldRule((dict,)),
        "tools": FieldRule((list,)),
        "tool_choice": FieldRule((str, dict)),
        "service_tier": FieldRule((str,)),
        **_SAMPLING,
    },
    "completion": {
        "model": FieldRule((str,)),
        "prompt": FieldRule((str, list), required=True),
        "max_tokens": FieldRule((int,)),
        "stream_options": FieldRule((dict,)),
        **_SAMPLING,
    },
    "embeddings": {
        "model": FieldRule((str,)),
        "input": FieldRule((str, list), required=True),
        "dimensions": FieldRule((int,)),
        "encoding_format": FieldRule((str,)),
        "user": FieldRule((str,)),
    },
    "responses": {
        "model": FieldRule((str,)),
        "input": FieldRule((str, list), required=True),
        "instructions": FieldRule((str,)),
        "max_output_tokens": FieldRule((int,)),
        "tools": FieldRule((list,)),
        "tool_choice": FieldRule((str, dict)),
        "reasoning": FieldRule((dict,)),
        "service_tier": FieldRule((str,)),
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
_RESPONSES_DELTAS = frozenset(
    {"response.output_text.delta", "response.refusal.delta", "response.function_call_arguments.delta"}
)


# Azure OpenAI's URLs: deployments (model in the path, `?api-version=`) and its v1 API (model in the body)
_AZURE_DEPLOYMENT_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embeddings": "/embeddings"}

_ENDPOINTS = (
    *(Endpoint("/v1" + path, operation) for operation, path in _PATHS.items()),
    *(Endpoint("/openai/deployments/{model}" + path, op) for op, path in _AZURE_DEPLOYMENT_PATHS.items()),
    *(Endpoint("/openai/v1" + path, operation) for operation, path in _PATHS.items()),
    Endpoint("/openai/responses", "responses"),
)

# genai-prices ids of servers that send stream usage unasked (and, Mistral, reject stream_options)
_SENDS_STREAM_USAGE = frozenset({"mistral", "groq", "together", "openrouter"})


class OpenAIDialect(Dialect):
    name = "openai"
    endpoints = _ENDPOINTS

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

    def request_shape(self, operation: str, body: dict[str, Any]) -> RequestShape:
        """Instructions: chat's leading system/developer messages; responses' `instructions` and leading
        system/developer input items. Counts: chat messages, responses input items, embeddings inputs
        (a token array is one input), completion prompts."""
        instructions: list[Any] = []
        if operation == "chat":
            instructions = _leading_instructions(body["messages"])
            n_messages = len(body["messages"])
        elif operation == "responses":
            given = body["input"]
            instructions = [body["instructions"]] if body.get("instructions") else []
            if isinstance(given, list):
                instructions += _leading_instructions(given)
            n_messages = count_of(given)
        elif operation == "embeddings":
            given = body["input"]
            token_array = isinstance(given, list) and bool(given) and all(isinstance(item, int) for item in given)
            n_messages = 1 if token_array else count_of(given)
        else:
            n_messages = count_of(body["prompt"])
        return shape_of(
            body,
            answer_neutral=_ANSWER_NEUTRAL,
            instructions=instructions,
            tools=body.get("tools"),
            n_messages=n_messages,
            max_tokens=None if operation == "embeddings" else self.max_output_tokens(body),
        )


_ANSWER_NEUTRAL = ("stream", "stream_options", "user", "store", "metadata", "service_tier")
"""Body fields that do not change what the model answers (the tier changes its price, not the answer)."""
_INSTRUCTION_ROLES = frozenset({"system", "developer"})


def _leading_instructions(messages: list[Any]) -> list[Any]:
    """The contents of the system/developer messages a conversation starts with."""
    leading = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in _INSTRUCTION_ROLES:
            break
        leading.append(message.get("content"))
    return leading


def usage_from_openai(operation: str, usage: Any) -> Usage | None:
    """Normalise an OpenAI `usage` object (chat/completions/embeddings or responses naming)."""
    if not isinstance(usage, dict):
        return None
    if operation == "responses":
        return Usage(
            input_tokens=int_field(usage, "input_tokens"),
            output_tokens=int_field(usage, "output_tokens"),
            cache_read_tokens=int_field(usage, "input_tokens_details", "cached_tokens"),
            cache_write_tokens=int_field(usage, "input_tokens_details", "cache_write_tokens"),
            reasoning_tokens=int_field(usage, "output_tokens_details", "reasoning_tokens"),
        )
    cost = usage.get("cost")
    return Usage(
        input_tokens=int_field(usage, "prompt_tokens"),
        output_tokens=int_field(usage, "completion_tokens"),
        cache_read_tokens=int_field(usage, "prompt_tokens_details", "cached_tokens")
        or int_field(usage, "prompt_cache_hit_tokens"),
        cache_write_tokens=int_field(usage, "prompt_tokens_details", "cache_write_tokens"),
        reasoning_tokens=int_field(usage, "completion_tokens_details", "reasoning_tokens"),
        reported_cost_usd=float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None,
    )


class OpenAIProvider(ProviderFamily):
    kind = "openai"
    pricing_id_default = "openai"
    dialect = "openai"
    operations = frozenset(_PATHS)
    settings = frozenset({"stream_usage"})

    def path(self, operation: str) -> str:
        return _PATHS[operation]

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}

    @property
    def stream_usage(self) -> str:
        """`request` (ask for stream usage) or `included` (the server sends it unasked), see `ProviderConfig`."""
        if self.config.stream_usage is not None:
            return self.config.stream_usage
        return "included" if self.pricing_id in _SENDS_STREAM_USAGE else "request"

    def shape_body(self, operation: str, body: dict[str, Any]) -> bool:
        """Ask for usage in chat and completion streams when the client did not (and the server needs asking)."""
        if operation not in ("chat", "completion") or body.get("stream") is not True:
            return False
        if self.stream_usage == "included":
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

    def service_tier(self, operation: str, payload: dict[str, Any]) -> str | None:
        return text_field(payload, "service_tier")

    def response_text(self, operation: str, payload: dict[str, Any]) -> str:
        if operation == "responses":
            items = payload.get("output") if isinstance(payload.get("output"), list) else []
            return "\n".join(output_item_text(item) for item in items if isinstance(item, dict))
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


def output_item_text(item: dict[str, Any]) -> str:
    """The generated text of one Responses API output item: a message's text, a tool call's arguments."""
    if isinstance(item.get("arguments"), str):
        return str(item["arguments"])
    return text_of_content(item.get("content"))


def stream_error_class(code: str | None, message: str) -> str:
    """The `error_class` of an error a provider reports inside a stream (no HTTP status of its own)."""
    if code is not None and "rate_limit" in code:
        return "rate_limit"
    return classify_upstream_error(500, code, message)


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
        self.state.service_tier = text_field(chunk, "service_tier") or self.state.service_tier
        usage = usage_from_openai(self.operation, chunk.get("usage"))
        groq = chunk.get("x_groq")
        if usage is None and isinstance(groq, dict):
            usage = usage_from_openai(self.operation, groq.get("usage"))
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
    """Responses API typed events; `response.completed` (or incomplete/failed) carries usage and closes.

    Text, refusal and tool-call argument deltas are kept for an estimate should the stream end
    early; an `error` event, or `response.failed`, marks the call failed with the provider's code.
    """

    def feed(self, event: SSEEvent) -> bytes | None:
        payload = self.json_object(event)
        if payload is None:
            return event.raw
        kind = event.event or payload.get("type")
        if kind in _RESPONSES_DELTAS and isinstance(payload.get("delta"), str):
            self.state.output_text_parts.append(payload["delta"])
        elif kind in _RESPONSES_TERMINAL and isinstance(payload.get("response"), dict):
            response = payload["response"]
            self.state.finished = True
            self.state.usage = usage_from_openai("responses", response.get("usage"))
            self.state.finish_reason = finish_reason_of("responses", response)
            self.state.service_tier = text_field(response, "service_tier")
            if isinstance(response.get("model"), str):
                self.state.response_model = response["model"]
            if isinstance(response.get("id"), str):
                self.state.response_id = response["id"]
            if kind == "response.failed":
                self.failed(text_field(response, "error", "code"), text_field(response, "error", "message"))
        elif kind == "error":
            self.failed(text_field(payload, "code"), text_field(payload, "message"))
        return event.raw

    def failed(self, code: str | None, message: str | None) -> None:
        self.state.error_message = message or code or "the response failed"
        self.state.error_class = stream_error_class(code, self.state.error_message)
