"""The analytics queries, one function per endpoint of docs/api.md, and `Analytics`, their dispatcher.

`Analytics.run(endpoint, params, scope)` returns exactly the JSON body `GET /api/v1/<endpoint>`
answers (plain dicts, lists, strings and numbers), so the web API serves it as is and the CLI can
call it on a store file it opened read-only and get the same figures as from a server.

Each query reads the events of its call's window through `Call.events` (time range, filters, the
caller's scope and the cost basis are all applied there, see `params` and `cost`) and aggregates
them with SQL. Definitions the API documents:

- `requests` counts logical requests at their first attempt (`attempt = 1`; every request has
  one): a request counts once, with the attributes of its first attempt. That is exact for the
  attribution dimensions, which all attempts of a request share, and an order of magnitude
  cheaper than counting distinct `request_id`s. `attempts` counts events; `errors` the attempts
  whose `error_class` is not `none`; `cost_usd` sums the priced attempts, `unpriced_attempts`
  counts the others.
- Percentiles are `quantile_cont`: linear interpolation between the two nearest values.
- A cache hit is an attempt whose `cache_status` starts with `hit`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pyarrow as pa

from meterline.analytics.call import GRANULARITIES, METRICS, Call, bucket_start, instant
from meterline.analytics.chargeback import chargeback
from meterline.analytics.cost import CACHE_HIT
from meterline.analytics.events import events_page
from meterline.analytics.forecast import forecast
from meterline.analytics.insights.engine import insights
from meterline.analytics.params import DEFAULT_SPAN, Dimension, NotFound, Params, Scope, Statement, Window
from meterline.analytics.reconcile import daily_usage
from meterline.config import ModelConfig
from meterline.events.schema import COLUMN_NAMES, arrow_schema, arrow_to_events
from meterline.pricing.rates import PricePeriod
from meterline.pricing.table import PriceTable
from meterline.store.base import Store

UNATTRIBUTED_DIMENSIONS = ("feature", "user", "team", "app")
MAX_ROWS = 100_000
_SPAN_MS = "(epoch_us(max(e.ended_at)) - epoch_us(min(e.started_at))) / 1000.0"


def _dimension_select(dimensions: Sequence[Dimension], statement: Statement) -> list[str]:
    """Select items naming each dimension `d0`, `d1`, ... (user input never becomes an identifier)."""
    return [f"{dimension.sql(statement)} AS d{index}" for index, dimension in enumerate(dimensions)]


def _dimension_order(dimensions: Sequence[Dimension]) -> list[str]:
    return [f"d{index} NULLS LAST" for index in range(len(dimensions))]


def _named(row: dict[str, Any], dimensions: Sequence[Dimension]) -> dict[str, Any]:
    """A result row with its `d0`, `d1`, ... columns renamed to the dimensions' API names, first."""
    named = {dimension.name: row.pop(f"d{index}") for index, dimension in enumerate(dimensions)}
    return {**named, **row}


def _metrics_select() -> str:
    return ", ".join(f"{sql} AS {name}" for name, sql in METRICS.items())


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _grouped(
    call: Call, dimensions: Sequence[Dimension], measures: str, order: str, where: str = "TRUE"
) -> list[dict[str, Any]]:
    """Rows of `measures` per combination of `dimensions` (NULL = not set), in `order`, up to `limit`."""
    statement = Statement()
    select = ", ".join([*_dimension_select(dimensions, statement), measures])
    limit = call.params.integer("limit", MAX_ROWS, 1, MAX_ROWS)
    sql = (
        f"SELECT {select} FROM {call.events(statement)} e WHERE {where} GROUP BY ALL "
        f"ORDER BY {', '.join([order, *_dimension_order(dimensions)])} LIMIT {statement.bind(limit)}"
    )
    return [_named(row, dimensions) for row in call.rows(sql, statement)]


