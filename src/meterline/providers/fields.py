"""Type checks for the known fields of a request body, described as a small table per operation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meterline.providers.base import RequestInvalid

_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "an array",
    dict: "an object",
}


@dataclass(frozen=True)
class FieldRule:
    types: tuple[type, ...]
    required: bool = False


def _matches(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def check_fields(body: dict[str, Any], rules: dict[str, FieldRule]) -> None:
    """Raise `RequestInvalid` for the first missing required field or known field of the wrong type."""
    for name, rule in rules.items():
        if name not in body or body[name] is None:
            if rule.required:
                raise RequestInvalid(f"missing required field '{name}'", param=name)
            continue
        if not _matches(body[name], rule.types):
            expected = " or ".join(_TYPE_NAMES[t] for t in rule.types)
            got = type(body[name]).__name__
            raise RequestInvalid(f"field '{name}' must be {expected}, got {got}", param=name)


def text_of_content(content: Any) -> str:
    """The text inside a message `content`: a string, or a list of parts with `text` fields.

    A dict is read by its first key of `text`, `content`, `input_text` and `parts` (Gemini's
    `{"role": ..., "parts": [{"text": ...}]}`), so a whole message works too.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(text_of_content(part) for part in content)
    if isinstance(content, dict):
        for key in ("text", "content", "input_text", "parts"):
            if key in content:
                return text_of_content(content[key])
    return ""


def positive_int(body: dict[str, Any], *names: str) -> int | None:
    """The first of `names` that holds a positive integer."""
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
