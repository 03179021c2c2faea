"""The request pipeline every API route shares, and the mock's in-memory state.

For each API request: read and record it, check the key (`require_key`), check the family's
required header and query parameter, choose a fault (answer an error fault at once, wait out a
`timeout`), reject a body that is not a JSON object, run the route, and deliver its answer. A
route is a plain function from a `Call` to an answer; it raises `ApiError` to refuse a request.
A model named in the URL (Gemini's `/models/{model}:...`, Azure's `/deployments/{model}/...`)
counts as the request's model for `x-mock-fault-model`. `x-mock-set-cookie: <value>` makes the
answer carry `Set-Cookie: <value>`, as the CDN in front of a provider's API sets its cookies.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from meterline.mock_provider.delivery import JsonAnswer, StreamAnswer, deliver
from meterline.mock_provider.errors import AUTHENTICATION, INVALID_REQUEST, NOT_FOUND, SERVER, ApiError
from meterline.mock_provider.faults import STREAM_ERROR, TIMEOUT, FaultInjector, fault_error, timeout_seconds
from meterline.mock_provider.reply import Reply, new_id, plan_reply
from meterline.mock_provider.settings import MockSettings

REQUEST_LOG_SIZE = 100

Answer = JsonAnswer | StreamAnswer
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Family:
    """What differs between provider families outside their routes."""

    render_error: Callable[[ApiError], web.Response]
    request_id_header: str
    required_header: str | None = None
    required_query: str | None = None
    """A query parameter without which the URL is not found (Azure's `api-version`)."""


@dataclass(frozen=True, slots=True)
class Call:
    """One validated API request as a route sees it."""

    headers: Mapping[str, str]
    body: dict[str, Any]
    settings: MockSettings
    path: Mapping[str, str] = field(default_factory=dict)
    """The URL's variable parts (`model`)."""
    query: Mapping[str, str] = field(default_factory=dict)

    def plan(self, *limit_fields: str) -> Reply:
        """The reply plan, capped by the first of `limit_fields` the body sets."""
        return plan_reply(self.headers, self.body, self.settings.default_output_tokens, limit_fields)


Route = Callable[[Call], Answer]

# method, path, query string, raw headers, parsed body (None when absent or invalid); kept raw so
# the hot path does no conversion, see `received_requests`
ReceivedRequest = tuple[str, str, str, tuple[tuple[bytes, bytes], ...], dict[str, Any] | None]


class MockState:
    """Settings, the log of recent requests, and fault state of one mock server."""

    def __init__(self, settings: MockSettings) -> None:
        self.settings = settings
        self.requests: deque[ReceivedRequest] = deque(maxlen=REQUEST_LOG_SIZE)
        self.faults = FaultInjector(settings.fault, settings.fault_rate)
        self._bearer = f"Bearer {settings.require_key}"

    def authorised(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        """True when no key is required or the request carries it the way some provider's clients send keys:
        a Bearer token, `x-api-key`, `api-key` (Azure), `x-goog-api-key` or `?key=` (Gemini)."""
        key = self.settings.require_key
        if key is None or headers.get("authorization") == self._bearer or query.get("key") == key:
            return True
        return key in (headers.get("x-api-key"), headers.get("api-key"), headers.get("x-goog-api-key"))

    def received_requests(self) -> list[dict[str, Any]]:
        """The request log as JSON-ready dicts, oldest first, header names in lower case."""
        return [
            {
                "method": method,
                "path": path,
                "query": query,
                "headers": {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw_headers},
                "body": body,
            }
            for method, path, query, raw_headers, body in self.requests
        ]


def make_handler(state: MockState, family: Family, route: Route, *, takes_body: bool = True) -> Handler:
    """An aiohttp handler running `route` through the shared pipeline."""

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = request.headers
        body, body_error = _parse_body(await request.read()) if takes_body else ({}, None)
        state.requests.append(
            (
                request.method,
                request.path,
                request.query_string,
                request.raw_headers,
                body if takes_body and body_error is None else None,
            )
        )
        response_headers = {family.request_id_header: new_id("req_")}
        if (cookie := headers.get("x-mock-set-cookie")) is not None:  # as providers' edges set __cf_bm and the like
            response_headers["Set-Cookie"] = cookie
        path, query = request.match_info, request.query
        try:
            if not state.authorised(headers, query):
                raise ApiError(AUTHENTICATION)
            if family.required_header is not None and family.required_header not in headers:
                raise ApiError(INVALID_REQUEST, f"{family.required_header}: header is required")
            if family.required_query is not None and family.required_query not in query:
                raise ApiError(NOT_FOUND)
            fault = state.faults.choose(headers, body.get("model") or path.get("model"))
            if fault is not None:
                error = fault_error(fault, headers)
                if error is not None:
                    raise error
                if fault == TIMEOUT:
                    await asyncio.sleep(timeout_seconds(headers))
            if body_error is not None:
                raise body_error
            answer = route(Call(headers, body, state.settings, path, query))
            if fault == STREAM_ERROR and not isinstance(answer, StreamAnswer):
                raise ApiError(SERVER)
        except ApiError as error:
            response = family.render_error(error)
            response.headers.update(response_headers)
            return response
        return await deliver(request, answer, fault, state.settings, response_headers)

    return handle


RawRoute = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_raw_handler(state: MockState, family: Family, route: RawRoute) -> Handler:
    """An aiohttp handler for a route that reads the request itself (uploads, downloads, lookups by id).

    The request is logged (with its body when that is JSON) and its key checked; an `ApiError`
    the route raises is rendered in the family's shape. No faults are injected.
    """

    async def handle(request: web.Request) -> web.StreamResponse:
        body = None
        if request.content_type == "application/json":
            parsed, body_error = _parse_body(await request.read())
            body = parsed if body_error is None else None
        state.requests.append((request.method, request.path, request.query_string, request.raw_headers, body))
        try:
            if not state.authorised(request.headers, request.query):
                raise ApiError(AUTHENTICATION)
            response = await route(request)
        except ApiError as error:
            response = family.render_error(error)
        response.headers[family.request_id_header] = new_id("req_")
        return response

    return handle


def _parse_body(raw: bytes) -> tuple[dict[str, Any], ApiError | None]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return {}, ApiError(INVALID_REQUEST, f"The request body is not valid JSON: {error}")
    if not isinstance(body, dict):
        return {}, ApiError(INVALID_REQUEST, "The request body must be a JSON object.")
    return body, None
