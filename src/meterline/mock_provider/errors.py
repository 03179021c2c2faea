"""The provider-neutral API error the mock raises, and strict readers for `x-mock-*` headers.

Routes and faults raise `ApiError` with a `kind`; each provider family renders it in its
own error shape and status (see `openai_routes.render_error`, `anthropic_routes.render_error`).
A `message` of None means "the family's standard message for this kind".
"""

from __future__ import annotations

from collections.abc import Mapping

INVALID_REQUEST = "invalid_request"
AUTHENTICATION = "authentication"
RATE_LIMIT = "rate_limit"
SERVER = "server"
OVERLOADED = "overloaded"
CONTEXT_LENGTH = "context_length"
NOT_FOUND = "not_found"
UNPROCESSABLE = "unprocessable"


class ApiError(Exception):
    """An error answer: its kind, message, and (OpenAI) `param`/`code`, plus extra response headers."""

    def __init__(
        self,
        kind: str,
        message: str | None = None,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message or kind)
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code
        self.headers = dict(headers or {})


def header_int(headers: Mapping[str, str], name: str) -> int | None:
    """A non-negative integer header, None when absent; a 400 when it is not one."""
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ApiError(INVALID_REQUEST, f"header {name} must be a non-negative integer, got {value!r}")
    return number


def header_seconds(headers: Mapping[str, str], name: str, default: float) -> float:
    """A non-negative number of seconds from a header, `default` when absent; a 400 when invalid."""
    value = headers.get(name)
    if value is None:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ApiError(INVALID_REQUEST, f"header {name} must be a non-negative number, got {value!r}")
    return seconds
