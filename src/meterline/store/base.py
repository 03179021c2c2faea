"""The Store protocol every backend implements, the event query it answers, and the registry.

A store keeps raw usage events: `insert_events` takes an Arrow table with the canonical schema
(`meterline.events.schema.arrow_schema()`) and is idempotent by `event_id`; `list_events` pages
through events newest first with a keyset cursor; `query` answers the read-only SQL the
analytics build over the `events` table. Backends register under the entry-point
group `meterline.stores` (the built-in DuckDB store does so too) and are built with
`store_for(config)`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from meterline.config import ConfigError, StoreConfig
from meterline.events.schema import UsageEvent

MAX_PAGE_SIZE = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class EventQuery:
    """Which events to list: every filter given must match; `since` is inclusive, `until` exclusive.

    `model` matches the requested or the response model. Times must carry a timezone.
    """

    request_id: str | None = None
    user: str | None = None
    feature: str | None = None
    team: str | None = None
    app: str | None = None
    model: str | None = None
    provider: str | None = None
    batch_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100
    cursor: str | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be from 1 to {MAX_PAGE_SIZE}, got {self.limit}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name} must be a timezone-aware datetime")


@dataclass(frozen=True)
class EventPage:
    """One page of events, newest first; `next_cursor` is None on the last page."""

    events: list[UsageEvent]
    next_cursor: str | None


class Store(Protocol):
    """Where events are kept. Methods are synchronous and may be called from several threads."""

    def open(self) -> None:
        """Connect, and create or migrate the schema."""

    def close(self) -> None: ...

    def ping(self) -> bool:
        """Whether the store answers a trivial query."""

    def insert_events(self, table: pa.Table) -> int:
        """Insert the rows whose `event_id` is not stored yet; return how many were inserted."""

    def load_segments(self, paths: list[Path]) -> int:
        """Like `insert_events`, reading spool segments (JSON lines of events) natively.

        This is the loader's fast path: no Python work per event, so the gateway's event loop
        never waits on it. Raises `SegmentFormatError` if a line cannot be read (a torn or corrupt
        line); the loader then decodes those segments in Python, which skips and quarantines them.
        """

    def list_events(self, query: EventQuery) -> EventPage:
        """Events matching the query, newest first (started_at desc, event_id desc).

        Raises ValueError for a cursor it did not issue.
        """

    def count_events(self) -> int: ...

    def query(self, sql: str, params: Mapping[str, Any], tables: Mapping[str, pa.Table] | None = None) -> pa.Table:
        """The result of one read-only SELECT over `events`, with `$name` parameters bound from `params`.

        The SQL is in the query layer's one dialect, DuckDB's; another store translates it (the
        ClickHouse store with `meterline.store.clickhouse_sql`).

        `tables` are small Arrow tables the statement reads by name (e.g. price periods to join).
        Timestamps come back in UTC. Raises ValueError for anything but a single SELECT.
        """


class StoreUnavailable(RuntimeError):
    """The store's server cannot be reached now. A store whose `open` raised this retries opening on its next use,
    so a gateway can start (and spool events) while its database is down."""


class SegmentFormatError(ValueError):
    """A spool segment has a line the store's native reader cannot read."""


def encode_cursor(started_at: datetime, event_id: str) -> str:
    """An opaque cursor naming the last event of a page: its start time (µs since epoch) and id."""
    micros = (started_at - _EPOCH) // timedelta(microseconds=1)
    return base64.urlsafe_b64encode(f"{micros}:{event_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (started_at, event_id) a cursor names; ValueError if it is not one `encode_cursor` made."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        micros, event_id = text.split(":", 1)
        return _EPOCH + timedelta(microseconds=int(micros)), event_id
    except (binascii.Error, UnicodeDecodeError, ValueError, OverflowError):
        raise ValueError("the cursor is not valid: pass the next_cursor of a previous page unchanged") from None


_EQUALITY_FILTERS = ("request_id", "user", "feature", "team", "app", "provider", "batch_id")


def event_filter(query: EventQuery) -> tuple[str, dict[str, Any]]:
    """The WHERE condition (the query layer's DuckDB dialect, `$name` parameters) selecting a page's candidates.

    Every filter of `query` and its cursor; order by `started_at DESC, event_id DESC` and take
    `query.limit + 1` rows, then pass them to `event_page`.
    """
    conditions: list[str] = ["TRUE"]
    params: dict[str, Any] = {}
    for name in _EQUALITY_FILTERS:
        value = getattr(query, name)
        if value is not None:
            conditions.append(f'"{name}" = ${name}')
            params[name] = value
    if query.model is not None:
        conditions.append("(requested_model = $model OR response_model = $model)")
        params["model"] = query.model
    if query.since is not None:
        conditions.append("started_at >= $since")
        params["since"] = query.since
    if query.until is not None:
        conditions.append("started_at < $until")
        params["until"] = query.until
    if query.cursor is not None:
        params["cursor_at"], params["cursor_id"] = decode_cursor(query.cursor)
        conditions.append("(started_at < $cursor_at OR (started_at = $cursor_at AND event_id < $cursor_id))")
    return " AND ".join(conditions), params


def event_page(events: list[UsageEvent], limit: int) -> EventPage:
    """The page of up to `limit` events from the `limit + 1` candidates a store read, with the next cursor."""
    if len(events) <= limit:
        return EventPage(events, None)
    events = events[:limit]
    return EventPage(events, encode_cursor(events[-1].started_at, events[-1].event_id))


def store_for(config: StoreConfig) -> Store:
    """Build the store of kind `config.kind` from the `meterline.stores` entry points (not yet opened)."""
    registered = {entry.name: entry for entry in entry_points(group="meterline.stores")}
    if config.kind not in registered:
        known = ", ".join(sorted(registered)) or "none"
        raise ConfigError(
            f"store.kind: unknown kind {config.kind!r}; known kinds: {known} "
            "(a third-party store registers under the entry-point group 'meterline.stores')"
        )
    store_class = registered[config.kind].load()
    return store_class(config)
