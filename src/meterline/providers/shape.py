"""The shape of a request: hashes and counts the insights detectors read, never the prompt text.

Each client-facing `Dialect` knows where its wire format keeps the system instructions, the
messages and the tools, and builds a `RequestShape` with `shape_of`. Hashes are SHA-256 cut to
128 bits (hex) over canonical JSON (keys sorted), so two bodies that differ only in key order or
whitespace hash alike (SHA-256 is the standard library's fastest digest where the CPU has SHA
instructions: about three times BLAKE2b's speed on a 15 kB body). The token estimate of the
leading part is cached by its hash: the same system prompt sent again costs one hash, not a
second tokenizer pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from meterline.providers.estimate import estimate_tokens
from meterline.providers.fields import text_of_content

_PREFIX_TOKENS_CACHED = 4096
_prefix_tokens: dict[str, int] = {}


@dataclass(frozen=True, slots=True)
class RequestShape:
    """What the event records about a request body; see the fields of the same names on `UsageEvent`."""

    request_hash: str
    prefix_hash: str | None
    system_tokens: int
    max_tokens: int | None
    n_messages: int
    tools_count: int


def content_hash(value: Any) -> str:
    """The first 128 bits of SHA-256 of `value` as canonical JSON (sorted keys), in hex."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


def shape_of(
    body: Mapping[str, Any],
    *,
    answer_neutral: Iterable[str],
    instructions: list[Any],
    tools: Any,
    n_messages: int,
    max_tokens: int | None,
) -> RequestShape:
    """The shape of `body`.

    `answer_neutral` names the body's fields that do not change the answer (streaming, the end
    user's id): they are left out of `request_hash`, and so is `model` (Gemini names the model in
    the URL, not the body; the detectors pair the hash with the event's model where it matters,
    and a client falling back to another model after a failure is still resending the same call).
    `instructions` are the contents of the request's leading system/developer parts (strings or
    content blocks); with `tools` (the body's tool definitions) they make the prefix that provider
    prompt caching can reuse.
    """
    neutral = {"model", *answer_neutral}
    request_hash = content_hash({name: value for name, value in body.items() if name not in neutral})
    tool_list = tools if isinstance(tools, list) else []
    if not instructions and not tool_list:
        return RequestShape(request_hash, None, 0, max_tokens, n_messages, 0)
    prefix_hash = content_hash([instructions, tool_list])
    system_tokens = _prefix_tokens.get(prefix_hash)
    if system_tokens is None:
        text = "\n".join(text_of_content(part) for part in instructions)
        if tool_list:
            text += "\n" + orjson.dumps(tool_list).decode()
        if len(_prefix_tokens) >= _PREFIX_TOKENS_CACHED:
            _prefix_tokens.clear()
        system_tokens = _prefix_tokens[prefix_hash] = estimate_tokens(text)
    return RequestShape(request_hash, prefix_hash, system_tokens, max_tokens, n_messages, len(tool_list))


def count_of(value: Any) -> int:
    """How many items an input holds: a list's length, 1 for anything else that is set."""
    if isinstance(value, list):
        return len(value)
    return 0 if value is None else 1
