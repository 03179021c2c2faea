"""The aggregates the alert rules read: hourly series ending at an instant, and recent health per model and provider.

Every series is anchored at `at` (not at clock hours): bucket `ago = 0` is the hour just before
`at`, `ago = 1` the hour before that, up to `HISTORY_HOURS` (the trailing week). So an alert can be
evaluated at any minute, and replayed at any past instant, from the stored events alone. Hours in
which a group had no events are absent from the rows (the rules read them as zero). Costs are
as recorded (`cost_basis=request`); all values are bound parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from meterline.analytics.cost import CACHE_HIT, costed_events
from meterline.analytics.params import Scope, Statement, Window
from meterline.store.base import Store

HISTORY_HOURS = 7 * 24
HOUR_US = 3_600_000_000
NOT_PROVIDER_ERRORS = ("none", "budget_blocked", "client_cancelled")
"""Error classes that say nothing about a provider's health."""


@dataclass(frozen=True)
class Signals:
    """What the rules need at one instant."""

    at: datetime
    history_hours: int
    """How many whole hours before `at` (up to a week) the store has events for: the oldest bucket with events."""
    features: list[dict[str, Any]]
    """Per (feature, ago): cost, cost_squares (the sum of each attempt's cost squared), requests,
    attempts, hits, retry_cost, and latency_ms (median of the successful upstream attempts)."""
    users: list[dict[str, Any]]
    """Per user who spent in the last day: last_hour, last_day (cost), earlier_hours (cost from `ago` 1 to
    history_hours - 1) and earlier_days (cost of the whole days of history before the last day)."""
    gateway: list[dict[str, Any]]
    """Per ago: cost of all traffic."""
    models: list[dict[str, Any]]
    """Per model over the short window: attempts, p95_ms, cost."""
    providers: list[dict[str, Any]]
    """Per provider over the short window: attempts, errors, error_cost, cost."""


def _hourly(store: Store, at: datetime, group: str, measures: str) -> list[dict[str, Any]]:
    statement = Statement()
    window = Window(at - timedelta(hours=HISTORY_HOURS + 1), at)
    at_us = statement.bind(at)
    ago = f"(epoch_us({at_us}) - epoch_us(e.started_at) - 1) // {HOUR_US}"
    columns = ", ".join(part for part in (group, f"{ago} AS ago", measures) if part)
    sql = f"SELECT {columns} FROM {costed_events(window, Scope(), statement, None)} e GROUP BY ALL"
    return store.query(sql, statement.params).to_pylist()


def _users(store: Store, at: datetime, hours: int) -> list[dict[str, Any]]:
    """Per user who spent in the last day: the last hour's and day's cost, and the cost of the history before."""
    statement = Statement()
    window = Window(at - timedelta(hours=HISTORY_HOURS + 1), at)
    at_us = statement.bind(at)
    ago = f"(epoch_us({at_us}) - epoch_us(e.started_at) - 1) // {HOUR_US}"
    whole_days = statement.bind(hours // 24 * 24)
    sql = (
        f"SELECT e.user AS user, "
        f"coalesce(sum(e.cost) FILTER (WHERE {ago} = 0), 0) AS last_hour, "
        f"coalesce(sum(e.cost) FILTER (WHERE {ago} < 24), 0) AS last_day, "
        f"coalesce(sum(e.cost) FILTER (WHERE {ago} BETWEEN 1 AND {statement.bind(hours - 1)}), 0) AS earlier_hours, "
        f"coalesce(sum(e.cost) FILTER (WHERE {ago} >= 24 AND {ago} < {whole_days}), 0) AS earlier_days "
        f"FROM {costed_events(window, Scope(), statement, None)} e WHERE e.user IS NOT NULL "
        f"GROUP BY e.user HAVING last_day > 0"
    )
    return store.query(sql, statement.params).to_pylist()


def _recent(store: Store, at: datetime, minutes: int, group: str, measures: str) -> list[dict[str, Any]]:
    statement = Statement()
    window = Window(at - timedelta(minutes=minutes), at)
    sql = (
        f"SELECT {group} AS value, {measures} FROM {costed_events(window, Scope(), statement, None)} e "
        f"WHERE NOT {CACHE_HIT} GROUP BY ALL"
    )
    return store.query(sql, statement.params).to_pylist()


def collect(store: Store, at: datetime, latency_minutes: int, error_minutes: int) -> Signals:
    """Every aggregate the rules read, at `at` (timezone-aware)."""
    not_provider = ", ".join(f"'{name}'" for name in NOT_PROVIDER_ERRORS)
    features = _hourly(
        store,
        at,
        "e.feature AS feature",
        "coalesce(sum(e.cost), 0) AS cost, coalesce(sum(e.cost * e.cost), 0) AS cost_squares, "
        "count(*) FILTER (WHERE e.attempt = 1) AS requests, "
        f"count(*) AS attempts, count(*) FILTER (WHERE {CACHE_HIT}) AS hits, "
        "coalesce(sum(e.cost) FILTER (WHERE e.attempt > 1), 0) AS retry_cost, "
        f"median(e.duration_ms) FILTER (WHERE e.error_class = 'none' AND NOT {CACHE_HIT}) AS latency_ms",
    )
    gateway: dict[int, float] = {}
    for row in features:  # every event is in one feature group (NULL included), so these add up to all traffic
        gateway[row["ago"]] = gateway.get(row["ago"], 0.0) + row["cost"]
    models = _recent(
        store,
        at,
        latency_minutes,
        "e.requested_model",
        "count(*) AS attempts, quantile_cont(e.duration_ms, 0.95) AS p95_ms, coalesce(sum(e.cost), 0) AS cost",
    )
    providers = _recent(
        store,
        at,
        error_minutes,
        "e.provider",
        f"count(*) FILTER (WHERE e.error_class NOT IN ('budget_blocked', 'client_cancelled')) AS attempts, "
        f"count(*) FILTER (WHERE e.error_class NOT IN ({not_provider})) AS errors, "
        f"coalesce(sum(e.cost) FILTER (WHERE e.error_class NOT IN ({not_provider})), 0) AS error_cost, "
        "coalesce(sum(e.cost), 0) AS cost",
    )
    hours = min(HISTORY_HOURS, max(gateway, default=0))
    return Signals(
        at,
        hours,
        features,
        _users(store, at, hours),
        [{"ago": ago, "cost": cost} for ago, cost in gateway.items()],
        models,
        providers,
    )
