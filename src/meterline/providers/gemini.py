"""The Google Gemini API (generativelanguage.googleapis.com): generateContent, its stream, embeddings, token counts.

Clients call `/v1beta/models/{model}:generateContent` (or `/v1/...`), `:streamGenerateContent?alt=sse`
(streams are server-sent events; the JSON-array form without `alt=sse` is refused with a 400 that
says so), `:embedContent`, `:batchEmbedContents` and `:countTokens`, sending their meterline key as
Gemini clients send theirs (`x-goog-api-key`, or `?key=`); the model is in the URL. Upstream, the
provider's `base_url` includes the API version (`https://generativelanguage.googleapis.com/v1beta`)
and the configured key goes as `x-goog-api-key`.

Usage is `usageMetadata`, normalised onto the event as genai-prices reads it: input =
`promptTokenCount` (which already counts the cached content) + `toolUsePromptTokenCount`; cache
reads = `cachedContentTokenCount`; output = `candidatesTokenCount` + `thoughtsTokenCount`;
reasoning = `thoughtsTokenCount`. A stream repeats `usageMetadata` in its chunks (the latest wins)
and has no end marker: the chunk carrying a candidate's `finishReason` (or the prompt's
`blockReason`) completes it. Token counting is relayed, not metered. Errors are Google's
`{"error": {"code", "message", "status", "details"}}`, with meterline's reason for refusing a call
in an `ErrorInfo` detail.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import orjson

from meterline.providers.base import (
    ApiError,
    Dialect,
    Endpoint,
    ProviderFamily,
    RequestInvalid,
    SSEEvent,
    StreamMeter,
    Usage,
    classify_upstream_error,
    error_details,
    int_field,
)
from meterline.providers.fields import FieldRule, check_fields, positive_int, text_of_content
from meterline.providers.shape import RequestShape, count_of, shape_of

# URL method -> (operation, streams)
_METHODS = {
    "generateContent": ("generate_content", False),
    "streamGenerateContent": ("generate_content", True),
    "embedContent": ("embeddings", False),
    "batchEmbedContents": ("embeddings", False),
    "countTokens": ("count_tokens", False),
}

_ENDPOINTS = tuple(
    Endpoint(f"/{version}/models/{{model:[^/:]+}}:{method}", operation, streams, (("alt", "sse"),) if streams else ())
    for version in ("v1beta", "v1")
    for method, (operation, streams) in _METHODS.items()
)

_UPSTREAM_PATHS = {
    "generate_content": "/models/{model}:generateContent",
    "embeddings": "/models/{model}:embedContent",
    "count_tokens": "/models/{model}:countTokens",
}
_STREAM_PATH = "/models/{model}:streamGenerateContent?alt=sse"
_BATCH_EMBED_PATH = "/models/{model}:batchEmbedContents"


def snake_case(name: str) -> str:
    """A JSON field name as its proto name: `maxOutputTokens` -> `max_output_tokens`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _spellings(name: str, rule: FieldRule) -> dict[str, FieldRule]:
    """A field under its JSON name and its proto name (the API accepts `generationConfig` and `generation_config`)."""
    return {name: rule, snake_case(name): rule}


def proto_field(body: Any, name: str) -> Any:
    """A field of a request object by its JSON name, else by its proto (snake_case) name."""
    if not isinstance(body, Mapping):
        return None
    value = body.get(name)
    return body.get(snake_case(name)) if value is None else value


_RULES: dict[str, dict[str, FieldRule]] = {
    "generate_content": {
        "contents": FieldRule((list,), required=True),
        **_spellings("systemInstruction", FieldRule((dict,))),
        **_spellings("generationConfig", FieldRule((dict,))),
        "tools": FieldRule((list,)),
        **_spellings("toolConfig", FieldRule((dict,))),
        **_spellings("safetySettings", FieldRule((list,))),
        **_spellings("cachedContent", FieldRule((str,))),
    },
    "embeddings": {
        "content": FieldRule((dict,)),
        "requests": FieldRule((list,)),
        **_spellings("taskType", FieldRule((str,))),
        **_spellings("outputDimensionality", FieldRule((int,))),
    },
    "count_tokens": {
        "contents": FieldRule((list,)),
        **_spellings("generateContentRequest", FieldRule((dict,))),
    },
}

