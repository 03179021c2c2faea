"""The OpenAI wire format: chat completions, legacy completions, embeddings, models, errors.

Shapes follow OpenAI's API reference. Streams send `chat.completion.chunk` (or
`text_completion`) objects: a first chunk with the assistant role (chat), content chunks, a
chunk per choice with its `finish_reason`, then, when `stream_options.include_usage` is
true, a chunk with `"choices": []` and the usage (every earlier chunk carrying
`"usage": null`), and `data: [DONE]`. `n` choices each get the same reply; completion
tokens count every choice. Reasoning tokens are part of `completion_tokens`. Prompt tokens
count tool definitions, tool calls and images (`tokens.py`). The `service_tier` served is the
request's (`fast` is served as `priority`); for `auto` or none it is `x-mock-service-tier` if
sent, else `default`. The Responses API lives in `openai_responses.py`, files and batches in
`openai_batches.py`; `x-mock-compat` (see `compat.py`) makes chat and completions answer as an
OpenAI-compatible server does.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import time
import zlib
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

from meterline.mock_provider import compat
from meterline.mock_provider.delivery import JsonAnswer, StreamAnswer, json_response
from meterline.mock_provider.errors import (
    AUTHENTICATION,
    CONTEXT_LENGTH,
    INVALID_REQUEST,
    NOT_FOUND,
    OVERLOADED,
    RATE_LIMIT,
    SERVER,
    UNPROCESSABLE,
    ApiError,
)
from meterline.mock_provider.pipeline import Answer, Call, Family
from meterline.mock_provider.reply import Reply, new_id
from meterline.mock_provider.sse import DONE, data_event
from meterline.mock_provider.tokens import messages_tokens, prompt_tokens, reply_chunks, reply_text, tools_tokens

SYSTEM_FINGERPRINT = "fp_meterline_mock"
DEFAULT_EMBEDDING_DIMENSIONS = 8
_WORD = re.compile(r"\w+")
MAX_DIMENSIONS = 8192
MAX_CHOICES = 128
MODELS = ("mock-gpt", "mock-gpt-mini", "mock-embedding")
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority", "fast")

# kind -> (status, error type, code, standard message)
_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    INVALID_REQUEST: (400, "invalid_request_error", None, "Invalid request."),
    NOT_FOUND: (404, "invalid_request_error", None, "Not found."),
    AUTHENTICATION: (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key in the mock provider's settings.",
    ),
    RATE_LIMIT: (429, "requests", "rate_limit_exceeded", "Rate limit reached for requests (mock fault)."),
    SERVER: (500, "server_error", None, "The server had an error while processing your request (mock fault)."),
    OVERLOADED: (503, "server_error", None, "The engine is currently overloaded, please try again later."),
    CONTEXT_LENGTH: (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens. However, your messages resulted in "
        "more tokens. Please reduce the length of the messages.",
    ),
    UNPROCESSABLE: (422, "invalid_request_error", None, "Unprocessable entity."),
}


def render_error(error: ApiError) -> web.Response:
    """`{"error": {"message", "type", "param", "code"}}` with the kind's status."""
    status, error_type, code, message = _ERRORS[error.kind]
    body = {
        "error": {
            "message": error.message or message,
            "type": error_type,
            "param": error.param,
            "code": error.code or code,
        }
    }
    return json_response(body, status, error.headers)


