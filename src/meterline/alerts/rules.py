"""The alert rules: each reads `Signals` (stored events aggregated at one instant) and says what is wrong now.

A rule returns `Finding`s: what (the rule and a sentence), which dimension value, the observed
value, the baseline it was compared with (and how that baseline was made), the band, the dollars
at stake and a dashboard link. Rules are pure functions of the signals and their settings, so the
server, `meterline alerts check --at` and the benchmark all get the same answers. Budget
thresholds (rule 4) are not here: the gateway's budget guard notices them the moment they are
crossed, and `meterline.alerts.state` records them as alerts beside these.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from meterline.analytics.signals import HISTORY_HOURS, Signals
from meterline.config import AlertRulesConfig

GATEWAY = "gateway"
NOT_SET = "(not set)"


@dataclass(frozen=True)
class Finding:
    rule: str
    dimension: str
    """What the value names: feature, user, model, provider, or gateway."""
    value: str
    summary: str
    observed: float
    baseline: float
    band: float
    """The limit the observed value crossed (upper, or lower for the cache rule)."""
    unit: str
    """usd/hour, usd/day, ratio, ms, rate, attempts/request, usd/request."""
    baseline_basis: str
    """How the baseline was made, in words."""
    usd_at_stake: float
    link: str
    signal: str | None = None
    """A named sub-signal (latency-cost divergence: queueing or payload_growth)."""

    @property
    def key(self) -> str:
        """What identifies "the same alert" across evaluations."""
        return f"{self.rule}:{self.dimension}={self.value}" + (f":{self.signal}" if self.signal else "")

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "key": self.key}


@dataclass
class Series:
    """One group's hourly values, `ago` 0 (the last hour) to HISTORY_HOURS; missing hours are 0."""

    values: dict[int, dict[str, Any]]

    def get(self, ago: int, name: str) -> float:
        row = self.values.get(ago)
        return float(row[name] or 0) if row else 0.0

    def history(self, name: str, hours: int) -> list[float]:
        return [self.get(ago, name) for ago in range(1, hours)]

    def total(self, name: str, hours: int) -> float:
        return sum(self.get(ago, name) for ago in range(1, hours))

    def seasonal(self, name: str, hours: int) -> list[float]:
        """The same hour of day on each earlier day in the history."""
        return [self.get(ago, name) for ago in range(24, hours, 24)]


def _by_group(rows: Iterable[dict[str, Any]], column: str | None) -> dict[str, Series]:
    grouped: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        if 0 <= row["ago"] <= HISTORY_HOURS:
            name = GATEWAY if column is None else (row[column] if row[column] is not None else NOT_SET)
            grouped[name][row["ago"]] = row
    return {name: Series(values) for name, values in grouped.items()}


def usd(amount: float) -> str:
    return f"${amount:,.2f}"