def spend(call: Call) -> dict[str, Any]:
    dimensions = call.params.dimensions("group_by")
    granularity = call.params.choice("granularity", tuple(GRANULARITIES))
    limit = call.params.integer("limit", MAX_ROWS, 1, MAX_ROWS)
    statement = Statement()
    select = _dimension_select(dimensions, statement)
    order = ["cost_usd DESC", *_dimension_order(dimensions)]
    if granularity is not None:
        select.append(f"{bucket_start(granularity)} AS bucket")
        order.insert(0, "bucket")
    grouped = f"SELECT {', '.join([*select, _metrics_select()])} FROM {call.events(statement)} e GROUP BY ALL"
    # every metric is a sum or a count, so the totals are sums over the groups: one scan for both
    totals = ", ".join(
        f"CAST(sum({name}) OVER () AS {'DOUBLE' if name == 'cost_usd' else 'BIGINT'}) AS total_{name}"
        for name in METRICS
    )
    partition = f"PARTITION BY {', '.join(f'd{index}' for index in range(len(dimensions)))}" if dimensions else ""
    # keep the `limit` groups that cost most over the whole window, each with all its buckets
    rank_order = ", ".join(["group_cost DESC", *_dimension_order(dimensions)])
    sql = (
        f"SELECT * FROM (SELECT *, {totals}, sum(cost_usd) OVER ({partition}) AS group_cost FROM ({grouped})) "
        f"QUALIFY dense_rank() OVER (ORDER BY {rank_order}) <= {statement.bind(limit)} ORDER BY {', '.join(order)}"
    )
    rows = call.rows(sql, statement)
    totals_row: dict[str, Any] = {name: 0.0 if name == "cost_usd" else 0 for name in METRICS}
    for row in rows:
        totals_row = {name: row.pop(f"total_{name}") for name in METRICS}
        del row["group_cost"]
        if granularity is not None:
            row["bucket"] = instant(row["bucket"])
    return {
        "rows": [_named(row, dimensions) for row in rows],
        "totals": totals_row,
        "cost_basis": call.window.cost_basis,
    }


def top(call: Call) -> dict[str, Any]:
    dimension = call.params.dimension("by", "feature")
    limit = call.params.integer("limit", 10, 1, 1000)
    statement = Statement()
    grouped = (
        f"SELECT {dimension.sql(statement)} AS value, {METRICS['cost_usd']} AS cost_usd, "
        f"{METRICS['requests']} AS requests FROM {call.events(statement)} e GROUP BY ALL"
    )
    # the `limit` costliest values, and the unattributed (NULL) row whatever its rank
    sql = (
        f"SELECT *, sum(cost_usd) OVER () AS total FROM ({grouped}) "
        f"QUALIFY value IS NULL OR row_number() OVER (ORDER BY value IS NULL, cost_usd DESC, value) "
        f"<= {statement.bind(limit)} ORDER BY cost_usd DESC, value"
    )
    found = call.rows(sql, statement)
    total = found[0]["total"] if found else 0.0
    unattributed = next((row["cost_usd"] for row in found if row["value"] is None), 0.0)
    rows = [
        {
            "value": row["value"],
            "cost_usd": row["cost_usd"],
            "requests": row["requests"],
            "share": _share(row["cost_usd"], total),
        }
        for row in found
        if row["value"] is not None
    ]
    return {
        "by": dimension.name,
        "rows": rows,
        "unattributed": {"cost_usd": unattributed, "share": _share(unattributed, total)},
        "total_cost_usd": total,
    }


def unattributed(call: Call) -> dict[str, Any]:
    statement = Statement()
    parts = [f"{METRICS['cost_usd']} AS total"]
    for index, name in enumerate(UNATTRIBUTED_DIMENSIONS):
        dimension_sql = Dimension(name).sql(statement)
        parts.append(f"coalesce(sum(e.cost) FILTER (WHERE {dimension_sql} IS NULL), 0) AS d{index}")
    (row,) = call.rows(f"SELECT {', '.join(parts)} FROM {call.events(statement)} e", statement)
    total = row["total"]
    return {
        "total_cost_usd": total,
        "dimensions": {
            name: {"cost_usd": row[f"d{index}"], "share": _share(row[f"d{index}"], total)}
            for index, name in enumerate(UNATTRIBUTED_DIMENSIONS)
        },
    }


