"""Deterministic token counting and reply text for the mock provider.

The rule: a text's token count is its number of whitespace-separated words
(`len(text.split())`), so "Hello, world!" is 2 tokens and "" is 0. A request's input tokens
are the tokens of all its text (string contents, and the `text` of every content part or
block, including blocks nested in a part's `content`, such as tool results) plus
`MESSAGE_OVERHEAD` for every message and for a top-level system prompt or instructions.
Structured parts count the word runs (runs of letters, digits and `_`) of their compact JSON:
each tool definition in `tools` (as sent), each tool call a message carries (a chat
`tool_calls` entry's `function`, a Responses `function_call` item's name and arguments, an
Anthropic `tool_use` block's name and input). A Responses `function_call_output` counts its
`output` text. Each image part (`image_url`, `input_image`, Anthropic `image`) counts
`IMAGE_TOKENS`, OpenAI's price of a low-detail image. A prompt or embedding input given as
a token array counts its length.

The reply to a request for N output tokens is the N words "word0 word1 ... wordN-1", which
is exactly N tokens by the same rule.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import orjson

MESSAGE_OVERHEAD = 3
IMAGE_TOKENS = 85
IMAGE_PART_TYPES = frozenset({"image_url", "input_image", "image"})
_WORD_RUN = re.compile(r"\w+")


def count_tokens(text: str) -> int:
    """Number of whitespace-separated words in `text`."""
    return len(text.split())


def structure_tokens(value: Any) -> int:
    """Tokens of structured data (a tool definition, a tool call): the word runs of its compact JSON."""
    return len(_WORD_RUN.findall(orjson.dumps(value).decode()))


def content_tokens(content: object) -> int:
    """Tokens of a message content: a string, or a list of strings, text parts, images and tool-use blocks."""
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, str):
            total += count_tokens(part)
        elif isinstance(part, dict):
            total += _part_tokens(part)
    return total


def _part_tokens(part: dict[str, Any]) -> int:
    if part.get("type") in IMAGE_PART_TYPES:
        return IMAGE_TOKENS
    if part.get("type") == "tool_use":
        return structure_tokens([part.get("name"), part.get("input")])
    total = 0
    text = part.get("text")
    if isinstance(text, str):
        total += count_tokens(text)
    if "content" in part:
        total += content_tokens(part["content"])
    return total


def messages_tokens(messages: list[object]) -> int:
    """Tokens of a list of messages (or Responses input items), each plus the per-message overhead."""
    return sum(MESSAGE_OVERHEAD + _message_tokens(message) for message in messages if isinstance(message, dict))


def _message_tokens(message: dict[str, Any]) -> int:
    kind = message.get("type")
    if kind == "function_call":
        return structure_tokens([message.get("name"), message.get("arguments")])
    if kind == "function_call_output":
        output = message.get("output")
        return content_tokens(output) if isinstance(output, str | list) else 0
    total = content_tokens(message.get("content"))
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        total += sum(structure_tokens(call.get("function")) for call in tool_calls if isinstance(call, dict))
    return total


def tools_tokens(body: dict[str, Any]) -> int:
    """Tokens of a request's tool definitions (`tools`), each counted as structured data."""
    tools = body.get("tools")
    return sum(structure_tokens(tool) for tool in tools) if isinstance(tools, list) else 0


def prompt_tokens(prompt: object) -> int:
    """Tokens of one prompt or embedding input: a string, or an array of token ids."""
    if isinstance(prompt, str):
        return count_tokens(prompt)
    if isinstance(prompt, list):
        return len(prompt)
    return 0


@lru_cache(maxsize=64)
def reply_text(output_tokens: int) -> str:
    """The reply of `output_tokens` tokens: "word0 word1 ..."."""
    return " ".join(f"word{index}" for index in range(output_tokens))


@lru_cache(maxsize=64)
def reply_chunks(output_tokens: int, chunk_tokens: int) -> tuple[tuple[str, int], ...]:
    """The reply split into stream deltas of `chunk_tokens` tokens: (text, tokens) pairs.

    The texts concatenate to exactly `reply_text(output_tokens)`.
    """
    words = reply_text(output_tokens).split(" ") if output_tokens else []
    chunks = []
    for start in range(0, len(words), chunk_tokens):
        group = words[start : start + chunk_tokens]
        text = " ".join(group)
        chunks.append((text if start == 0 else " " + text, len(group)))
    return tuple(chunks)
