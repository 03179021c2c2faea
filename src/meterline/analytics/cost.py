"""The cost of each event in a query, as recorded (`cost_basis=request`) or re-priced now (`current`).

Every analytics query reads `costed_events(...)`: the events of its window and scope, as `e`,
with one added column `cost`. For `request` that is the `cost_usd` the gateway recorded. For
`current` the events are joined to the price periods of the (provider, priced model, price
variant) keys in the window (`PriceTable.periods_arrow`, registered as the table `price_periods`)
on provider, priced model, variant (batch or service tier, `meterline.pricing.variants`), the
period's effective range and its UTC time-of-day window, and the cost is
computed from the token columns with the long-context tier rule (a call with more input tokens
than the threshold pays the tier rates for every token), exactly as
`meterline.pricing.rates.cost_usd` prices one call. An event no period covers is unpriced: its
cost is NULL, never 0. A cache hit made no upstream call, so it costs 0 either way.
"""

from __future__ import annotations

import pyarrow as pa

from meterline.analytics.params import Scope, Statement, Window
from meterline.pricing.table import PriceTable
from meterline.pricing.variants import VARIANT_SQL
from meterline.store.base import Store

PERIODS_TABLE = "price_periods"
PRICED_MODEL = "coalesce(e.response_model, e.upstream_model, e.requested_model)"
CACHE_HIT = "e.cache_status LIKE 'hit%'"
_FOREVER = 9_223_372_036_854_775_807
_KINDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")

# Each price period as one row of final rates per side of its long-context tier, with integer
# bounds (microseconds since the epoch and since UTC midnight, input token counts), so that the
# per-event join compares integers only and the per-event cost needs no CASE.
_PRICE_ROWS = f"""(
    SELECT provider, model, variant,
        coalesce(epoch_us(effective_from), -{_FOREVER}) AS from_us,
        coalesce(epoch_us(effective_to), {_FOREVER}) AS to_us,
        day_seconds_from * 1000000::BIGINT AS day_from_us,
        day_seconds_to * 1000000::BIGINT AS day_to_us,
        CASE WHEN tiered THEN tier_threshold + 1 ELSE 0 END AS min_input,
        CASE WHEN tiered OR tier_threshold IS NULL THEN {_FOREVER} ELSE tier_threshold + 1 END AS max_input,
        {", ".join(f"CASE WHEN tiered THEN tier_{kind}_mtok ELSE {kind}_mtok END AS {kind}" for kind in _KINDS)}
    FROM {PERIODS_TABLE}, (VALUES (false), (true)) AS side(tiered)
    WHERE NOT tiered OR tier_threshold IS NOT NULL
)"""

_CURRENT_COST = f"""CASE WHEN {CACHE_HIT} THEN 0.0 ELSE (
    greatest(e.input_tokens - e.cache_read_tokens - e.cache_write_tokens, 0) * p.input
    + e.output_tokens * p.output
    + e.cache_read_tokens * p.cache_read
    + greatest(e.cache_write_tokens - e.cache_write_1h_tokens, 0) * p.cache_write
    + e.cache_write_1h_tokens * p.cache_write_1h
) / 1e6 END"""

_PERIOD_MATCH = f"""p.provider = e.provider AND p.model = {PRICED_MODEL} AND p.variant = ({VARIANT_SQL})
    AND epoch_us(e.started_at) >= p.from_us AND epoch_us(e.started_at) < p.to_us
    AND epoch_us(e.started_at) % 86400000000 >= p.day_from_us AND epoch_us(e.started_at) % 86400000000 < p.day_to_us
    AND e.input_tokens >= p.min_input AND e.input_tokens < p.max_input"""


def price_periods(store: Store, price_table: PriceTable, window: Window, scope: Scope) -> pa.Table:
    """The price periods of every (provider, priced model, variant) key among the window's events."""
    statement = Statement()
    where = window.where(statement, scope)
    keys = store.query(
        f"SELECT DISTINCT e.provider, {PRICED_MODEL} AS model, {VARIANT_SQL} AS variant FROM events e WHERE {where}",
        statement.params,
    )
    return price_table.periods_arrow(
        zip(keys["provider"].to_pylist(), keys["model"].to_pylist(), keys["variant"].to_pylist(), strict=True)
    )


def costed_events(window: Window, scope: Scope, statement: Statement, periods: pa.Table | None) -> str:
    """SQL for `FROM (...) e`: the window's events visible to `scope`, with their `cost`.

    `periods` (from `price_periods`) is needed for `cost_basis=current` and ignored otherwise.
    """
    where = window.where(statement, scope)
    if window.cost_basis == "request":
        return f"(SELECT e.*, e.cost_usd AS cost FROM events e WHERE {where})"
    assert periods is not None, "cost_basis=current needs the price periods"
    statement.tables[PERIODS_TABLE] = periods
    return (
        f"(SELECT e.*, {_CURRENT_COST} AS cost FROM events e LEFT JOIN {_PRICE_ROWS} p ON {_PERIOD_MATCH} "
        f"WHERE {where})"
    )
