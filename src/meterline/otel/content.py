"""Prompts and responses as `gen_ai.input.messages` / `gen_ai.output.messages`, only when asked for.

Exported only with `otel.export.capture_content: true`: content then leaves meterline for the
configured collector as it was sent, unredacted. The values follow the GenAI conventions' message
shape (`[{"role", "parts": [{"type": "text", "content"}]}]`), serialised as JSON strings
because span attributes cannot hold nested maps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from meterline.otel import names
from meterline.providers.fields import text_of_content


def _message(role: str, text: str, **extra: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": text}], **extra}


def input_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The request's messages: `system`/`instructions`, then `messages`, or a bare `prompt`/`input`."""
    messages = []
    for field in ("system", "instructions"):
        if body.get(field):
            messages.append(_message("system", text_of_content(body[field])))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            messages.append(_message(str(message.get("role") or "user"), text_of_content(message.get("content"))))
    for field in ("prompt", "input"):
        if field in body:
            messages.append(_message("user", text_of_content(body[field])))
    return messages


def content_attributes(body: Mapping[str, Any], output_text: str | None, finish_reason: str | None) -> dict[str, str]:
    """The content attributes of the attempt that answered."""
    attributes = {names.INPUT_MESSAGES: orjson.dumps(input_messages(body)).decode()}
    if output_text is not None:
        extra = {"finish_reason": finish_reason} if finish_reason else {}
        attributes[names.OUTPUT_MESSAGES] = orjson.dumps([_message("assistant", output_text, **extra)]).decode()
    return attributes
