"""Deterministic token counting and reply text for the mock provider.

The rule: a text's token count is its number of whitespace-separated words
(`len(text.split())`), so "Hello, world!" is 2 tokens and "" is 0. A request's input tokens
are the tokens of all its text (string contents, and the `text` of every content part or
block, including blocks nested in a part's `content`, such as tool results) plus
`MESSAGE_OVERHEAD` for every message and for a top-level system prompt or instructions.
Images, tool calls and tool definitions count nothing. A prompt or embedding input given as
a token array counts its length.

The reply to a request for N output tokens is the N words "word0 word1 ... wordN-1", which
is exactly N tokens by the same rule.
"""

from __future__ import annotations

from functools import lru_cache

MESSAGE_OVERHEAD = 3


def count_tokens(text: str) -> int:
    """Number of whitespace-separated words in `text`."""
    return len(text.split())


def content_tokens(content: object) -> int:
    """Tokens of a message content: a string, or a list of strings and parts carrying `text`."""
    if isinstance(content, str):
        return count_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for part in content:
        if isinstance(part, str):
            total += count_tokens(part)
        elif isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                total += count_tokens(text)
            if "content" in part:
                total += content_tokens(part["content"])
    return total


def messages_tokens(messages: list[object]) -> int:
    """Tokens of a list of messages: each message's content plus the per-message overhead."""
    return sum(
        MESSAGE_OVERHEAD + content_tokens(message.get("content")) for message in messages if isinstance(message, dict)
    )


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