def latency(call: Call) -> dict[str, Any]:
    dimensions = call.params.dimensions("group_by", "provider,model")
    measures = (
        "count(*) AS attempts, quantile_cont(e.duration_ms, [0.5, 0.95, 0.99]) AS duration_ms, "
        "quantile_cont(e.ttft_ms, [0.5, 0.95, 0.99]) AS ttft_ms, "
        "count(*) FILTER (WHERE e.error_class <> 'none') / nullif(count(*), 0) AS error_rate"
    )
    rows = []
    for row in _grouped(call, dimensions, measures, "attempts DESC"):
        error_rate = row.pop("error_rate")
        for name in ("duration_ms", "ttft_ms"):
            values = row.pop(name) or [None, None, None]  # NULL when no attempt in the group has a value
            row.update({f"{name}_p{percent}": value for percent, value in zip((50, 95, 99), values, strict=True)})
        rows.append({**row, "error_rate": error_rate})
    return {"rows": rows}


def users_distribution(call: Call) -> dict[str, Any]:
    bins = call.params.integer("bins", 20, 1, 200)
    limit = call.params.integer("limit", 10, 1, 1000)
    statement = Statement()
    per_user = call.store.query(
        f'SELECT e."user" AS user, {METRICS["cost_usd"]} AS cost_usd, {METRICS["requests"]} AS requests '
        f'FROM {call.events(statement)} e WHERE e."user" IS NOT NULL GROUP BY ALL ORDER BY cost_usd DESC, user',
        statement.params,
        statement.tables,
    )
    tables = {"per_user": per_user}
    (stats,) = call.store.query(
        """
        WITH ranked AS (
            SELECT cost_usd, row_number() OVER (ORDER BY cost_usd DESC) AS rank, count(*) OVER () AS user_count
            FROM per_user
        )
        SELECT count(*) AS users, coalesce(sum(cost_usd), 0) AS total,
            quantile_cont(cost_usd, [0.5, 0.9, 0.99]) AS percentiles,
            coalesce(sum(cost_usd) FILTER (WHERE rank <= ceil(user_count * 0.01)), 0) AS top_1pct,
            coalesce(sum(cost_usd) FILTER (WHERE rank <= ceil(user_count * 0.1)), 0) AS top_10pct,
            min(cost_usd) FILTER (WHERE cost_usd > 0) AS lowest, max(cost_usd) AS highest
        FROM ranked
        """,
        {},
        tables,
    ).to_pylist()
    total = stats["total"]
    p50, p90, p99 = stats["percentiles"] or (None, None, None)
    return {
        "users": stats["users"],
        "total_cost_usd": total,
        "percentiles": {"p50": p50, "p90": p90, "p99": p99},
        "histogram": _histogram(call.store, tables, stats["lowest"], stats["highest"], bins),
        "top_1pct_share": _share(stats["top_1pct"], total),
        "top_10pct_share": _share(stats["top_10pct"], total),
        "top": per_user.slice(0, limit).to_pylist(),
    }


def _histogram(
    store: Store, tables: Mapping[str, pa.Table], lowest: float | None, highest: float | None, bins: int
) -> list[dict[str, Any]]:
    """Users per bin of per-user cost, `bins` bins equally wide on a log scale from the lowest cost to the highest.

    Users whose spend is $0 (only unpriced or free calls) are counted in a first bin from 0 to 0.
    """
    counts = {
        row["bin"]: row["users"]
        for row in store.query(
            """
            SELECT CASE WHEN cost_usd <= 0 THEN -1
                        WHEN $highest = $lowest THEN 0
                        ELSE least(floor(ln(cost_usd / $lowest) / ln($highest / $lowest) * $bins), $bins - 1)
                   END::INTEGER AS bin,
                   count(*) AS users
            FROM per_user GROUP BY ALL
            """,
            {"lowest": lowest, "highest": highest, "bins": bins},
            tables,
        ).to_pylist()
    }
    histogram = [{"lo": 0.0, "hi": 0.0, "users": counts[-1]}] if -1 in counts else []
    if lowest is None or highest is None:
        return histogram
    edges = [lowest * (highest / lowest) ** (index / bins) for index in range(bins)] + [highest]
    histogram.extend(
        {"lo": edges[index], "hi": edges[index + 1], "users": counts.get(index, 0)} for index in range(bins)
    )
    return histogram


def errors(call: Call) -> dict[str, Any]:
    measures = f"count(*) AS attempts, {METRICS['cost_usd']} AS cost_usd"
    rows = _grouped(call, [Dimension("error_class")], measures, "attempts DESC", where="e.error_class <> 'none'")
    return {"rows": rows}


