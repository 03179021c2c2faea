"""Azure OpenAI's wire format: OpenAI's chat, completions and embeddings at Azure's URLs, with Azure's additions.

Deployment URLs, `/openai/deployments/{model}/chat/completions` (and `/completions`,
`/embeddings`), need `?api-version=`: without it Azure answers 404 "Resource not found". The v1
API, `/openai/v1/chat/completions` (and so on), takes the deployment in the body's `model`. Keys
may come as `api-key`. An answer reports the model the deployment runs: `x-mock-model`, else the
deployment's name. As Azure does, chat answers carry `prompt_filter_results` and each choice its
`content_filter_results`, and a chat stream opens with a chunk whose `choices`, `model` and `id`
are empty and which holds the prompt's filter results. Errors are `{"error": {"code",
"message"}}`, with OpenAI's `type` and `param` added for an invalid request.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from meterline.mock_provider import openai_routes
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
from meterline.mock_provider.sse import data_event

# kind -> (status, code, standard message)
_ERRORS: dict[str, tuple[int, str, str]] = {
    INVALID_REQUEST: (400, "invalid_request", "Invalid request."),
    AUTHENTICATION: (
        401,
        "401",
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
        "for an active subscription and use a correct regional API endpoint for your resource.",
    ),
    RATE_LIMIT: (
        429,
        "429",
        "Requests to the Azure OpenAI API have exceeded the rate limit of your tier (mock fault).",
    ),
    SERVER: (500, "InternalServerError", "The server had an error while processing your request (mock fault)."),
    OVERLOADED: (503, "ServiceUnavailable", "The service is temporarily unable to process your request."),
    CONTEXT_LENGTH: (
        400,
        "context_length_exceeded",
        "This model's maximum context length is 128000 tokens. However, your messages resulted in more tokens.",
    ),
    NOT_FOUND: (404, "404", "Resource not found"),
    UNPROCESSABLE: (422, "unprocessable", "Unprocessable entity."),
}

_SAFE = {category: {"filtered": False, "severity": "safe"} for category in ("hate", "self_harm", "sexual", "violence")}
_PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": _SAFE}]


def render_error(error: ApiError) -> web.Response:
    status, code, message = _ERRORS[error.kind]
    body: dict[str, Any] = {"code": error.code or code, "message": error.message or message}
    if error.kind == INVALID_REQUEST:
        body.update(type="invalid_request_error", param=error.param)
    return json_response({"error": body}, status, error.headers)


AZURE_DEPLOYMENTS = Family(render_error=render_error, request_id_header="apim-request-id", required_query="api-version")
AZURE_V1 = Family(render_error=render_error, request_id_header="apim-request-id")


def _as_openai(call: Call) -> Call:
    """The call as the OpenAI routes take it: the model it reports in `model`."""
    deployment = call.path.get("model") or openai_routes.require_model(call.body)
    model = call.headers.get("x-mock-model") or deployment
    return Call(call.headers, {**call.body, "model": model}, call.settings, call.path, call.query)


def _filtered_chunk(event: bytes) -> bytes:
    if not event.startswith(b"data: {"):
        return event
    chunk = orjson.loads(event[len(b"data: ") :])
    for choice in chunk.get("choices", []):
        choice["content_filter_results"] = _SAFE
    return data_event(chunk)


def chat(call: Call) -> Answer:
    answer = openai_routes.chat_completions(_as_openai(call))
    if isinstance(answer, JsonAnswer):
        choices = [{**choice, "content_filter_results": _SAFE} for choice in answer.body["choices"]]
        body = {**answer.body, "choices": choices, "prompt_filter_results": _PROMPT_FILTER_RESULTS}
        return JsonAnswer(body, answer.output_tokens)
    opening = {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": _PROMPT_FILTER_RESULTS,
    }
    events = [(data_event(opening), 0), *((_filtered_chunk(event), tokens) for event, tokens in answer.events)]
    return StreamAnswer(events)


def completions(call: Call) -> Answer:
    return openai_routes.completions(_as_openai(call))


def embeddings(call: Call) -> Answer:
    return openai_routes.embeddings(_as_openai(call))
