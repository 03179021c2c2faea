"""Budgets as rules: which budgets apply to a call, their calendar periods, and what a scope spent in one.

A budget (`meterline.config.BudgetConfig`, the one definition for the config file, the API and
the CLI) covers a scope — a key, team, app, user, feature, model, or the whole gateway — over a
calendar hour, day, week (from Monday) or month in the configured time zone. Budgets with the
same scope and period share one counter (`budget_key`), so an alert at $50 and a block at $100
on one team count the same spend. A `model` budget counts the model that served a call, so a
downgraded call spends from the cheaper model's budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from meterline.config import BudgetConfig, Config
from meterline.providers.base import ProviderFamily
from meterline.store.base import Store

_SCOPE_COLUMNS = {
    "key": "key_id",
    "team": "team",
    "app": "app",
    "user": "user",
    "feature": "feature",
    "model": "coalesce(served_model, requested_model)",
}
_PERIOD_WORDS = {"hour": "per hour", "day": "per day", "week": "per week", "month": "per month"}


def period_bounds(period: str, moment: datetime) -> tuple[datetime, datetime]:
    """The calendar period containing `moment` (aware, in the budgets' time zone) as (start, end)."""
    zone = moment.tzinfo
    if period == "hour":  # by UTC arithmetic: around a DST change a local hour repeats or is skipped
        start = moment.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
        return start.astimezone(zone), (start + timedelta(hours=1)).astimezone(zone)
    day = moment.date()
    if period == "day":
        first, following = day, day + timedelta(days=1)
    elif period == "week":
        first = day - timedelta(days=day.weekday())
        following = first + timedelta(days=7)
    elif period == "month":
        first = day.replace(day=1)
        following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    else:
        raise ValueError(f"unknown budget period {period!r}")
    return datetime.combine(first, time(), zone), datetime.combine(following, time(), zone)


class PeriodClock:
    """The current hour, day, week and month in one time zone as epoch seconds, recomputed only when one ends."""

    def __init__(self, timezone: str) -> None:
        self.zone = ZoneInfo(timezone)
        self._current: dict[str, tuple[float, float]] = {}

    def bounds(self, period: str, now: float) -> tuple[float, float]:
        current = self._current.get(period)
        if current is None or not current[0] <= now < current[1]:
            start, end = period_bounds(period, datetime.fromtimestamp(now, self.zone))
            current = self._current[period] = (start.timestamp(), end.timestamp())
        return current

    def iso(self, epoch: float) -> str:
        return datetime.fromtimestamp(epoch, self.zone).isoformat()


def budget_key(prefix: str, budget: BudgetConfig, period_start: float) -> str:
    """The counter of a budget's scope and period, for the period starting at `period_start`."""
    return f"{prefix}spend:{budget.scope}:{budget.period}:{int(period_start)}"


def describe(budget: BudgetConfig) -> str:
    """E.g. "budget 'search-daily' (team search, per day)"."""
    scope = "the whole gateway" if budget.scope_kind == "gateway" else f"{budget.scope_kind} {budget.scope_value}"
    return f"budget '{budget.name}' ({scope}, {_PERIOD_WORDS[budget.period]})"


def format_usd(amount: float) -> str:
    """Dollars for messages: cents from $1 up, else up to six decimals ($0.000248)."""
    if abs(amount) >= 1:
        return f"${amount:,.2f}"
    return "$" + (f"{amount:.6f}".rstrip("0").rstrip(".") or "0")


def limit_text(budget: BudgetConfig) -> str:
    parts = [format_usd(budget.limit_usd)] if budget.limit_usd is not None else []
    if budget.limit_tokens is not None:
        parts.append(f"{budget.limit_tokens:,} tokens")
    return " and ".join(parts)


def percent_used(budget: BudgetConfig, spent_usd: float, spent_tokens: float) -> float:
    """How much of the budget is spent, in percent: the larger share of its USD and token limits."""
    shares = []
    if budget.limit_usd is not None:
        shares.append(spent_usd / budget.limit_usd)
    if budget.limit_tokens is not None:
        shares.append(spent_tokens / budget.limit_tokens)
    return max(shares) * 100


class BudgetIndex:
    """Budgets by the scope they cover, so finding those that apply to a call is a few dict lookups."""

    def __init__(self, budgets: Iterable[BudgetConfig]) -> None:
        self.budgets = list(budgets)
        self._by_scope: dict[tuple[str, str | None], list[BudgetConfig]] = {}
        for budget in self.budgets:
            self._by_scope.setdefault((budget.scope_kind, budget.scope_value), []).append(budget)
        self._kinds = tuple(dict.fromkeys(kind for kind, _ in self._by_scope))

    def applicable(self, values: Mapping[str, str | None]) -> list[BudgetConfig]:
        """The budgets covering a call whose key, team, app, user, feature and model are `values`."""
        found: list[BudgetConfig] = []
        for kind in self._kinds:
            value = values.get(kind)
            if value is not None or kind == "gateway":
                found.extend(self._by_scope.get((kind, value), ()))
        return found


def budget_problem(budget: BudgetConfig, config: Config, providers: Mapping[str, ProviderFamily]) -> str | None:
    """Why `budget` cannot work with this gateway (an unknown model, a downgrade across APIs), or None."""
    problem = config.budget_problem(budget)
    if problem is not None:
        return problem
    models = {model.name: model for model in config.models}
    for source, target in budget.downgrade.items():
        source_api, target_api = (providers[models[name].provider].dialect for name in (source, target))
        if source_api != target_api:
            return (
                f"downgrade: {source!r} speaks the {source_api} API and {target!r} the {target_api} API; "
                "a call can only be downgraded to a model its client can talk to"
            )
    return None


def period_spend(store: Store, budget: BudgetConfig, since: datetime) -> tuple[float, int, int]:
    """(USD, tokens, requests) the budget's scope spent since `since`, from the stored events (refusals excluded)."""
    params: dict[str, Any] = {"since": since}
    condition = "TRUE"
    if budget.scope_kind != "gateway":
        condition = f"{_SCOPE_COLUMNS[budget.scope_kind]} = $value"
        params["value"] = budget.scope_value
    table = store.query(
        f"""
        SELECT coalesce(sum(cost_usd), 0) AS usd, coalesce(sum(input_tokens + output_tokens), 0) AS tokens,
               count(DISTINCT request_id) AS requests
        FROM events WHERE started_at >= $since AND error_class <> 'budget_blocked' AND {condition}
        """,
        params,
    )
    row = table.to_pylist()[0]
    return float(row["usd"]), int(row["tokens"]), int(row["requests"])


def budget_row(
    budget: BudgetConfig, source: str, clock: PeriodClock, now: float, spent_usd: float, spent_tokens: int
) -> dict[str, Any]:
    """One budget as `GET /api/v1/budgets` and `meterline budgets list` show it."""
    start, end = clock.bounds(budget.period, now)
    return {
        **budget.model_dump(),
        "source": source,
        "period_start": clock.iso(start),
        "period_end": clock.iso(end),
        "spent_usd": spent_usd,
        "spent_tokens": spent_tokens,
        "percent": round(percent_used(budget, spent_usd, spent_tokens), 2),
    }
