"""The Gemini API wire format: generateContent, streamGenerateContent, embedContent, batchEmbedContents, countTokens.

Routes are `/v1beta/models/{model}:<method>` (and `/v1/...`); the model is the URL's. The prompt
counts by `tokens.py`: each of `contents` and the `systemInstruction` counts its parts' words
plus `MESSAGE_OVERHEAD`. `generationConfig` is read for `maxOutputTokens` (a capped reply ends
with finishReason MAX_TOKENS) and `candidateCount` (each candidate gets the same reply).

`usageMetadata` reports `promptTokenCount` (including the cached part, `cachedContentTokenCount`
from `x-mock-cached-tokens`), `candidatesTokenCount` (every candidate's visible output),
`thoughtsTokenCount` (`x-mock-reasoning-tokens`), `toolUsePromptTokenCount`
(`x-mock-tool-use-prompt-tokens`) and `totalTokenCount`, the sum of the four counts. Answers
name the model in `modelVersion` (`x-mock-model`, else the URL's model) and carry a `responseId`.

`streamGenerateContent?alt=sse` sends `data:` chunks, each a GenerateContentResponse with the next
part of the text and the usage so far; the last carries `finishReason` and the final usage, and
the stream then simply ends (there is no end marker). Without `alt=sse` the same chunks come as
one JSON array. Embeddings are those of the OpenAI routes (`outputDimensionality` sets their
size) with `usageMetadata.promptTokenCount`. Errors are `{"error": {"code", "message", "status"}}`;
an invalid key is a 400 with reason API_KEY_INVALID, as the real API answers.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meterline.mock_provider.delivery import JsonAnswer, StreamAnswer, json_response
from meterline.mock_provider.errors import (
    AUTHENTICATION,
    CONTEXT_LENGTH,
    INVALID_REQUEST,
    OVERLOADED,
    RATE_LIMIT,
    SERVER,
    ApiError,
    header_int,
)
from meterline.mock_provider.openai_routes import DEFAULT_EMBEDDING_DIMENSIONS, MAX_DIMENSIONS, embedding_vector
from meterline.mock_provider.pipeline import Answer, Call, Family
from meterline.mock_provider.reply import Reply, new_id, plan_reply
from meterline.mock_provider.sse import data_event
from meterline.mock_provider.tokens import MESSAGE_OVERHEAD, content_tokens, reply_chunks, reply_text

MAX_CANDIDATES = 8

# kind -> (HTTP status, google.rpc status, standard message)
_ERRORS: dict[str, tuple[int, str, str]] = {
    INVALID_REQUEST: (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    AUTHENTICATION: (400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."),
    RATE_LIMIT: (429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota). (mock fault)"),
    SERVER: (500, "INTERNAL", "An internal error has occurred. Please retry. (mock fault)"),
    OVERLOADED: (503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
    CONTEXT_LENGTH: (
        400,
        "INVALID_ARGUMENT",
        "The input token count (1048577) exceeds the maximum number of tokens allowed (1048576).",
    ),
}


def render_error(error: ApiError) -> web.Response:
    """`{"error": {"code", "message", "status"}}`, with an ErrorInfo detail for an invalid key."""
    status, rpc_status, message = _ERRORS[error.kind]
    body: dict[str, Any] = {"code": status, "message": error.message or message, "status": rpc_status}
    if error.kind == AUTHENTICATION:
        body["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        ]
    return json_response({"error": body}, status, error.headers)


GEMINI = Family(render_error=render_error, request_id_header="x-goog-request-id")


def _text_size(content: Any) -> int:
    """A content's tokens: its parts' words plus the per-content overhead."""
    parts = content.get("parts") if isinstance(content, dict) else None
    return MESSAGE_OVERHEAD + content_tokens(parts)


def _field(body: Any, name: str, snake: str) -> Any:
    """A request field by its JSON name, else its proto name (the API accepts both)."""
    if not isinstance(body, dict):
        return None
    return body[name] if body.get(name) is not None else body.get(snake)


def _prompt_tokens(body: dict[str, Any]) -> int:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ApiError(INVALID_REQUEST, "* GenerateContentRequest.contents: contents is not specified")
    tokens = sum(_text_size(item) for item in contents)
    system = _field(body, "systemInstruction", "system_instruction")
    return tokens + (_text_size(system) if system else 0)


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config = _field(body, "generationConfig", "generation_config")
    return config if isinstance(config, dict) else {}


def _candidate_count(config: dict[str, Any]) -> int:
    count = _field(config, "candidateCount", "candidate_count")
    if count is None:
        return 1
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_CANDIDATES:
        raise ApiError(INVALID_REQUEST, f"candidateCount must be an integer from 1 to {MAX_CANDIDATES}, got {count!r}")
    return count


def _usage(reply: Reply, prompt: int, output: int, tool_use: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": output,
        "totalTokenCount": prompt + output + reply.reasoning_tokens + tool_use,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}],
    }
    if reply.cached_tokens:
        usage["cachedContentTokenCount"] = reply.cached_tokens
        usage["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": reply.cached_tokens}]
    if reply.reasoning_tokens:
        usage["thoughtsTokenCount"] = reply.reasoning_tokens
    if tool_use:
        usage["toolUsePromptTokenCount"] = tool_use
    return usage


def _candidate(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}], "role": "model"}, "index": index}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
    return candidate


def _generate(call: Call, streaming: bool) -> Answer:
    body = call.body
    config = _generation_config(body)
    reply = plan_reply(call.headers, config, call.settings.default_output_tokens, ("maxOutputTokens",))
    candidates = _candidate_count(config)
    prompt = reply.prompt_total(_prompt_tokens(body))
    tool_use = header_int(call.headers, "x-mock-tool-use-prompt-tokens") or 0
    finish_reason = "MAX_TOKENS" if reply.cut else "STOP"
    head = {"modelVersion": call.headers.get("x-mock-model") or call.path["model"], "responseId": new_id("")}
    if not streaming:
        usage = _usage(reply, prompt, reply.output_tokens * candidates, tool_use)
        text = reply_text(reply.output_tokens)
        answer = {"candidates": [_candidate(i, text, finish_reason) for i in range(candidates)], "usageMetadata": usage}
        return JsonAnswer({**answer, **head}, reply.output_tokens)
    parts = list(reply_chunks(reply.output_tokens, call.settings.stream_chunk_tokens)) or [("", 0)]
    chunks: list[tuple[dict[str, Any], int]] = []
    produced = 0
    for number, (text, tokens) in enumerate(parts, start=1):
        produced += tokens
        done = finish_reason if number == len(parts) else None
        chunk = {
            "candidates": [_candidate(i, text, done) for i in range(candidates)],
            "usageMetadata": _usage(reply, prompt, produced * candidates, tool_use),
            **head,
        }
        chunks.append((chunk, tokens))
    if call.query.get("alt") != "sse":
        return JsonAnswer([chunk for chunk, _ in chunks], reply.output_tokens)
    return StreamAnswer([(data_event(chunk), tokens) for chunk, tokens in chunks])


def generate_content(call: Call) -> Answer:
    return _generate(call, streaming=False)


def stream_generate_content(call: Call) -> Answer:
    return _generate(call, streaming=True)


def _embedding(content: Any, config: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """One embedding ({"values": [...]}) of a content, and the content's tokens."""
    if not isinstance(content, dict) or not isinstance(content.get("parts"), list):
        raise ApiError(INVALID_REQUEST, "* EmbedContentRequest.content: content is not specified")
    dimensions = _field(config, "outputDimensionality", "output_dimensionality") or DEFAULT_EMBEDDING_DIMENSIONS
    if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise ApiError(INVALID_REQUEST, f"outputDimensionality must be from 1 to {MAX_DIMENSIONS}, got {dimensions!r}")
    text = "\n".join(part.get("text", "") for part in content["parts"] if isinstance(part, dict))
    return {"values": list(embedding_vector(text, dimensions))}, content_tokens(content["parts"])