# what a request must hold one of, per operation: (fields, message)
_ONE_OF = {
    "embeddings": (("content", "requests"), "missing required field 'content' (embedContent) or 'requests' "
                   "(batchEmbedContents)"),
    "count_tokens": (("contents", "generateContentRequest"), "missing required field 'contents' or "
                     "'generateContentRequest'"),
}  # fmt: skip

# HTTP status -> google.rpc.Code name
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "FAILED_PRECONDITION",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def _contents_text(contents: Any) -> list[str]:
    return [text_of_content(item) for item in contents] if isinstance(contents, list) else []


class GeminiDialect(Dialect):
    name = "gemini"
    endpoints = _ENDPOINTS
    key_query = "key"
    sends_cost_comment = False

    def validate(self, operation: str, body: dict[str, Any]) -> None:
        check_fields(body, _RULES[operation])
        one_of = _ONE_OF.get(operation)
        if one_of is not None and all(proto_field(body, name) is None for name in one_of[0]):
            raise RequestInvalid(one_of[1], param=one_of[0][0])

    def error_body(self, error: ApiError) -> dict[str, Any]:
        status = _STATUS.get(error.status, "INTERNAL" if error.status >= 500 else "FAILED_PRECONDITION")
        info: dict[str, Any] = {
            "@type": "type.googleapis.com/google.rpc.ErrorInfo",
            "reason": error.kind.upper(),
            "domain": "meterline",
        }
        if error.param:
            info["metadata"] = {"param": error.param}
        return {"error": {"code": error.status, "message": error.message, "status": status, "details": [info]}}

    def stream_error_event(self, error: ApiError) -> bytes:
        return b"data: " + orjson.dumps(self.error_body(error)) + b"\n\n"

    def request_text(self, operation: str, body: dict[str, Any]) -> str:
        if operation == "embeddings":
            requests = body.get("requests") if isinstance(body.get("requests"), list) else []
            return "\n".join(text_of_content(item) for item in [body.get("content"), *requests])
        if operation == "count_tokens" and proto_field(body, "generateContentRequest") is not None:
            body = proto_field(body, "generateContentRequest")
        system = text_of_content(proto_field(body, "systemInstruction"))
        return "\n".join([system, *_contents_text(body.get("contents"))])

    def request_user(self, body: dict[str, Any]) -> str | None:
        return None  # the Gemini API has no end-user field

    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        config = proto_field(body, "generationConfig")
        return positive_int(config, "maxOutputTokens", "max_output_tokens") if isinstance(config, dict) else None

    def temperature(self, body: dict[str, Any]) -> float | None:
        return super().temperature(proto_field(body, "generationConfig") or {})

    def request_shape(self, operation: str, body: dict[str, Any]) -> RequestShape:
        """Instructions: `systemInstruction`; tools: the `tools` entries (each a Tool object, which may declare
        several functions). Counts: a generation's `contents`, a batch embedding's `requests` (one for
        `embedContent`). Every field changes the answer (the model is in the URL)."""
        if operation == "embeddings":
            requests = body.get("requests")
            count = len(requests) if isinstance(requests, list) else 1
            return shape_of(body, answer_neutral=(), instructions=[], tools=None, n_messages=count, max_tokens=None)
        if operation == "count_tokens" and proto_field(body, "generateContentRequest") is not None:
            body = proto_field(body, "generateContentRequest")
        system = proto_field(body, "systemInstruction")
        return shape_of(
            body,
            answer_neutral=(),
            instructions=[system] if system else [],
            tools=proto_field(body, "tools"),
            n_messages=count_of(body.get("contents")),
            max_tokens=self.max_output_tokens(body),
        )


def usage_from_gemini(metadata: Any) -> Usage | None:
    """Normalise a `usageMetadata` object (see the module docstring)."""
    if not isinstance(metadata, dict):
        return None
    thoughts = int_field(metadata, "thoughtsTokenCount")
    return Usage(
        input_tokens=int_field(metadata, "promptTokenCount") + int_field(metadata, "toolUsePromptTokenCount"),
        output_tokens=int_field(metadata, "candidatesTokenCount") + thoughts,
        cache_read_tokens=int_field(metadata, "cachedContentTokenCount"),
        reasoning_tokens=thoughts,
    )


