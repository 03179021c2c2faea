"""The OpenAI Responses API (`POST /v1/responses`), plain and streamed.

`input` is a string (one user message) or a list of input items (each counted as a message);
`instructions` counts as one more. A reply cut by `max_output_tokens` has status
"incomplete" with `incomplete_details.reason` "max_output_tokens", and its stream ends with
`response.incomplete` instead of `response.completed`. Stream events are named after their
`type` and numbered by `sequence_number`. Reasoning tokens (`x-mock-reasoning-tokens`) are
reported in usage only; no reasoning output item is produced.
"""

from __future__ import annotations

import time
from typing import Any

from meterline.mock_provider.delivery import JsonAnswer, StreamAnswer
from meterline.mock_provider.openai_routes import require_model
from meterline.mock_provider.pipeline import Answer, Call
from meterline.mock_provider.reply import Reply, new_id
from meterline.mock_provider.sse import typed_event
from meterline.mock_provider.tokens import (
    MESSAGE_OVERHEAD,
    count_tokens,
    messages_tokens,
    reply_chunks,
    reply_text,
)


def responses(call: Call) -> Answer:
    body = call.body
    model = require_model(body)
    reply = call.plan("max_output_tokens")
    status = "incomplete" if reply.cut else "completed"
    response_id, message_id, created = new_id("resp_"), new_id("msg_"), int(time.time())
    text = reply_text(reply.output_tokens)
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    message = {"id": message_id, "type": "message", "status": status, "role": "assistant", "content": [part]}
    usage = _usage(reply, reply.prompt_total(_input_tokens(body)))
    final = _response(body, model, response_id, created, status, [message], usage)
    if not body.get("stream"):
        return JsonAnswer(final, reply.output_tokens)

    events: list[tuple[bytes, int]] = []

    def emit(payload: dict[str, Any], tokens: int = 0) -> None:
        events.append((typed_event({**payload, "sequence_number": len(events)}), tokens))

    in_progress = _response(body, model, response_id, created, "in_progress", [], None)
    location = {"item_id": message_id, "output_index": 0, "content_index": 0}
    emit({"type": "response.created", "response": in_progress})
    emit({"type": "response.in_progress", "response": in_progress})
    emit(
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {**message, "status": "in_progress", "content": []},
        }
    )
    emit({"type": "response.content_part.added", **location, "part": {**part, "text": ""}})
    for delta, tokens in reply_chunks(reply.output_tokens, call.settings.stream_chunk_tokens):
        emit({"type": "response.output_text.delta", **location, "delta": delta, "logprobs": []}, tokens)
    emit({"type": "response.output_text.done", **location, "text": text, "logprobs": []})
    emit({"type": "response.content_part.done", **location, "part": part})
    emit({"type": "response.output_item.done", "output_index": 0, "item": message})
    emit({"type": f"response.{status}", "response": final})
    return StreamAnswer(events)


def _input_tokens(body: dict[str, Any]) -> int:
    items = body.get("input")
    instructions = body.get("instructions")
    tokens = 0
    if isinstance(items, str):
        tokens += MESSAGE_OVERHEAD + count_tokens(items)
    elif isinstance(items, list):
        tokens += messages_tokens(items)
    if isinstance(instructions, str) and instructions:
        tokens += MESSAGE_OVERHEAD + count_tokens(instructions)
    return tokens


def _usage(reply: Reply, input_tokens: int) -> dict[str, Any]:
    output_tokens = reply.output_tokens + reply.reasoning_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {
            "cached_tokens": reply.cached_tokens,
            "cache_write_tokens": reply.cache_write_tokens,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def _response(
    body: dict[str, Any],
    model: str,
    response_id: str,
    created: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """The `response` object; request settings are echoed as the real API does."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": created if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
    }