def retries(call: Call) -> dict[str, Any]:
    dimensions = call.params.dimensions("group_by")
    requests = METRICS["requests"]
    measures = f"{requests} AS requests, count(*) AS attempts, count(*) / nullif({requests}, 0) AS amplification"
    return {"rows": _grouped(call, dimensions, measures, "attempts - requests DESC, attempts DESC")}


def cache(call: Call) -> dict[str, Any]:
    dimensions = call.params.dimensions("group_by")
    hits = f"count(*) FILTER (WHERE {CACHE_HIT})"
    measures = (
        f"{METRICS['requests']} AS requests, {hits} AS hits, "
        f"coalesce({hits} / nullif({METRICS['requests']}, 0), 0) AS hit_rate, "
        "coalesce(sum(e.saved_usd), 0) AS saved_usd"
    )
    return {"rows": _grouped(call, dimensions, measures, "requests DESC")}


def agent_runs(call: Call) -> dict[str, Any]:
    limit = call.params.integer("limit", 50, 1, 1000)
    statement = Statement()
    sql = f"""
        SELECT e.agent_run_id, arg_min(e.feature, e.started_at) AS feature, arg_min(e."user", e.started_at) AS user,
            min(e.started_at) AS started_at, {_SPAN_MS} AS duration_ms, count(DISTINCT e.agent_step) AS steps,
            count(*) AS attempts, {METRICS["cost_usd"]} AS cost_usd, {METRICS["errors"]} AS errors
        FROM {call.events(statement)} e WHERE e.agent_run_id IS NOT NULL
        GROUP BY e.agent_run_id ORDER BY cost_usd DESC, agent_run_id LIMIT {statement.bind(limit)}
    """
    return {"rows": call.rows(sql, statement)}


def agent_run(call: Call) -> dict[str, Any]:
    """One row per step and request of the run: the first attempt's model, the last attempt's outcome."""
    statement = Statement()
    sql = f"""
        SELECT e.agent_step, e.request_id, min(e.started_at) AS started_at, max(e.ended_at) AS ended_at,
            {_SPAN_MS} AS duration_ms, arg_min(e.requested_model, e.attempt) AS model,
            sum(e.input_tokens)::BIGINT AS input_tokens, sum(e.output_tokens)::BIGINT AS output_tokens,
            {METRICS["cost_usd"]} AS cost_usd, arg_max(e.error_class, e.attempt) AS error_class, count(*) AS attempts
        FROM {call.events(statement)} e WHERE e.agent_run_id = {statement.bind(call.path_id)}
        GROUP BY e.agent_step, e.request_id ORDER BY agent_step NULLS LAST, started_at, request_id
    """
    steps = call.rows(sql, statement)
    if not steps:
        raise NotFound(f"no agent run '{call.path_id}'{_since_note(call.window)}")
    return {"agent_run_id": call.path_id, "steps": steps}


def request_attempts(call: Call) -> dict[str, Any]:
    """The request's events, as `/api/v1/events` shows them; `cost_basis=current` re-prices each."""
    statement = Statement()
    columns = ", ".join("e.cost AS cost_usd" if name == "cost_usd" else f'e."{name}"' for name in COLUMN_NAMES)
    table = call.store.query(
        f"SELECT {columns} FROM {call.events(statement)} e WHERE e.request_id = {statement.bind(call.path_id)} "
        "ORDER BY e.attempt, e.started_at, e.event_id",
        statement.params,
        statement.tables,
    )
    attempts = arrow_to_events(table.cast(arrow_schema()))
    if not attempts:
        raise NotFound(f"no request '{call.path_id}'{_since_note(call.window)}")
    if call.window.cost_basis == "current":
        version = call.price_table.version
        attempts = [
            msgspec.structs.replace(event, price_version=None if event.cost_usd is None else version)
            for event in attempts
        ]
    return {"request_id": call.path_id, "attempts": attempts}


def _since_note(window: Window) -> str:
    return "" if window.since is None else f" since {window.since.isoformat()} (pass an earlier 'since')"


def prices(call: Call) -> dict[str, Any]:
    models = []
    for model in call.models:
        periods = call.price_table.periods(model.provider, model.upstream_name)
        models.append(
            {
                "name": model.name,
                "provider": model.provider,
                "upstream_model": model.upstream_name,
                "priced": bool(periods),
                "periods": [_period(period) for period in periods],
            }
        )
    return {
        "version": call.price_table.version,
        "models": models,
        "unpriced_models": [model["name"] for model in models if not model["priced"]],
    }


