"""One analytics call and the SQL pieces every query shares: the spend metrics and UTC time buckets.

A `Call` is what each endpoint function of `queries`, `forecast`, `chargeback` and the insights
detectors receives: its checked parameters, window and scope, the store and the price table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

from meterline.analytics.cost import costed_events, price_periods
from meterline.analytics.params import Params, Scope, Statement, Window
from meterline.config import ModelConfig
from meterline.pricing.table import PriceTable
from meterline.store.base import Store

METRICS: dict[str, str] = {
    "cost_usd": "coalesce(sum(e.cost), 0)",
    "unpriced_attempts": "count(*) FILTER (WHERE e.cost IS NULL)",
    "requests": "count(*) FILTER (WHERE e.attempt = 1)",
    "attempts": "count(*)",
    "input_tokens": "coalesce(sum(e.input_tokens), 0)::BIGINT",
    "output_tokens": "coalesce(sum(e.output_tokens), 0)::BIGINT",
    "cache_read_tokens": "coalesce(sum(e.cache_read_tokens), 0)::BIGINT",
    "cache_write_tokens": "coalesce(sum(e.cache_write_tokens), 0)::BIGINT",
    "reasoning_tokens": "coalesce(sum(e.reasoning_tokens), 0)::BIGINT",
    "errors": "count(*) FILTER (WHERE e.error_class <> 'none')",
}
"""The metrics of a spend row, as SQL aggregates over the events `e`; each is a sum or a count."""

GRANULARITIES = {"hour": 3_600_000_000, "day": 86_400_000_000, "week": 7 * 86_400_000_000}
"""Bucket widths in microseconds. Buckets start on the UTC hour, at UTC midnight, and weeks on Monday."""
_WEEK_ORIGIN_US = 4 * 86_400_000_000  # 1970-01-05, a Monday
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Call:
    """One analytics call: its parameters, window and scope, and the store and prices it reads."""

    store: Store
    price_table: PriceTable
    models: Sequence[ModelConfig]
    params: Params
    window: Window
    scope: Scope
    path_id: str | None
    _periods: dict[Window, pa.Table] = field(default_factory=dict)

    def events(self, statement: Statement, window: Window | None = None) -> str:
        """SQL for `FROM ... e`: the events of `window` (default: the call's) in scope, with their `cost`."""
        window = window or self.window
        periods = None
        if window.cost_basis == "current":
            if window not in self._periods:
                self._periods[window] = price_periods(self.store, self.price_table, window, self.scope)
            periods = self._periods[window]
        return costed_events(window, self.scope, statement, periods)

    def rows(self, sql: str, statement: Statement) -> list[dict[str, Any]]:
        return self.store.query(sql, statement.params, statement.tables).to_pylist()


def bucket_start(granularity: str) -> str:
    """The start of an event's bucket in microseconds since the epoch (integer arithmetic: fast)."""
    width = GRANULARITIES[granularity]
    origin = _WEEK_ORIGIN_US if granularity == "week" else 0
    return f"(epoch_us(e.started_at) - {origin}) // {width} * {width} + {origin}"


def instant(micros: int) -> datetime:
    return _EPOCH + timedelta(microseconds=micros)
