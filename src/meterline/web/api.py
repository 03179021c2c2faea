"""The JSON API under /api/v1 and the health checks.

`GET /api/v1/events` lists stored events, newest first, with filters and a cursor; it is how
users and tests see what was recorded. `cost_basis=current` re-prices each listed event from
the price table in force instead of showing the cost recorded at request time.
`GET /health` answers while the process runs; `GET /ready` checks the store and the spool.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson
from aiohttp import web

from meterline.events.loader import SpoolLoader
from meterline.events.schema import UsageEvent
from meterline.pricing.table import PriceTable
from meterline.store.base import EventQuery, Store
from meterline.web.auth import Unauthorized, WebAuth

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_EVENT_FILTERS = ("request_id", "user", "feature", "team", "app", "model", "provider")
_MAX_LIMIT = 1000


class BadParameter(ValueError):
    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def api_error(status: int, message: str, param: str | None = None) -> web.Response:
    body = {"error": {"message": message, "type": "invalid_request_error" if status < 500 else "api_error"}}
    if param:
        body["error"]["param"] = param
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def parse_time(param: str, value: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (UTC if no offset) or a span back from now such as `15m`, `24h`, `7d`."""
    match = _RELATIVE.match(value.strip())
    if match:
        amount, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadParameter(param, f"'{param}' must be an ISO-8601 time or a span like 15m, 24h, 7d") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def event_query(params: dict[str, str]) -> EventQuery:
    known = {*_EVENT_FILTERS, "since", "until", "limit", "cursor", "cost_basis"}
    for name in params:
        if name not in known:
            raise BadParameter(name, f"unknown parameter '{name}'; allowed: {', '.join(sorted(known))}")
    limit_text = params.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= _MAX_LIMIT:
        raise BadParameter("limit", f"'limit' must be a whole number from 1 to {_MAX_LIMIT}")
    return EventQuery(
        **{name: params[name] for name in _EVENT_FILTERS if params.get(name)},
        since=parse_time("since", params["since"]) if params.get("since") else None,
        until=parse_time("until", params["until"]) if params.get("until") else None,
        limit=int(limit_text),
        cursor=params.get("cursor") or None,
    )


def repriced(event: UsageEvent, price_table: PriceTable) -> UsageEvent:
    priced = price_table.price_event(event)
    return msgspec.structs.replace(
        event,
        cost_usd=priced.cost_usd if priced else None,
        price_version=priced.price_version if priced else None,
    )


class Api:
    def __init__(self, store: Store, loader: SpoolLoader, auth: WebAuth, price_table: PriceTable):
        self.store = store
        self.loader = loader
        self.auth = auth
        self.price_table = price_table

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/health", self.health),
            web.get("/ready", self.ready),
            web.get("/api/v1/events", self.events),
        ]

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, request: web.Request) -> web.Response:
        store_ok = await asyncio.to_thread(self.store.ping)
        spool_ok = self.loader.writer.writable()
        checks = {"store": "ok" if store_ok else "unreachable", "spool": "ok" if spool_ok else "not writable"}
        ready = store_ok and spool_ok
        return web.json_response(
            {"status": "ready" if ready else "not ready", "checks": checks}, status=200 if ready else 503
        )

    async def events(self, request: web.Request) -> web.Response:
        try:
            self.auth.reader(request)
        except Unauthorized as exc:
            return api_error(exc.status, str(exc))
        params = dict(request.query)
        try:
            query = event_query(params)
            cost_basis = params.get("cost_basis", "request")
            if cost_basis not in ("request", "current"):
                raise BadParameter("cost_basis", "'cost_basis' must be 'request' or 'current'")
            page = await asyncio.to_thread(self.store.list_events, query)
        except BadParameter as exc:
            return api_error(400, str(exc), exc.param)
        except ValueError as exc:  # a cursor the store cannot decode
            return api_error(400, str(exc), "cursor")
        events = page.events
        if cost_basis == "current":
            events = [repriced(event, self.price_table) for event in events]
        body: dict[str, Any] = {"data": events, "next_cursor": page.next_cursor, "cost_basis": cost_basis}
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")
