"""Context growth and tier crossing: input tokens per request trending up, and calls priced as long context.

Growth: per feature, app and model, the mean input tokens of answered chat-style calls on each
day of the window (days counted from the window's start) get a least-squares line. With at least
`MIN_DAYS` days, a fit explaining at least `MIN_R_SQUARED` of the daily variation and growth of at
least `MIN_GROWTH` from the line's value on the first day to its value on the last, the finding's
dollars are the added tokens per request (last minus first) times the requests per month at the
model's input price today; trimming the context back to where it started saves that.

Tier crossing: models whose price has a long-context tier (`tier_threshold`) price every token of
a call above the threshold at the tier's rates. Per feature, app and model, the calls above it
cost their tokens at the tier rates; keeping each under the threshold would save the difference
to the base rates, at today's prices.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa

from meterline.analytics.cost import PRICED_MODEL
from meterline.analytics.insights.finding import (
    ANSWERED,
    CHAT_CALLS,
    GROUP_SELECT,
    TOKEN_SUMS,
    Finding,
    Scan,
    label,
    money,
    token_cost,
    token_counts,
    where_of,
)
from meterline.analytics.params import Statement

MIN_DAYS = 3
MIN_R_SQUARED = 0.6
MIN_GROWTH = 0.25
DAY_US = 86_400_000_000
TIERS_TABLE = "price_tiers"


def detect(scan: Scan) -> list[Finding]:
    return [*_growth(scan), *_tier_crossing(scan)]


def _growth(scan: Scan) -> list[Finding]:
    statement = Statement()
    day = f"(epoch_us(e.started_at) - epoch_us({statement.bind(scan.start)})) // {DAY_US}"
    sql = f"""
        SELECT {GROUP_SELECT}, {day} AS day, count(*) AS calls, avg(e.input_tokens) AS mean_input
        FROM {scan.events(statement)} e WHERE {ANSWERED} AND {CHAT_CALLS} GROUP BY ALL
    """
    series: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in scan.rows(sql, statement):
        series[(row["feature"], row["app"], row["provider"], row["model"])].append(row)
    findings = []
    for days in series.values():
        if len(days) < MIN_DAYS:
            continue
        fit = _line([(row["day"], row["mean_input"]) for row in days])
        if fit is None:
            continue
        first, last, r_squared = fit
        if first <= 0 or r_squared < MIN_R_SQUARED or last < first * (1 + MIN_GROWTH):
            continue
        latest = max(days, key=lambda row: row["day"])  # its prompt version and priced model are the newest seen
        rates = scan.rates(latest["provider"], latest["priced_model"])
        if rates is None:
            continue
        calls = sum(row["calls"] for row in days)
        usd = scan.per_month(calls * (last - first) * rates.resolved[0] / 1e6)
        if usd < scan.min_usd:
            continue
        where = where_of(latest)
        growth_per_day = (last - first) / (max(row["day"] for row in days) - min(row["day"] for row in days))
        findings.append(
            Finding(
                detector="context_growth",
                title="Context grows request by request",
                where=where,
                summary=(
                    f"{label(where)} went from {first:,.0f} to {last:,.0f} input tokens per request over "
                    f"{len(days)} days (+{growth_per_day:,.0f} a day); the added tokens cost {money(usd)} a month"
                ),
                evidence={
                    "days": len(days),
                    "calls": calls,
                    "input_tokens_first_day": first,
                    "input_tokens_last_day": last,
                    "growth": last / first - 1,
                    "tokens_per_day": growth_per_day,
                    "r_squared": r_squared,
                    "daily_mean_input_tokens": [
                        {"day": row["day"], "mean_input_tokens": row["mean_input"], "calls": row["calls"]}
                        for row in sorted(days, key=lambda row: row["day"])
                    ],
                },
                usd_per_month=usd,
                saving_usd_per_month=usd,
                fix=(
                    "Bound the context: keep a window of recent turns and summarise older ones, retrieve fewer or "
                    "shorter passages, and drop tool results once used"
                ),
                assumptions="the saving assumes requests go back to the first day's input size",
            )
        )
    return findings


def _line(points: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """Least squares through (x, y): the fitted y at the smallest and largest x, and R²."""
    count = len(points)
    mean_x = sum(x for x, _ in points) / count
    mean_y = sum(y for _, y in points) / count
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    syy = sum((y - mean_y) ** 2 for _, y in points)
    r_squared = 1.0 if syy == 0 else slope**2 * sxx / syy
    low, high = min(x for x, _ in points), max(x for x, _ in points)
    return mean_y + slope * (low - mean_x), mean_y + slope * (high - mean_x), r_squared


def _tier_crossing(scan: Scan) -> list[Finding]:
    tiers = _tiers(scan)
    if tiers.num_rows == 0:
        return []
    statement = Statement()
    statement.tables[TIERS_TABLE] = tiers
    sql = f"""
        SELECT {GROUP_SELECT}, count(*) AS calls, {TOKEN_SUMS}, max(e.input_tokens) AS most_input,
            max(t.threshold) AS threshold
        FROM {scan.events(statement)} e
        JOIN {TIERS_TABLE} t ON t.provider = e.provider AND t.model = {PRICED_MODEL}
        WHERE {ANSWERED} AND e.input_tokens > t.threshold GROUP BY ALL
    """
    findings = []
    for row in scan.rows(sql, statement):
        rates = scan.rates(row["provider"], row["priced_model"])
        if rates is None or rates.tier_threshold is None:
            continue
        tokens = token_counts(row)
        tiered = token_cost(rates.tier_resolved, tokens)
        usd = scan.per_month(tiered)
        saving = scan.per_month(tiered - token_cost(rates.resolved, tokens))
        if saving < scan.min_usd:
            continue
        where = where_of(row)
        findings.append(
            Finding(
                detector="context_growth",
                title="Calls cross the long-context price tier",
                where=where,
                summary=(
                    f"{label(where)} sent {row['calls']:,} calls above the {row['threshold']:,}-token long-context "
                    f"tier (up to {row['most_input']:,} tokens), priced at the tier's rates: {money(usd)} a month, "
                    f"{money(saving)} more than at the base rates"
                ),
                evidence={
                    "calls_above_threshold": row["calls"],
                    "tier_threshold_tokens": row["threshold"],
                    "most_input_tokens": row["most_input"],
                    "input_usd_per_mtok": rates.resolved[0],
                    "tier_input_usd_per_mtok": rates.tier_resolved[0],
                },
                usd_per_month=usd,
                saving_usd_per_month=saving,
                fix=(
                    f"Keep each call under {row['threshold']:,} input tokens: trim or summarise the context, or split "
                    "the document into chunks that stay below the tier"
                ),
            )
        )
    return findings


def _tiers(scan: Scan) -> pa.Table:
    """(provider, model, threshold) of the window's priced models whose price today has a long-context tier."""
    statement = Statement()
    pairs = scan.rows(
        f"SELECT DISTINCT e.provider AS provider, {PRICED_MODEL} AS model FROM {scan.events(statement)} e", statement
    )
    rows = []
    for pair in pairs:
        rates = scan.rates(pair["provider"], pair["model"])
        if rates is not None and rates.tier_threshold is not None:
            rows.append((pair["provider"], pair["model"], rates.tier_threshold))
    providers, models, thresholds = zip(*rows, strict=True) if rows else ((), (), ())
    return pa.table(
        {
            "provider": pa.array(providers, pa.string()),
            "model": pa.array(models, pa.string()),
            "threshold": pa.array(thresholds, pa.int64()),
        }
    )
