"""The OpenAI Responses API (`POST /v1/responses`), plain and streamed.

`input` is a string (one user message) or a list of input items (each counted as a message,
tool calls and their outputs included); `instructions` counts as one more, and tool
definitions and images count as `tokens.py` says. A reply cut by `max_output_tokens` has status
"incomplete" with `incomplete_details.reason` "max_output_tokens", and its stream ends with
`response.incomplete` instead of `response.completed`.

Output items: with reasoning tokens (`x-mock-reasoning-tokens`) a `reasoning` item comes
first (reasoning tokens are reported in usage, the item has an empty summary). Then, when
`tool_choice` is "required" or names a function, a `function_call` to that function (or the
first function tool) whose `arguments` are a JSON object with one string argument (the
function's first required parameter, else its first parameter, else "input") holding the
reply text; otherwise an assistant `message` with the reply text. Either way the visible
reply is the planned output tokens.

Streams name each event after its `type` and number it by `sequence_number`: `response.created`,
`response.in_progress`, per item `response.output_item.added`, its content (`content_part` and
`output_text` events for a message, `function_call_arguments` deltas for a tool call) and
`response.output_item.done`, then the terminal event carrying the whole response with usage.
Under the `stream_error` fault a stream stops half-way with an `error` event followed by
`response.failed` (status "failed", `error.code` "server_error", no usage).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from meterline.mock_provider.delivery import JsonAnswer, StreamAnswer
from meterline.mock_provider.errors import INVALID_REQUEST, ApiError
from meterline.mock_provider.openai_routes import require_model, served_tier
from meterline.mock_provider.pipeline import Answer, Call
from meterline.mock_provider.reply import Reply, new_id
from meterline.mock_provider.sse import typed_event
from meterline.mock_provider.tokens import (
    MESSAGE_OVERHEAD,
    count_tokens,
    messages_tokens,
    reply_chunks,
    reply_text,
    tools_tokens,
)

STREAM_FAILURE_MESSAGE = "The server had an error while processing your request (mock fault)."


def responses(call: Call) -> Answer:
    body = call.body
    model = require_model(body)
    reply = call.plan("max_output_tokens")
    tier = served_tier(call)
    status = "incomplete" if reply.cut else "completed"
    response_id, created = new_id("resp_"), int(time.time())
    items: list[dict[str, Any]] = []
    if reply.reasoning_tokens:
        items.append({"id": new_id("rs_"), "type": "reasoning", "summary": [], "status": status})
    function = _forced_function(body)
    if function is None:
        part = {"type": "output_text", "text": reply_text(reply.output_tokens), "annotations": [], "logprobs": []}
        items.append(
            {"id": new_id("msg_"), "type": "message", "status": status, "role": "assistant", "content": [part]}
        )
    else:
        items.append(_function_call(function, reply, status))
    usage = _usage(reply, reply.prompt_total(_input_tokens(body)))

    def response(state: str, output: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        return _response(body, model, response_id, created, tier, state, output, **fields)

    final = response(status, items, usage=usage)
    if not body.get("stream"):
        return JsonAnswer(final, reply.output_tokens)

    events: list[tuple[bytes, int]] = []

    def emit(payload: dict[str, Any], tokens: int = 0) -> None:
        events.append((typed_event({**payload, "sequence_number": len(events)}), tokens))

    emit({"type": "response.created", "response": response("in_progress", [])})
    emit({"type": "response.in_progress", "response": response("in_progress", [])})
    for index, item in enumerate(items):
        _item_events(emit, index, item, reply.output_tokens, call.settings.stream_chunk_tokens)
    emit({"type": f"response.{status}", "response": final})

    def failure(sent: int) -> bytes:
        error = {"code": "server_error", "message": STREAM_FAILURE_MESSAGE}
        return typed_event({"type": "error", **error, "param": None, "sequence_number": sent}) + typed_event(
            {"type": "response.failed", "sequence_number": sent + 1, "response": response("failed", [], error=error)}
        )

    return StreamAnswer(events, failure)


Emit = Callable[..., None]


def _item_events(emit: Emit, index: int, item: dict[str, Any], output_tokens: int, chunk_tokens: int) -> None:
    """The events that stream one output item: added, its content as it is produced, done."""
    kind = item["type"]
    if kind == "message":
        emit(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "status": "in_progress", "content": []},
            }
        )
        part = item["content"][0]
        location = {"item_id": item["id"], "output_index": index, "content_index": 0}
        emit({"type": "response.content_part.added", **location, "part": {**part, "text": ""}})
        for delta, tokens in reply_chunks(output_tokens, chunk_tokens):
            emit({"type": "response.output_text.delta", **location, "delta": delta, "logprobs": []}, tokens)
        emit({"type": "response.output_text.done", **location, "text": part["text"], "logprobs": []})
        emit({"type": "response.content_part.done", **location, "part": part})
    elif kind == "function_call":
        emit(
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": {**item, "status": "in_progress", "arguments": ""},
            }
        )
        location = {"item_id": item["id"], "output_index": index}
        arguments, text = item["arguments"], reply_text(output_tokens)
        # written as produced: the JSON before the argument's text, the text in chunks, the closing '"}'
        opening = arguments[: len(arguments) - len(text) - 2]
        for delta, tokens in [(opening, 0), *reply_chunks(output_tokens, chunk_tokens), (arguments[-2:], 0)]:
            emit({"type": "response.function_call_arguments.delta", **location, "delta": delta}, tokens)
        emit(
            {"type": "response.function_call_arguments.done", **location, "name": item["name"], "arguments": arguments}
        )
    else:
        emit({"type": "response.output_item.added", "output_index": index, "item": {**item, "status": "in_progress"}})
    emit({"type": "response.output_item.done", "output_index": index, "item": item})


def _forced_function(body: dict[str, Any]) -> dict[str, Any] | None:
    """The function tool `tool_choice` makes the model call, or None when it may answer in text."""
    choice = body.get("tool_choice")
    tools = body.get("tools")
    functions = (
        [tool for tool in tools if isinstance(tool, dict) and tool.get("type") == "function"]
        if isinstance(tools, list)
        else []
    )
    if choice == "required":
        if not functions:
            raise ApiError(
                INVALID_REQUEST, "tool_choice 'required' needs at least one function tool.", param="tool_choice"
            )
        return functions[0]
    if isinstance(choice, dict) and choice.get("type") == "function":
        named = [tool for tool in functions if tool.get("name") == choice.get("name")]
        if not named:
            raise ApiError(
                INVALID_REQUEST,
                f"Tool choice '{choice.get('name')}' not found in 'tools' parameter.",
                param="tool_choice",
            )
        return named[0]
    return None


def _function_call(function: dict[str, Any], reply: Reply, status: str) -> dict[str, Any]:
    parameters = function.get("parameters") if isinstance(function.get("parameters"), dict) else {}
    required = parameters.get("required") if isinstance(parameters.get("required"), list) else []
    properties = parameters.get("properties") if isinstance(parameters.get("properties"), dict) else {}
    argument = next(iter([*required, *properties]), "input")
    return {
        "id": new_id("fc_"),
        "type": "function_call",
        "status": status,
        "call_id": new_id("call_"),
        "name": function.get("name"),
        "arguments": orjson.dumps({argument: reply_text(reply.output_tokens)}).decode(),
    }


def _input_tokens(body: dict[str, Any]) -> int:
    items = body.get("input")
    instructions = body.get("instructions")
    tokens = tools_tokens(body)
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
    service_tier: str,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The `response` object; request settings are echoed as the real API does."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": created if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata") or {},
        "model": model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": body.get("reasoning") or {"effort": None, "summary": None},
        "service_tier": service_tier,
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
