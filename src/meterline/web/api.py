"""The JSON API under /api/v1 and the health checks.

`GET /api/v1/events` lists stored events, newest first, with filters and a cursor; it is how
users and tests see what was recorded (see `meterline.analytics.events`). The analytics
endpoints are in `meterline.web.analytics_api`; both answer errors with `api_error`.
`GET /health` answers while the process runs; `GET /ready` answers 200 while the spool takes events
(a store outage is reported in its checks but does not fail it: the events wait in the spool).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from meterline.analytics.events import events_page
from meterline.analytics.params import BadParameter, parse_time
from meterline.events.loader import SpoolLoader
from meterline.pricing.table import PriceTable
from meterline.store.base import Store
from meterline.web.auth import Unauthorized, WebAuth

__all__ = ["Api", "BadParameter", "api_error", "health", "parse_time"]


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


Handler = Callable[[Any, web.Request], Awaitable[web.StreamResponse]]


def caller_checked(handler: Handler) -> Handler:
    """Decorates an API handler method so the `Unauthorized` its auth check raises answers as a 401/403."""

    @functools.wraps(handler)
    async def answer(self: Any, request: web.Request) -> web.StreamResponse:
        try:
            return await handler(self, request)
        except Unauthorized as exc:
            return api_error(exc.status, str(exc))

    return answer


def api_error(status: int, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "api_error"}}
    if param:
        body["error"]["param"] = param
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class Api:
    def __init__(self, store: Store, loader: SpoolLoader, auth: WebAuth, price_table: PriceTable):
        self.store = store
        self.loader = loader
        self.auth = auth
        self.price_table = price_table

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health", health),
            web.get("/ready", self.ready),
            web.get("/api/v1/events", self.events),
        ]

    async def ready(self, request: web.Request) -> web.Response:
        # ready = LLM calls can be taken without losing their events: the spool must be writable. A store
        # outage is reported but does not take the process out of rotation: events wait in the spool.
        store_ok = await asyncio.to_thread(self.store.ping)
        spool_ok = self.loader.writer.writable()
        checks = {
            "store": "ok" if store_ok else "unreachable (events wait in the spool)",
            "spool": "ok" if spool_ok else "not writable",
        }
        ready = spool_ok
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503
        )

    @caller_checked
    async def events(self, request: web.Request) -> web.Response:
        _, scope = self.auth.reader(request)
        try:
            body = await asyncio.to_thread(events_page, self.store, self.price_table, dict(request.query), scope)
        except BadParameter as exc:
            return api_error(400, str(exc), exc.param)
        return web.Response(body=orjson.dumps(body), content_type="application/json")
