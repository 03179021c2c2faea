"""Sending an answer: pacing (latency, per-token delay) and the faults that damage delivery.

A route returns a `JsonAnswer` or a `StreamAnswer` (all its SSE events, built up front since
the reply is deterministic); `deliver` sends it. A JSON answer waits `latency_ms` plus
`per_token_ms` per output token. A stream sends its headers at once, waits `latency_ms`,
then sends its events, waiting `per_token_ms` per token before each content event (without a
per-token delay the whole stream goes out in one write).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from meterline.mock_provider.faults import DISCONNECT, MALFORMED, STALL, STREAM_ERROR, TRUNCATED, timeout_seconds
from meterline.mock_provider.settings import MockSettings

JSON_CONTENT_TYPE = "application/json"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
MALFORMED_BODY = b'{"id": "mock-malformed", "choices": [{"index": 0, "mess'


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    body: Any
    output_tokens: int = 0


@dataclass(frozen=True, slots=True)
class StreamAnswer:
    events: list[tuple[bytes, int]]  # (encoded SSE event, output tokens it carries)
    failure: Callable[[int], bytes] | None = None
    """The event(s) the API sends when a stream fails after the given number of events (`stream_error`)."""


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """`payload` as a JSON response."""
    return web.Response(
        status=status, body=orjson.dumps(payload), headers={**(headers or {}), "Content-Type": JSON_CONTENT_TYPE}
    )


async def deliver(
    request: web.Request,
    answer: JsonAnswer | StreamAnswer,
    fault: str | None,
    settings: MockSettings,
    headers: dict[str, str],
) -> web.StreamResponse:
    if isinstance(answer, StreamAnswer):
        events = answer.events
        if fault == MALFORMED:
            events = [(b"data: " + MALFORMED_BODY + b"\n\n", 0)]
        elif fault == DISCONNECT:
            events = events[: max(1, len(events) // 2)]
        elif fault == TRUNCATED:
            payload = b"".join(event for event, _ in events)
            events = [(payload[: len(payload) // 2], 0)]
        elif fault == STREAM_ERROR and answer.failure is not None:
            sent = max(1, len(events) // 2)
            events = [*events[:sent], (answer.failure(sent), 0)]
        stall_s = timeout_seconds(request.headers) if fault == STALL else None
        return await _send_stream(request, events, fault in (DISCONNECT, TRUNCATED), settings, headers, stall_s)
    delay_ms = settings.latency_ms + settings.per_token_ms * answer.output_tokens
    if delay_ms:
        await asyncio.sleep(delay_ms / 1000)
    headers["Content-Type"] = JSON_CONTENT_TYPE
    if fault == MALFORMED:
        return web.Response(body=MALFORMED_BODY, headers=headers)
    body = orjson.dumps(answer.body)
    if fault == DISCONNECT:
        _close_connection(request)
        return web.Response()  # never reaches the client: its connection is closed
    if fault in (TRUNCATED, STALL):
        response = web.StreamResponse(headers=headers)
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        if fault == TRUNCATED:
            _close_connection(request)
            return response
        await asyncio.sleep(timeout_seconds(request.headers))
        await response.write(body[len(body) // 2 :])
        return response
    return web.Response(body=body, headers=headers)


async def _send_stream(
    request: web.Request,
    events: list[tuple[bytes, int]],
    cut_off: bool,
    settings: MockSettings,
    headers: dict[str, str],
    stall_s: float | None = None,
) -> web.StreamResponse:
    """Send `events`; with `stall_s`, go silent that long after the first half of them."""
    headers["Content-Type"] = SSE_CONTENT_TYPE
    headers["Cache-Control"] = "no-cache"
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    if settings.latency_ms:
        await asyncio.sleep(settings.latency_ms / 1000)
    try:
        if stall_s is not None:
            half = max(1, len(events) // 2)
            await response.write(b"".join(event for event, _ in events[:half]))
            await asyncio.sleep(stall_s)
            events = events[half:]
        if settings.per_token_ms:
            for event, tokens in events:
                if tokens:
                    await asyncio.sleep(settings.per_token_ms * tokens / 1000)
                await response.write(event)
        else:
            await response.write(b"".join(event for event, _ in events))
    except ConnectionError:  # the client hung up mid-stream: nobody is left to answer
        return response
    if cut_off:
        _close_connection(request)
    return response


def _close_connection(request: web.Request) -> None:
    """Close the connection after what was written so far, so the client sees an early end."""
    if request.transport is not None:
        request.transport.close()