def _ratio(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


class Linker:
    """Dashboard links that show what an alert is about, ending at the evaluated instant."""

    def __init__(self, base_url: str, at: datetime) -> None:
        self.base_url = base_url.rstrip("/")
        self.at = at

    def __call__(self, page: str, span: timedelta, **filters: str) -> str:
        query = {"since": (self.at - span).isoformat(), "until": self.at.isoformat()}
        query.update({name: value for name, value in filters.items() if value != NOT_SET})
        return f"{self.base_url}{page}?{urlencode(query)}"


@dataclass
class Context:
    signals: Signals
    rules: AlertRulesConfig
    link: Linker

    @property
    def hours(self) -> int:
        return self.signals.history_hours


def _weekend(moment: datetime) -> bool:
    return moment.weekday() >= 5


def _seasonal_hours(context: Context, spread: int) -> tuple[list[int], str]:
    """The `ago` buckets of the same hour of day (± `spread`) on earlier days, and how to describe them.

    When the history holds at least two days of the same kind as the hour observed (weekday or
    weekend), only those count: weekly rhythm matters as much as the daily one.
    """
    at = context.signals.at
    candidates = [
        day + offset
        for day in range(24, context.hours + 1, 24)
        for offset in range(-spread, spread + 1)
        if day + offset <= context.hours
    ]
    observed_weekend = _weekend(at - timedelta(hours=1))
    same_kind = [ago for ago in candidates if _weekend(at - timedelta(hours=ago + 1)) == observed_weekend]
    days = len({(ago + spread) // 24 for ago in same_kind})
    around = f" (±{spread} h)" if spread else ""
    if days >= 2:
        kind = "weekend days" if observed_weekend else "weekdays"
        return same_kind, f"same hour of day{around} on the previous {days} {kind}"
    return candidates, f"same hour of day{around} on the previous {len({(a + spread) // 24 for a in candidates})} days"


def _small_sample_factor(samples: int, sigmas: float) -> float:
    """How much wider a band from `samples` values must be to hold a new value as often as `sigmas` sd would.

    A new hour is compared with a mean and a standard deviation estimated from a handful of hours,
    so its prediction interval is Student's t (samples - 1 degrees of freedom) times sqrt(1 + 1/n),
    not the normal's; the t quantile comes from its Cornish-Fisher expansion around `sigmas`.
    """
    z, freedom = sigmas, max(samples - 1, 1)
    t = (
        z
        + (z**3 + z) / (4 * freedom)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * freedom**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * freedom**3)
    )
    return t / z * (1 + 1 / samples) ** 0.5


def feature_anomaly(context: Context) -> list[Finding]:
    rule = context.rules.feature_anomaly
    if context.hours < 24:
        return []
    found = []
    seasonal = context.hours >= rule.seasonal_after_days * 24
    if seasonal:
        hours, basis = _seasonal_hours(context, spread=1)
    else:
        hours, basis = list(range(1, context.hours)), f"every hour of the previous {context.hours - 1} hours"
    for feature, series in _by_group(context.signals.features, "feature").items():
        history = [series.get(ago, "cost") for ago in hours]
        mean = statistics.fmean(history)
        # A week holds few samples of one hour; the spread they show is itself noisy and often too small.
        # Calls arrive at random and each costs a random amount (a compound Poisson sum), whose standard
        # deviation is the square root of the expected sum of squared call costs: the spread is at least that.
        arrival_noise = statistics.fmean(series.get(ago, "cost_squares") for ago in hours) ** 0.5
        spread = max(statistics.stdev(history) * _small_sample_factor(len(history), rule.sigmas), arrival_noise)
        band = mean + rule.sigmas * spread
        observed = series.get(0, "cost")
        if observed <= max(band, rule.min_ratio * mean) or observed - mean < rule.min_usd:
            continue
        found.append(
            Finding(
                "feature_anomaly",
                "feature",
                feature,
                f"feature {feature} cost {usd(observed)} in the last hour, above its band of {usd(band)} "
                f"(mean {usd(mean)} + {rule.sigmas:g} standard deviations over the {basis}); "
                f"{usd(observed - mean)}/hour over normal, about {usd((observed - mean) * 24)}/day if it continues",
                observed,
                mean,
                band,
                "usd/hour",
                f"mean + {rule.sigmas:g} standard deviations of the {basis}",
                observed - mean,
                context.link("/features", timedelta(days=1), feature=feature),
            )
        )
    return found


def user_runaway(context: Context) -> list[Finding]:
    rule = context.rules.user_runaway
    if context.hours < 24:
        return []
    found = []
    days = context.hours // 24
    earlier = {"hour": context.hours - 1, "day": days - 1}
    for row in context.signals.users:
        user = row["user"]
        checks = [("hour", row["last_hour"], row["earlier_hours"] / earlier["hour"], rule.min_usd_hour)]
        if days >= 2:
            checks.append(("day", row["last_day"], row["earlier_days"] / earlier["day"], rule.min_usd_day))
        for span, observed, mean, floor in checks:
            band = rule.factor * mean
            if observed < max(band, floor):
                continue
            found.append(
                Finding(
                    "user_runaway",
                    "user",
                    user,
                    f"user {user} spent {usd(observed)} in the last {span}, {_ratio(observed, mean):.0f}x their "
                    f"trailing average of {usd(mean)} a {span} (alert at {rule.factor:g}x, at least {usd(floor)})",
                    observed,
                    mean,
                    max(band, floor),
                    f"usd/{span}",
                    f"average cost a {span} over the previous {earlier[span]} {span}s",
                    observed - mean,
                    context.link("/users", timedelta(days=1), user=user),
                )
            )
            break
    return found


def spend_rate(context: Context) -> list[Finding]:
    rule = context.rules.spend_rate
    if context.hours < 24:
        return []
    series = _by_group(context.signals.gateway, None).get(GATEWAY, Series({}))
    same_hour = series.seasonal("cost", context.hours + 1)
    mean = statistics.fmean(same_hour)
    observed = series.get(0, "cost")
    band = rule.factor * mean
    if observed <= band or observed - mean < rule.min_usd:
        return []
    return [
        Finding(
            "spend_rate",
            GATEWAY,
            GATEWAY,
            f"the gateway spent {usd(observed)} in the last hour, {_ratio(observed, mean):.1f}x the "
            f"{usd(mean)} usual for this hour (alert above {rule.factor:g}x)",
            observed,
            mean,
            band,
            "usd/hour",
            f"average of the same hour of day on the previous {len(same_hour)} days",
            observed - mean,
            context.link("/", timedelta(days=2)),
        )
    ]


def cache_hit_rate(context: Context) -> list[Finding]:
    rule = context.rules.cache_hit_rate
    if context.hours < 24:
        return []
    found = []
    for feature, series in _by_group(context.signals.features, "feature").items():
        requests = series.get(0, "requests")
        baseline = _ratio(series.total("hits", context.hours), series.total("requests", context.hours))
        if requests < rule.min_requests or baseline < rule.min_baseline_rate:
            continue
        hits = series.get(0, "hits")
        observed = hits / requests
        band = rule.fraction * baseline
        expected = baseline * requests
        noise = rule.sigmas * (expected * (1 - baseline)) ** 0.5
        if observed >= band or expected - hits < noise:
            continue
        missed_cost = _ratio(series.get(0, "cost"), requests - hits)
        lost = (baseline - observed) * requests * missed_cost
        found.append(
            Finding(
                "cache_hit_rate",
                "feature",
                feature,
                f"feature {feature} hit the cache for {observed:.0%} of its last hour's requests, against "
                f"{baseline:.0%} over the trailing week (alert below {band:.0%}); the misses cost about "
                f"{usd(lost)} more this hour",
                observed,
                baseline,
                band,
                "rate",
                f"cache hits per request over the previous {context.hours} hours",
                lost,
                context.link("/cache", timedelta(days=1), feature=feature),
            )
        )
    return found


def latency_p95(context: Context) -> list[Finding]:
    rule = context.rules.latency_p95
    found = []
    for row in context.signals.models:
        if row["attempts"] < rule.min_attempts or row["p95_ms"] is None or row["p95_ms"] <= rule.p95_ms:
            continue
        model = row["value"]
        found.append(
            Finding(
                "latency_p95",
                "model",
                model,
                f"model {model} answered in {row['p95_ms'] / 1000:.1f} s at p95 over the last "
                f"{rule.window_minutes} minutes (alert above {rule.p95_ms / 1000:g} s); "
                f"{usd(row['cost'])} of calls went through it then",
                row["p95_ms"],
                rule.p95_ms,
                rule.p95_ms,
                "ms",
                "a fixed limit",
                row["cost"],
                context.link("/models", timedelta(hours=6), model=model),
            )
        )
    return found


def error_rate(context: Context) -> list[Finding]:
    rule = context.rules.error_rate
    found = []
    for row in context.signals.providers:
        if row["attempts"] < rule.min_attempts or row["errors"] < rule.min_errors:
            continue
        rate = row["errors"] / row["attempts"]
        allowed = rule.rate * row["attempts"]
        if row["errors"] <= allowed + rule.sigmas * (allowed * (1 - rule.rate)) ** 0.5:
            continue
        provider = row["value"]
        found.append(
            Finding(
                "error_rate",
                "provider",
                provider,
                f"provider {provider} failed {row['errors']} of {row['attempts']} attempts ({rate:.1%}) over the "
                f"last {rule.window_minutes} minutes (alert above {rule.rate:.0%}); failed attempts cost "
                f"{usd(row['error_cost'])}",
                rate,
                rule.rate,
                rule.rate,
                "rate",
                "a fixed limit",
                row["error_cost"],
                context.link("/errors", timedelta(hours=6), provider=provider),
            )
        )
    return found


def retry_amplification(context: Context) -> list[Finding]:
    rule = context.rules.retry_amplification
    found = []
    for feature, series in _by_group(context.signals.features, "feature").items():
        requests = series.get(0, "requests")
        if requests < rule.min_requests:
            continue
        amplification = series.get(0, "attempts") / requests
        if amplification <= rule.attempts_per_request:
            continue
        baseline = _ratio(series.total("attempts", context.hours), series.total("requests", context.hours))
        found.append(
            Finding(
                "retry_amplification",
                "feature",
                feature,
                f"feature {feature} made {amplification:.2f} attempts per request in the last hour "
                f"(usual {baseline:.2f}; alert above {rule.attempts_per_request:g}); retries cost "
                f"{usd(series.get(0, 'retry_cost'))}",
                amplification,
                baseline,
                rule.attempts_per_request,
                "attempts/request",
                f"attempts per request over the previous {context.hours} hours",
                series.get(0, "retry_cost"),
                context.link("/errors", timedelta(days=1), feature=feature),
            )
        )
    return found


def _per_request(series: Series, hours: int) -> float:
    return _ratio(series.total("cost", hours), series.total("requests", hours))


def prompt_bloat(context: Context) -> list[Finding]:
    rule = context.rules.prompt_bloat
    if context.hours < 24:
        return []
    found = []
    same_hours, _ = _seasonal_hours(context, spread=0)  # "usual" for this hour on this kind of day
    for feature, series in _by_group(context.signals.features, "feature").items():
        requests = series.get(0, "requests")
        usual_requests = statistics.fmean(series.get(ago, "requests") for ago in same_hours)
        baseline = _per_request(series, context.hours)
        if requests < rule.min_requests or not baseline or not usual_requests:
            continue
        observed = series.get(0, "cost") / requests
        flat = 1 / rule.flat <= requests / usual_requests <= rule.flat
        excess = (observed - baseline) * requests
        if observed < rule.factor * baseline or not flat or excess < rule.min_usd:
            continue
        found.append(
            Finding(
                "prompt_bloat",
                "feature",
                feature,
                f"feature {feature} cost {usd(observed)} per request in the last hour, {observed / baseline:.1f}x "
                f"its trailing-week {usd(baseline)}, while requests stayed flat ({requests:.0f} against a usual "
                f"{usual_requests:.0f}); {usd(excess)} more this hour",
                observed,
                baseline,
                rule.factor * baseline,
                "usd/request",
                f"cost per request over the previous {context.hours} hours",
                excess,
                context.link("/features", timedelta(days=1), feature=feature),
            )
        )
    return found


def latency_cost_divergence(context: Context) -> list[Finding]:
    rule = context.rules.latency_cost_divergence
    if context.hours < 24:
        return []
    found = []
    for feature, series in _by_group(context.signals.features, "feature").items():
        requests = series.get(0, "requests")
        latencies = [value for value in series.history("latency_ms", context.hours) if value]
        cost_baseline = _per_request(series, context.hours)
        if requests < rule.min_requests or not latencies or not cost_baseline or not series.get(0, "latency_ms"):
            continue
        latency_growth = series.get(0, "latency_ms") / statistics.median(latencies)
        cost_growth = series.get(0, "cost") / requests / cost_baseline
        if latency_growth >= rule.min_change and latency_growth >= rule.factor * cost_growth:
            signal, unit = "queueing", "ms"
            observed, baseline = series.get(0, "latency_ms"), statistics.median(latencies)
            what = f"latency grew {latency_growth:.1f}x while cost per request grew {cost_growth:.1f}x (queueing)"
            at_stake = series.get(0, "cost")
        elif cost_growth >= rule.min_change and cost_growth >= rule.factor * latency_growth:
            signal, unit = "payload_growth", "usd/request"
            observed, baseline = series.get(0, "cost") / requests, cost_baseline
            what = f"cost per request grew {cost_growth:.1f}x while latency grew {latency_growth:.1f}x (payload growth)"
            at_stake = series.get(0, "cost") - cost_baseline * requests
        else:
            continue
        found.append(
            Finding(
                "latency_cost_divergence",
                "feature",
                feature,
                f"feature {feature}: {what} in the last hour against the trailing week",
                observed,
                baseline,
                baseline * rule.min_change,
                unit,
                f"median hourly latency and cost per request over the previous {context.hours} hours",
                at_stake,
                context.link("/features", timedelta(days=1), feature=feature),
                signal,
            )
        )
    return found


RULES: dict[str, Callable[[Context], list[Finding]]] = {
    "feature_anomaly": feature_anomaly,
    "user_runaway": user_runaway,
    "spend_rate": spend_rate,
    "cache_hit_rate": cache_hit_rate,
    "latency_p95": latency_p95,
    "error_rate": error_rate,
    "retry_amplification": retry_amplification,
    "prompt_bloat": prompt_bloat,
    "latency_cost_divergence": latency_cost_divergence,
}
"""Rule name (as in the config's `alerts.rules`) -> rule."""


def evaluate(signals: Signals, rules: AlertRulesConfig, dashboard_url: str) -> list[Finding]:
    """Every enabled rule's findings at `signals.at`."""
    context = Context(signals, rules, Linker(dashboard_url, signals.at))
    findings: list[Finding] = []
    for name, rule in RULES.items():
        if getattr(rules, name).enabled:
            findings.extend(rule(context))
    return findings
