"""Raw events, page by page: the body of `GET /api/v1/events`, for the API and the CLI alike.

Events are listed newest first with a keyset cursor (`Store.list_events`); `cost_basis=current`
re-prices each listed event from the price table in force instead of showing the cost recorded
at request time. A caller scoped to a team sees only that team's events.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from meterline.analytics.params import BadParameter, Scope, parse_time
from meterline.events.schema import UsageEvent
from meterline.pricing.table import PriceTable
from meterline.store.base import MAX_PAGE_SIZE, EventQuery, Store

EVENT_FILTERS = ("request_id", "user", "feature", "team", "app", "model", "provider", "batch_id")
EVENT_PARAMS = (*EVENT_FILTERS, "since", "until", "limit", "cursor", "cost_basis")


def event_query(params: Mapping[str, str], scope: Scope) -> EventQuery:
    for name in params:
        if name not in EVENT_PARAMS:
            raise BadParameter(name, f"unknown parameter '{name}'; allowed: {', '.join(sorted(EVENT_PARAMS))}")
    limit_text = params.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_PAGE_SIZE:
        raise BadParameter("limit", f"'limit' must be a whole number from 1 to {MAX_PAGE_SIZE}")
    filters = {name: params[name] for name in EVENT_FILTERS if params.get(name)}
    if scope.team is not None:
        filters["team"] = scope.team
    return EventQuery(
        **filters,
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


def events_page(store: Store, price_table: PriceTable, params: Mapping[str, str], scope: Scope) -> dict[str, Any]:
    """`{"data": [<event>...], "next_cursor", "cost_basis"}` with events as JSON-ready dicts."""
    query = event_query(params, scope)
    cost_basis = params.get("cost_basis", "request")
    if cost_basis not in ("request", "current"):
        raise BadParameter("cost_basis", "'cost_basis' must be 'request' or 'current'")
    if scope.team is not None and params.get("team") not in (None, "", scope.team):
        return {"data": [], "next_cursor": None, "cost_basis": cost_basis}  # another team's events: none visible
    try:
        page = store.list_events(query)
    except ValueError as exc:  # a cursor the store cannot decode
        raise BadParameter("cursor", str(exc)) from exc
    events = page.events
    if cost_basis == "current":
        events = [repriced(event, price_table) for event in events]
    return {"data": msgspec.to_builtins(events), "next_cursor": page.next_cursor, "cost_basis": cost_basis}