def _period(period: PricePeriod) -> dict[str, Any]:
    """A price period: USD per million tokens of each kind with fallbacks applied, and its long-context tier."""
    rates = period.rates
    kinds = ("input", "output", "cache_read", "cache_write", "cache_write_1h")
    tiered = rates.tier_threshold is not None
    return {
        "effective_from": period.effective_from,
        "effective_to": period.effective_to,
        "day_seconds_from": period.day_seconds_from,
        "day_seconds_to": period.day_seconds_to,
        **dict(zip(kinds, rates.resolved, strict=True)),
        "tier_threshold": rates.tier_threshold,
        **{f"tier_{kind}": rate if tiered else None for kind, rate in zip(kinds, rates.tier_resolved, strict=True)},
        "source": period.source,
    }


@dataclass(frozen=True)
class Endpoint:
    """One analytics endpoint: its query, the parameters it takes besides the common ones, its default span."""

    query: Callable[[Call], dict[str, Any]]
    accepted: tuple[str, ...] = ()
    default_span: timedelta | None = DEFAULT_SPAN
    """How far back from `until` a missing `since` reaches; None: all time."""


ENDPOINTS: dict[str, Endpoint] = {
    "spend": Endpoint(spend, ("group_by", "granularity", "limit")),
    "top": Endpoint(top, ("by", "limit")),
    "unattributed": Endpoint(unattributed),
    "latency": Endpoint(latency, ("group_by", "limit")),
    "users/distribution": Endpoint(users_distribution, ("bins", "limit")),
    "errors": Endpoint(errors, ("limit",)),
    "retries": Endpoint(retries, ("group_by", "limit")),
    "cache": Endpoint(cache, ("group_by", "limit")),
    "agents/runs": Endpoint(agent_runs, ("limit",)),
    "agents/runs/{run_id}": Endpoint(agent_run, default_span=None),
    "requests/{request_id}": Endpoint(request_attempts, default_span=None),
    "forecast": Endpoint(forecast, ("group_by", "limit")),
    "prices": Endpoint(prices),
    "insights": Endpoint(insights, ("detector", "min_usd")),
    "chargeback": Endpoint(chargeback, ("group_by",), default_span=timedelta(days=31)),
    "usage/daily": Endpoint(daily_usage),
}
"""Endpoint paths under /api/v1/ (as aiohttp route patterns) and what answers them."""


def resolve(endpoint: str) -> tuple[str, str | None]:
    """The ENDPOINTS key for a path such as `requests/abc`, and the id in it; NotFound if none matches."""
    if endpoint in ENDPOINTS:
        return endpoint, None
    for pattern in ENDPOINTS:
        prefix, brace, _ = pattern.partition("{")
        path_id = endpoint.removeprefix(prefix)
        if brace and endpoint.startswith(prefix) and path_id and "/" not in path_id:
            return pattern, path_id
    raise NotFound(f"no analytics endpoint '{endpoint}'; known: events, {', '.join(ENDPOINTS)}")


class Analytics:
    """Answers every analytics endpoint from a store and the price table; safe to call from several threads."""

    def __init__(self, store: Store, price_table: PriceTable, models: Sequence[ModelConfig]) -> None:
        self.store = store
        self.price_table = price_table
        self.models = list(models)

    def run(
        self, endpoint: str, params: Mapping[str, str], scope: Scope, now: datetime | None = None
    ) -> dict[str, Any]:
        """The JSON body of `GET /api/v1/<endpoint>?<params>` for a caller limited to `scope`.

        `endpoint` is the path after /api/v1/, e.g. `spend`, `users/distribution`, `requests/<id>`,
        `events`. Raises `BadParameter` (HTTP 400) and `NotFound` (404), both ValueErrors with a
        message a person can act on. `now` (default: the current time) anchors spans like `7d`.
        """
        if endpoint == "events":
            return events_page(self.store, self.price_table, params, scope)
        pattern, path_id = resolve(endpoint)
        spec = ENDPOINTS[pattern]
        checked = Params(params, spec.accepted)
        window = checked.window(now or datetime.now(UTC), spec.default_span)
        call = Call(self.store, self.price_table, self.models, checked, window, scope, path_id)
        return msgspec.to_builtins(spec.query(call))
