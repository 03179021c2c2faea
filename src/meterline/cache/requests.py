"""What makes two calls the same: the normalised request, its hash, and the scope that may share it.

A request is normalised by dropping the fields that do not change the answer (the stream flag and
its options, the end-user id, metadata, storage flags) and serialising the rest with sorted keys,
so key order and whitespace do not matter; the request headers that change an answer
(`cache.key_headers`, e.g. `anthropic-beta`) are part of the key. A stream and a JSON answer to the same request are
stored apart (`form`), since each is replayed as it was sent. The scope keeps one caller's answers
from another's: per virtual key, per team, or shared by everyone.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import orjson

from meterline.providers.fields import text_of_content

CacheScope = Literal["key", "team", "shared"]

# fields that change who is billed or how the answer is delivered, not what it says
_NOT_IN_KEY = frozenset({"stream", "stream_options", "user", "metadata", "store", "service_tier"})
# where each operation keeps the conversation whose last user message the semantic cache embeds
_CONVERSATION = {
    "chat": "messages",
    "messages": "messages",
    "responses": "input",
    "completion": "prompt",
    "generate_content": "contents",
}


def _digest(*parts: bytes) -> str:
    hasher = hashlib.blake2b(digest_size=20)
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def form_of(body: dict[str, Any], streaming: bool) -> str:
    """`json`, or `sse` plus the stream options (which decide whether a usage chunk is sent)."""
    if not streaming:
        return "json"
    return "sse:" + _canonical(body.get("stream_options")).decode()


def request_key(operation: str, model: str, body: dict[str, Any], headers: list[str], streaming: bool) -> str:
    """The exact-cache key of a request: a hash of its operation, model, form, answer-changing fields and headers.

    `headers` are the values of the configured `cache.key_headers`, in their configured order;
    `streaming` whether the call streams (the body's flag, or the URL's for Gemini).
    """
    fields = {name: value for name, value in body.items() if name not in _NOT_IN_KEY and name != "model"}
    form = form_of(body, streaming)
    return _digest(operation.encode(), model.encode(), form.encode(), _canonical([fields, headers]))


def scope_of(scope: CacheScope, key_id: str, key_team: str | None, team: str | None) -> str:
    """Who may share an answer with this caller.

    `team`: the key's team when the key belongs to one; a key without a team shares only with
    itself, per team it names in headers (so the master key never mixes teams). `key`: the key,
    per team. `shared`: everyone.
    """
    if scope == "shared":
        return "*"
    if scope == "team" and key_team is not None:
        return "team:" + key_team
    return f"key:{key_id}|team:{team or ''}"


def semantic_prompt(operation: str, model: str, body: dict[str, Any], streaming: bool) -> tuple[str, str] | None:
    """(the last user message's text, a hash of everything else in the request), or None without one.

    The semantic cache embeds the text and matches only requests whose hash agrees, so a similar
    question is answered from cache only under the same system prompt, history, tools and settings.
    """
    field = _CONVERSATION.get(operation)
    conversation = body.get(field) if field else None
    if isinstance(conversation, str):
        text, rest = conversation, None
    elif isinstance(conversation, list):
        users = [i for i, item in enumerate(conversation) if isinstance(item, dict) and item.get("role") == "user"]
        if not users:
            return None
        text = text_of_content(conversation[users[-1]])
        rest = conversation[: users[-1]] + conversation[users[-1] + 1 :]
    else:
        return None
    if not text.strip():
        return None
    fields = {name: value for name, value in body.items() if name not in _NOT_IN_KEY and name not in (field, "model")}
    form = form_of(body, streaming)
    context = _digest(operation.encode(), model.encode(), form.encode(), _canonical([rest, fields]))
    return text, context