def _candidates(payload: dict[str, Any]) -> list[dict[str, Any]]:
    candidates = payload.get("candidates")
    return [c for c in candidates if isinstance(c, dict)] if isinstance(candidates, list) else []


def _block_reason(payload: dict[str, Any]) -> str | None:
    feedback = payload.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return str(reason) if reason else None


class GeminiProvider(ProviderFamily):
    kind = "gemini"
    pricing_id_default = "google"
    dialect = "gemini"
    operations = frozenset(_UPSTREAM_PATHS)

    def path(self, operation: str) -> str:
        return _UPSTREAM_PATHS[operation]

    def url(self, operation: str, body: dict[str, Any], upstream_model: str, streaming: bool) -> str:
        """The operation's path, or its variant for a stream (`streamGenerateContent`) or a batch of embeddings."""
        path = self.path(operation)
        if streaming:
            path = _STREAM_PATH
        elif operation == "embeddings" and body.get("requests") is not None:
            path = _BATCH_EMBED_PATH
        return self.config.base_url + path.replace("{model}", quote(upstream_model, safe=""))

    def name_model(self, operation: str, body: dict[str, Any], upstream_model: str) -> bool:
        """The model is in the URL; requests inside a batch or a token count that name one must name the same."""
        inner = [*(body.get("requests") or ()), proto_field(body, "generateContentRequest")]
        name = f"models/{upstream_model}"
        changed = False
        for request in inner:
            if isinstance(request, dict) and isinstance(request.get("model"), str) and request["model"] != name:
                request["model"] = name
                changed = True
        return changed

    def auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.config.api_key} if self.config.api_key else {}

    def usage_from_response(self, operation: str, payload: dict[str, Any]) -> Usage | None:
        return usage_from_gemini(payload.get("usageMetadata"))

    def response_text(self, operation: str, payload: dict[str, Any]) -> str:
        return "\n".join(text_of_content(candidate.get("content")) for candidate in _candidates(payload))

    def finish_reason(self, operation: str, payload: dict[str, Any]) -> str | None:
        for candidate in _candidates(payload):
            if candidate.get("finishReason"):
                return str(candidate["finishReason"])
        return _block_reason(payload)

    def response_ids(self, payload: dict[str, Any]) -> tuple[str | None, str | None]:
        model, answer_id = payload.get("modelVersion"), payload.get("responseId")
        return (model if isinstance(model, str) else None), (answer_id if isinstance(answer_id, str) else None)

    def stream_meter(self, operation: str, injected_usage_request: bool) -> StreamMeter:
        return GenerateContentStreamMeter()


class GenerateContentStreamMeter(StreamMeter):
    """`data:` chunks, each a GenerateContentResponse; a finishReason or blockReason completes the stream."""

    def feed(self, event: SSEEvent) -> bytes | None:
        chunk = self.json_object(event, unit="chunk")
        if chunk is None:
            return event.raw
        error = chunk.get("error")
        if isinstance(error, dict):
            code, message = error_details(chunk)
            status = error.get("code") if isinstance(error.get("code"), int) else 500
            self.state.error_class = classify_upstream_error(status, code, message)
            self.state.error_message = message
            return event.raw
        usage = usage_from_gemini(chunk.get("usageMetadata"))
        if usage is not None:
            self.state.usage = usage
        if isinstance(chunk.get("modelVersion"), str):
            self.state.response_model = chunk["modelVersion"]
        if isinstance(chunk.get("responseId"), str):
            self.state.response_id = chunk["responseId"]
        for candidate in _candidates(chunk):
            text = text_of_content(candidate.get("content"))
            if text:
                self.state.output_text_parts.append(text)
            if candidate.get("finishReason"):
                self.state.finish_reason = str(candidate["finishReason"])
                self.state.finished = True
        blocked = _block_reason(chunk)
        if blocked is not None:
            self.state.finish_reason = blocked
            self.state.finished = True
        return event.raw