OPENAI = Family(render_error=render_error, request_id_header="x-request-id")


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(
            INVALID_REQUEST, "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    return model


def served_tier(call: Call) -> str:
    """The `service_tier` a reply reports (see the module docstring); a 400 for a tier OpenAI does not have."""
    asked = call.body.get("service_tier")
    if asked is not None and asked not in SERVICE_TIERS:
        raise ApiError(
            INVALID_REQUEST,
            f"Invalid value for 'service_tier': {asked!r}; supported values are: {', '.join(SERVICE_TIERS)}.",
            param="service_tier",
        )
    if asked in (None, "auto"):
        return call.headers.get("x-mock-service-tier", "default")
    return "priority" if asked == "fast" else str(asked)


def chat_completions(call: Call) -> Answer:
    body = call.body
    model = require_model(body)
    messages = _require_messages(body)
    server = compat.server_of(call.headers, body)
    reply = call.plan("max_completion_tokens", "max_tokens")
    choices = _choice_count(body)
    prompt_tokens = reply.prompt_total(messages_tokens(messages) + tools_tokens(body))
    usage = compat.shaped_usage(server, _usage(reply, prompt_tokens, choices), reply)
    finish_reason = "length" if reply.cut else "stop"
    stream = bool(body.get("stream"))
    head = _head(new_id("chatcmpl-"), "chat.completion.chunk" if stream else "chat.completion", model)
    head["service_tier"] = served_tier(call)
    if not stream:
        message = {"role": "assistant", "content": reply_text(reply.output_tokens), "refusal": None, "annotations": []}
        choice_list = [
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}
            for index in range(choices)
        ]
        return JsonAnswer({**head, "choices": choice_list, "usage": usage}, reply.output_tokens)
    steps = [
        ({"delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None, "finish_reason": None}, 0),
        *(
            ({"delta": {"content": text}, "logprobs": None, "finish_reason": None}, tokens)
            for text, tokens in reply_chunks(reply.output_tokens, call.settings.stream_chunk_tokens)
        ),
        ({"delta": {}, "logprobs": None, "finish_reason": finish_reason}, 0),
    ]
    return _chunk_stream(head, steps, choices, usage, server, _include_usage(body))


def completions(call: Call) -> Answer:
    body = call.body
    model = require_model(body)
    prompts = _text_inputs(body, "prompt")
    server = compat.server_of(call.headers, body)
    reply = call.plan("max_tokens")
    choices = len(prompts) * _choice_count(body)
    prompt_size = reply.prompt_total(sum(prompt_tokens(prompt) for prompt in prompts))
    usage = compat.shaped_usage(server, _usage(reply, prompt_size, choices), reply)
    finish_reason = "length" if reply.cut else "stop"
    head = _head(new_id("cmpl-"), "text_completion", model)
    if not body.get("stream"):
        text = reply_text(reply.output_tokens)
        choice_list = [
            {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason} for index in range(choices)
        ]
        return JsonAnswer({**head, "choices": choice_list, "usage": usage}, reply.output_tokens)
    steps = [
        *(
            ({"text": text, "logprobs": None, "finish_reason": None}, tokens)
            for text, tokens in reply_chunks(reply.output_tokens, call.settings.stream_chunk_tokens)
        ),
        ({"text": "", "logprobs": None, "finish_reason": finish_reason}, 0),
    ]
    return _chunk_stream(head, steps, choices, usage, server, _include_usage(body))


def embeddings(call: Call) -> Answer:
    body = call.body
    model = require_model(body)
    inputs = _text_inputs(body, "input")
    dimensions = body.get("dimensions") or DEFAULT_EMBEDDING_DIMENSIONS
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise ApiError(
            INVALID_REQUEST,
            f"dimensions must be an integer from 1 to {MAX_DIMENSIONS}, got {dimensions!r}",
            param="dimensions",
        )
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(
            INVALID_REQUEST, f"encoding_format must be 'float' or 'base64', got {encoding!r}", param="encoding_format"
        )
    data = []
    for index, item in enumerate(inputs):
        vector = embedding_vector(item if isinstance(item, str) else orjson.dumps(item).decode(), dimensions)
        embedding: tuple[float, ...] | str = (
            vector if encoding == "float" else base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        )
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(prompt_tokens(item) for item in inputs)
    return JsonAnswer(
        {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    )


def models(call: Call) -> Answer:
    data = [
        {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "meterline-mock"} for model in MODELS
    ]
    return JsonAnswer({"object": "list", "data": data})


def _head(completion_id: str, object_type: str, model: str) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": object_type,
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _usage(reply: Reply, prompt: int, choices: int) -> dict[str, Any]:
    completion = reply.output_tokens * choices + reply.reasoning_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": reply.cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reply.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chunk_stream(
    head: dict[str, Any],
    steps: list[tuple[dict[str, Any], int]],
    choices: int,
    usage: dict[str, Any],
    server: str | None,
    include_usage: bool,
) -> StreamAnswer:
    """Each step once per choice, then the usage chunk if asked for, then [DONE] (a compatible server's usage
    where it puts it, see `compat.py`)."""
    placement = compat.stream_usage(server, include_usage)
    usage_field: dict[str, Any] = {"usage": None} if placement == compat.USAGE_CHUNK else {}
    chunks = [
        ({**head, "choices": [{"index": index, **step}], **usage_field}, tokens if index == 0 else 0)
        for step, tokens in steps
        for index in range(choices)
    ]
    if placement == compat.USAGE_ON_LAST:
        chunks[-1][0]["usage"] = usage
    elif placement == compat.USAGE_X_GROQ:
        chunks[-1][0]["x_groq"] = {"id": new_id("req_"), "usage": usage}
    events = [(data_event(chunk), tokens) for chunk, tokens in chunks]
    if placement == compat.USAGE_CHUNK:
        events.append((data_event({**head, "choices": [], "usage": usage}), 0))
    if server == "openrouter":
        events.insert(0, (compat.OPENROUTER_COMMENT, 0))
    events.append((DONE, 0))
    error = {"message": _ERRORS[SERVER][3], "type": "server_error", "param": None, "code": None}
    return StreamAnswer(events, lambda sent: data_event({"error": error}))


def _require_messages(body: dict[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if messages is None:
        raise ApiError(
            INVALID_REQUEST,
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    if not isinstance(messages, list) or not messages:
        raise ApiError(
            INVALID_REQUEST, "Invalid 'messages': expected a non-empty array of message objects.", param="messages"
        )
    return messages


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _choice_count(body: dict[str, Any]) -> int:
    count = body.get("n")
    if count is None:
        return 1
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_CHOICES:
        raise ApiError(INVALID_REQUEST, f"n must be an integer from 1 to {MAX_CHOICES}, got {count!r}", param="n")
    return count


def _text_inputs(body: dict[str, Any], field: str) -> list[str | list[int]]:
    """A prompt or embedding input: a string, strings, a token array, or token arrays."""
    value = body.get(field)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(_is_token_array_item(item) for item in value):
            return [value]
        if all(isinstance(item, str) or _is_token_array(item) for item in value):
            return value
    raise ApiError(
        INVALID_REQUEST,
        f"'{field}' must be a string, an array of strings, or an array of token arrays.",
        param=field,
        code="missing_required_parameter" if value is None else None,
    )


def _is_token_array_item(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_token_array_item(item) for item in value)


@lru_cache(maxsize=1024)
def embedding_vector(text: str, dimensions: int) -> tuple[float, ...]:
    """A unit vector from the text's words: each word adds ±1 on the dimension its CRC-32 picks.

    The same text always gets the same vector, and texts sharing most of their words get similar
    vectors (case and punctuation aside), so a semantic cache can be tested against it.
    """
    values = [0.0] * dimensions
    for word in _WORD.findall(text.lower()) or [text]:
        digest = zlib.crc32(word.encode())
        values[digest % dimensions] += 1.0 if digest & 0x80000000 else -1.0
    norm = math.sqrt(sum(value * value for value in values))
    if norm == 0:  # the words cancelled out: any fixed unit vector will do
        return tuple(1.0 if index == 0 else 0.0 for index in range(dimensions))
    return tuple(value / norm for value in values)
