"""The month-end forecast: month-to-date spend and a weekday-aware projection with an interval, overall and per group.

Method (UTC days; `until` is "now"): each day left in the month is projected at the mean spend
of the same weekday over the last `HISTORY_DAYS` complete days (fewer when the data starts
later; a weekday not among them takes the mean of all of them), and the rest of today at its
weekday's mean times the share of the day left. The interval is the projection plus or minus
`Z_90` standard deviations of the remaining spend, taking the history days' deviations from
their weekday means as independent and normal: sigma is their standard deviation and the
remaining spend's is sigma times the square root of the days left (today's share included). The
low end never goes below the month to date. With `group_by=<dimension>` every value of it (the
`limit` costliest by projection) gets the same projection from its own daily spend.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from meterline.analytics.call import METRICS, Call, bucket_start, instant
from meterline.analytics.params import BadParameter, Statement, Window

HISTORY_DAYS = 28
INTERVAL_LEVEL = 0.9
Z_90 = 1.6449
"""The standard normal quantile of 95%: a two-sided 90% interval."""
DEFAULT_GROUPS = 20


@dataclass(frozen=True)
class Projection:
    month_to_date_usd: float
    projected_month_end_usd: float
    low_usd: float
    high_usd: float

    def as_json(self) -> dict[str, float]:
        return {
            "month_to_date_usd": self.month_to_date_usd,
            "projected_month_end_usd": self.projected_month_end_usd,
            "low_usd": self.low_usd,
            "high_usd": self.high_usd,
        }


@dataclass(frozen=True)
class Calendar:
    """The days a forecast made at `now` reads and projects."""

    now: datetime
    month_days: list[date]
    """The month's days up to today."""
    history: list[date]
    """The complete days before today that the rates are learnt from."""
    days_after_today: list[date]

    @property
    def left_today(self) -> float:
        today = self.now.date()
        return 1 - (self.now - _midnight(today)) / timedelta(days=1)

    def project(self, spent: Mapping[date, float]) -> Projection:
        """The month-end projection and its interval from one series of daily spend."""
        means, sigma = _weekday_rates(self.history, spent)
        later = sum(means[day.weekday()] for day in self.days_after_today)
        remaining = means[self.now.date().weekday()] * self.left_today + later
        month_to_date = sum(spent.get(day, 0.0) for day in self.month_days)
        projected = month_to_date + remaining
        half_width = Z_90 * sigma * math.sqrt(self.left_today + len(self.days_after_today))
        return Projection(month_to_date, projected, max(month_to_date, projected - half_width), projected + half_width)


def forecast(call: Call) -> dict[str, Any]:
    dimensions = call.params.dimensions("group_by")
    if len(dimensions) > 1:
        raise BadParameter("group_by", "'group_by' takes one dimension here, e.g. group_by=team")
    limit = call.params.integer("limit", DEFAULT_GROUPS, 1, 1000)
    now = call.window.until
    today = now.date()
    month_start = today.replace(day=1)
    next_month = (month_start + timedelta(days=32)).replace(day=1)
    history_start = max(today - timedelta(days=HISTORY_DAYS), _first_day(call) or today)
    calendar = Calendar(
        now=now,
        month_days=[month_start + timedelta(days=offset) for offset in range((today - month_start).days + 1)],
        history=[history_start + timedelta(days=offset) for offset in range((today - history_start).days)],
        days_after_today=[today + timedelta(days=offset) for offset in range(1, (next_month - today).days)],
    )

    statement = Statement()
    window = Window(_midnight(min(month_start, history_start)), now, call.window.filters, call.window.cost_basis)
    group = f", {dimensions[0].sql(statement)} AS value" if dimensions else ""
    sql = (
        f"SELECT {bucket_start('day')} AS day{group}, {METRICS['cost_usd']} AS cost_usd "
        f"FROM {call.events(statement, window)} e GROUP BY ALL"
    )
    spent: dict[date, float] = defaultdict(float)
    spent_by_value: dict[Any, dict[date, float]] = defaultdict(dict)
    for row in call.rows(sql, statement):
        day = instant(row["day"]).date()
        spent[day] += row["cost_usd"]
        if dimensions:
            spent_by_value[row["value"]][day] = row["cost_usd"]

    total = calendar.project(spent)
    groups = sorted(
        ({"value": value, **calendar.project(series).as_json()} for value, series in spent_by_value.items()),
        key=lambda item: (-item["projected_month_end_usd"], item["value"] is None, str(item["value"])),
    )[:limit]
    return {
        "month": f"{month_start:%Y-%m}",
        **total.as_json(),
        "interval_level": INTERVAL_LEVEL,
        "method": _method(calendar),
        "daily": [{"day": day.isoformat(), "cost_usd": spent.get(day, 0.0)} for day in calendar.month_days],
        "group_by": dimensions[0].name if dimensions else None,
        "groups": groups,
    }


def _method(calendar: Calendar) -> str:
    days = len(calendar.history)
    if not days:
        return "no complete day of spend before today yet, so the projection is the month-to-date spend"
    interval = (
        f"; the {INTERVAL_LEVEL:.0%} interval is the projection plus or minus {Z_90} standard deviations of the "
        "remaining spend, taking each day's deviation from its weekday's mean as independent and normal"
        if days >= 2
        else "; no interval before two complete days of history"
    )
    return (
        f"weekday-aware: each day left in the month is projected at the mean spend of the same weekday over "
        f"the last {days} complete UTC days (a weekday not among them at the mean of all of them), "
        f"the rest of today at its weekday's mean times the share of the day left{interval}"
    )


def _first_day(call: Call) -> date | None:
    """The UTC day of the first event in scope and filters before the call's `until`."""
    statement = Statement()
    everything = Window(None, call.window.until, call.window.filters)
    (row,) = call.rows(f"SELECT min(e.started_at) AS first FROM {call.events(statement, everything)} e", statement)
    return None if row["first"] is None else row["first"].date()


def _weekday_rates(history: list[date], spent: Mapping[date, float]) -> tuple[list[float], float]:
    """Mean daily spend per weekday (Monday = 0; a weekday not among the days gets the mean day), and the
    standard deviation of the days around their weekday's mean (0 with fewer than two days)."""
    if not history:
        return [0.0] * 7, 0.0
    overall = sum(spent.get(day, 0.0) for day in history) / len(history)
    means = []
    for weekday in range(7):
        days = [day for day in history if day.weekday() == weekday]
        means.append(sum(spent.get(day, 0.0) for day in days) / len(days) if days else overall)
    weekdays_seen = len({day.weekday() for day in history})
    squares = sum((spent.get(day, 0.0) - means[day.weekday()]) ** 2 for day in history)
    degrees = len(history) - weekdays_seen
    sigma = math.sqrt(squares / degrees) if degrees > 0 else 0.0
    if len(history) >= 2 and degrees <= 0:  # one day of each weekday seen: deviations around the mean day
        sigma = math.sqrt(sum((spent.get(day, 0.0) - overall) ** 2 for day in history) / (len(history) - 1))
    return means, sigma


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
