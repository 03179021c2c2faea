"""Server-sent event encoding for both families' streams.

OpenAI chat and completion streams send bare `data:` events ending with `data: [DONE]`;
the Responses API and Anthropic name each event after its payload's `type`.
"""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def data_event(payload: Any) -> bytes:
    """`data: {json}` followed by a blank line."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def typed_event(payload: dict[str, Any]) -> bytes:
    """`event: {payload["type"]}` then `data: {json}` and a blank line."""
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"
