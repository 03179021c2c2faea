"""Fault injection shared by both provider families.

A request gets the fault named by its `x-mock-fault` header, else the server's default fault
on its `fault_rate` share of requests. With `x-mock-fault-times: N` (and optionally
`x-mock-fault-key: K`), only the first N requests carrying that key are faulted; later ones
succeed, which is what retry tests need. With `x-mock-fault-model: A,B` only requests for those
models (the body's `model`) are faulted, so a fallback to another model can succeed. Faults:

- `rate_limit`: 429 with `retry-after` (whole seconds, rounded up) and `retry-after-ms`;
  `x-mock-retry-after: S` sets the delay (default 1 s);
- `server_error`: 500; `overloaded`: 529 (Anthropic `overloaded_error`) or 503 (OpenAI);
- `context_length`: 400, OpenAI code `context_length_exceeded` / Anthropic "prompt is too long";
- `auth`: 401;
- `timeout`: wait `x-mock-timeout-s` seconds (default 30) before answering normally;
- `malformed`: 200 whose body is not JSON (in a stream, an SSE event whose data is not JSON);
- `disconnect`: a stream stops after half its events (before the usage and the end marker)
  and the connection is closed; a non-stream request has its connection closed unanswered;
- `truncated`: the connection is closed after half the body's bytes (a JSON body declares its
  full Content-Length; a stream is cut mid-event);
- `stall`: half the answer (half a stream's events, half a JSON body's bytes) is sent, then the
  mock goes silent for `x-mock-timeout-s` seconds (default 30) before sending the rest;
- `stream_error`: a stream sends half its events, then the error its API sends when a stream
  fails (chat and completions a `data: {"error": ...}` chunk, the Responses API an `error`
  event and `response.failed`, Anthropic an `overloaded_error` `error` event) and ends; a
  non-stream request gets a 500.

`ERROR_FAULTS` answer at once with an error; `DELIVERY_FAULTS` change how the answer is sent
(see `delivery.py`); `timeout` delays it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from meterline.mock_provider.errors import (
    AUTHENTICATION,
    CONTEXT_LENGTH,
    INVALID_REQUEST,
    OVERLOADED,
    RATE_LIMIT,
    SERVER,
    ApiError,
    header_int,
    header_seconds,
)

ERROR_FAULTS = {
    "rate_limit": RATE_LIMIT,
    "server_error": SERVER,
    "overloaded": OVERLOADED,
    "context_length": CONTEXT_LENGTH,
    "auth": AUTHENTICATION,
}
TIMEOUT = "timeout"
MALFORMED = "malformed"
DISCONNECT = "disconnect"
TRUNCATED = "truncated"
STALL = "stall"
STREAM_ERROR = "stream_error"
DELIVERY_FAULTS = (MALFORMED, DISCONNECT, TRUNCATED, STALL, STREAM_ERROR)
FAULT_NAMES = (*ERROR_FAULTS, TIMEOUT, *DELIVERY_FAULTS)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_RETRY_AFTER_S = 1.0
_MAX_FAULT_KEYS = 10_000


class FaultInjector:
    """Chooses the fault of each API request; holds the request counter and per-key fault counts."""

    def __init__(self, default_fault: str | None, fault_rate: float) -> None:
        self._default_fault = default_fault
        self._fault_rate = fault_rate
        self._requests_seen = 0
        self._faults_by_key: dict[str, int] = {}

    def choose(self, headers: Mapping[str, str], model: object = None) -> str | None:
        """The fault for this request for `model`, or None; a 400 for an unknown `x-mock-fault`."""
        self._requests_seen += 1
        fault = headers.get("x-mock-fault")
        if fault is None:
            if self._default_fault is None or not self._rate_hit():
                return None
            fault = self._default_fault
        elif fault not in FAULT_NAMES:
            raise ApiError(INVALID_REQUEST, f"unknown x-mock-fault {fault!r}; known faults: {', '.join(FAULT_NAMES)}")
        models = headers.get("x-mock-fault-model")
        if models is not None and model not in [name.strip() for name in models.split(",")]:
            return None
        times = header_int(headers, "x-mock-fault-times")
        if times is not None and self._count_for_key(headers.get("x-mock-fault-key", "")) > times:
            return None
        return fault

    def _rate_hit(self) -> bool:
        seen, rate = self._requests_seen, self._fault_rate
        return math.floor(seen * rate) > math.floor((seen - 1) * rate)

    def _count_for_key(self, key: str) -> int:
        count = self._faults_by_key.pop(key, 0) + 1
        if len(self._faults_by_key) >= _MAX_FAULT_KEYS:
            del self._faults_by_key[next(iter(self._faults_by_key))]
        self._faults_by_key[key] = count
        return count


def fault_error(fault: str, headers: Mapping[str, str]) -> ApiError | None:
    """The error an error fault answers with; None for the other faults."""
    kind = ERROR_FAULTS.get(fault)
    if kind is None:
        return None
    if kind == CONTEXT_LENGTH:
        return ApiError(kind, param="messages")
    if kind != RATE_LIMIT:
        return ApiError(kind)
    retry_after = header_seconds(headers, "x-mock-retry-after", DEFAULT_RETRY_AFTER_S)
    return ApiError(
        kind,
        headers={"retry-after": str(math.ceil(retry_after)), "retry-after-ms": str(round(retry_after * 1000))},
    )


def timeout_seconds(headers: Mapping[str, str]) -> float:
    return header_seconds(headers, "x-mock-timeout-s", DEFAULT_TIMEOUT_S)