def embed_content(call: Call) -> Answer:
    embedding, tokens = _embedding(call.body.get("content"), call.body)
    return JsonAnswer(
        {"embedding": embedding, "usageMetadata": {"promptTokenCount": tokens, "totalTokenCount": tokens}}
    )


def batch_embed_contents(call: Call) -> Answer:
    requests = call.body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise ApiError(INVALID_REQUEST, "* BatchEmbedContentsRequest.requests: requests is not specified")
    expected = f"models/{call.path['model']}"
    embeddings, total = [], 0
    for index, request in enumerate(requests):
        if not isinstance(request, dict) or request.get("model") != expected:
            raise ApiError(
                INVALID_REQUEST, f"* BatchEmbedContentsRequest.requests[{index}].model: must be {expected!r}"
            )
        embedding, tokens = _embedding(request.get("content"), request)
        embeddings.append(embedding)
        total += tokens
    return JsonAnswer(
        {"embeddings": embeddings, "usageMetadata": {"promptTokenCount": total, "totalTokenCount": total}}
    )


def count_tokens(call: Call) -> Answer:
    request = _field(call.body, "generateContentRequest", "generate_content_request") or call.body
    tokens = _prompt_tokens(request)
    answer: dict[str, Any] = {
        "totalTokens": tokens,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": tokens}],
    }
    return JsonAnswer(answer)
