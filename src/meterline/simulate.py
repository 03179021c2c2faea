"""`meterline simulate`: synthetic traffic with labelled incidents and leaks, for measuring the alerts and insights.

Six features on OpenAI and Anthropic models, a few hundred users of very different sizes, a daily
and weekly rhythm with noise, a small baseline of retried server errors, and exact-cache hits;
beside them the clean deterministic patterns of `meterline.leaks` (an agent, an embedding
indexer). Every call carries the request shape the gateway records (a system prompt below the
provider caching minimum, a max_tokens on most features). That clean traffic is what the insights
detectors must stay quiet on; the leaks of `meterline.leaks` are added on request, from the first
hour on. Into it, incidents of six types are injected at seeded random times after the first week
(so the detector has a trailing week to learn from), each lasting a few hours and far enough
apart to tell them apart:

- `retry_storm`: most attempts of one feature are rate-limited and retried;
- `prompt_bloat`: one feature's prompts grow fourfold at the same request rate;
- `runaway_user`: one user loops, sending hundreds of calls an hour;
- `model_swap`: one feature moves from a cheap model to a pricier one;
- `cache_breakage`: one feature's cache stops hitting;
- `provider_outage`: a provider fails or times out for a large share of calls.

Events are built column-wise and bulk-loaded into the store as Arrow tables, one day per batch, with
the real event schema and priced by the price table. The labels (type, start, end, what the incident
touches, and the leaks injected) are written beside the store as `<store>.incidents.json` for
`bench/alerts.py`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from meterline.events.schema import columns_to_arrow
from meterline.leaks import Patterns, digest
from meterline.pricing.table import PriceTable
from meterline.store.base import Store

INCIDENT_TYPES = ("retry_storm", "prompt_bloat", "runaway_user", "model_swap", "cache_breakage", "provider_outage")
WARMUP_DAYS = 7
PROVIDERS = {"openai": "openai", "anthropic": "anthropic"}
"""The simulated providers, each priced as the genai-prices provider of the same name."""
_MODELS = {
    "gpt-4o-mini": "openai",
    "gpt-4o": "openai",
    "gpt-4.1-mini": "openai",
    "claude-3-5-haiku-20241022": "anthropic",
    "claude-sonnet-4-20250514": "anthropic",
}
_ROW_COLUMNS = (
    "event_id",
    "attempt",
    "started_at",
    "ended_at",
    "duration_ms",
    "status_code",
    "error_class",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "cache_status",
    "request_id",
    "provider",
    "requested_model",
    "team",
    "user",
    "feature",
)
"""The columns of a generated row, in order; the others are derived from them in `take`."""
_PRICIER = {"gpt-4o-mini": "gpt-4o", "gpt-4.1-mini": "gpt-4o", "claude-3-5-haiku-20241022": "claude-sonnet-4-20250514"}


@dataclass(frozen=True)
class Feature:
    name: str
    model: str
    team: str
    per_hour: float
    """Mean requests per hour over a week."""
    input_tokens: int
    output_tokens: int
    cache_rate: float
    system_tokens: int
    """The estimated tokens of its system prompt: all below the 1,024 tokens providers cache."""
    max_tokens: int | None


FEATURES = (
    Feature("search", "gpt-4.1-mini", "search", 220, 6000, 300, 0.35, 800, None),
    Feature("chat", "claude-sonnet-4-20250514", "assistant", 90, 4000, 500, 0.1, 900, 2048),
    Feature("summarize", "gpt-4o", "docs", 70, 8000, 400, 0.2, 400, 1024),
    Feature("support-bot", "claude-3-5-haiku-20241022", "support", 80, 3000, 300, 0.5, 700, 1024),
    Feature("code-review", "claude-sonnet-4-20250514", "platform", 25, 12000, 900, 0.0, 950, 4096),
    Feature("extract", "gpt-4o-mini", "docs", 120, 3000, 200, 0.25, 600, None),
)
_BY_NAME = {feature.name: feature for feature in FEATURES}


@dataclass
class Incident:
    kind: str
    start: datetime
    end: datetime
    feature: str | None = None
    user: str | None = None
    provider: str | None = None
    targets: list[str] = field(default_factory=list)
    """The dimension values an alert about this incident may name (features, users, models, providers)."""

    def active(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "start": self.start.isoformat(), "end": self.end.isoformat()}


def _rhythm(moment: datetime) -> float:
    """Traffic relative to the weekly mean: a daytime peak, quieter nights and weekends."""
    hour = moment.hour + moment.minute / 60
    daily = 0.45 + 0.9 * max(0.0, math.sin(math.pi * (hour - 6) / 14)) if 6 <= hour <= 20 else 0.45
    return daily * (0.65 if moment.weekday() >= 5 else 1.1)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean < 30:
        limit, count, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            count += 1
            product *= rng.random()
        return count
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


class Simulation:
    """Generates the traffic hour by hour; `incidents` change what a feature, user or provider does."""

    def __init__(self, price_table: PriceTable, seed: int, users: int = 300) -> None:
        self.rng = random.Random(seed)
        self.price_table = price_table
        self.users = [f"user-{index:03d}" for index in range(users)]
        self.user_weights = [1 / (index + 1) ** 0.9 for index in range(users)]
        self.rates: dict[str, tuple[float, float]] = {}
        self.rows: list[tuple[Any, ...]] = []
        self._sequence = 0

    def place(self, kinds: list[str], per_kind: int, start: datetime, end: datetime) -> list[Incident]:
        """Incidents of `kinds`, `per_kind` each, in shuffled order, one per equal slot after the warm-up week."""
        order = [kind for kind in kinds for _ in range(per_kind)]
        self.rng.shuffle(order)
        first = start + timedelta(days=WARMUP_DAYS)
        slot = (end - first) / max(1, len(order))
        incidents = []
        for index, kind in enumerate(order):
            hours = self.rng.choice((2, 3, 4))
            offset = self.rng.uniform(0.2, max(0.2, slot.total_seconds() / 3600 - hours - 6))
            begin = (first + slot * index + timedelta(hours=offset)).replace(second=0, microsecond=0)
            incidents.append(self._incident(kind, begin, begin + timedelta(hours=hours)))
        return incidents

    def _incident(self, kind: str, start: datetime, end: datetime) -> Incident:
        pick = self.rng.choice
        if kind == "provider_outage":
            provider = pick(("openai", "anthropic"))
            features = [f.name for f in FEATURES if _MODELS[f.model] == provider]
            models = [model for model, owner in _MODELS.items() if owner == provider]
            return Incident(kind, start, end, provider=provider, targets=[provider, *features, *models])
        if kind == "runaway_user":
            # a loop on a model that costs something: on gpt-4o-mini, 900 calls an hour stay under the $1/hour floor
            feature = pick([f for f in FEATURES if f.model != "gpt-4o-mini"])
            user = self.users[self.rng.randrange(20, 200)]
            return Incident(kind, start, end, feature=feature.name, user=user, targets=[user, feature.name, "gateway"])
        if kind == "cache_breakage":
            feature = pick([f for f in FEATURES if f.cache_rate >= 0.2])
        elif kind == "model_swap":
            feature = pick([f for f in FEATURES if f.model in _PRICIER])
        else:
            feature = pick(FEATURES)
        if kind == "retry_storm":
            targets = [feature.name, _MODELS[feature.model]]
        else:  # each of the others raises spend, enough to move the gateway's total when the feature is large
            targets = [feature.name, "gateway", *([_PRICIER[feature.model]] if kind == "model_swap" else [])]
        return Incident(kind, start, end, feature=feature.name, targets=targets)

    def _rates(self, provider: str, model: str, at: datetime) -> tuple[float, float]:
        """USD per input and per output token (the simulated calls have no cache tokens)."""
        if model not in self.rates:
            per_input = self.price_table.price(provider, model, at, input_tokens=1_000_000, output_tokens=0)
            per_output = self.price_table.price(provider, model, at, input_tokens=0, output_tokens=1_000_000)
            if per_input is None or per_output is None:
                raise ValueError(f"the price table has no price for {provider}/{model}")
            self.rates[model] = (per_input.cost_usd / 1e6, per_output.cost_usd / 1e6)
        return self.rates[model]

    def _call(self, feature: Feature, user: str, moment: datetime, incidents: list[Incident]) -> None:
        """One logical request: its attempts (retries after failures) and maybe a cache hit."""
        rng = self.rng
        model = feature.model
        input_tokens = int(feature.input_tokens * rng.lognormvariate(0, 0.35))
        output_tokens = max(1, int(feature.output_tokens * rng.lognormvariate(0, 0.4)))
        cache_rate = feature.cache_rate
        fail_rate, fail_class = 0.01, "server_error"
        for incident in incidents:
            if incident.feature == feature.name and incident.kind == "prompt_bloat":
                input_tokens *= 4
            elif incident.feature == feature.name and incident.kind == "model_swap":
                model = _PRICIER[model]
            elif incident.feature == feature.name and incident.kind == "cache_breakage":
                cache_rate = 0.0
            elif incident.feature == feature.name and incident.kind == "retry_storm":
                fail_rate, fail_class = 0.6, "rate_limit"
            elif incident.kind == "provider_outage" and incident.provider == _MODELS[model]:
                fail_rate, fail_class = 0.45, "timeout"
        provider = _MODELS[model]
        self._sequence += 1
        request_id = f"sim-{self._sequence:012d}"
        common = (request_id, provider, model, feature.team, user, feature.name)
        if rng.random() < cache_rate:
            self._attempt(common, 1, moment, 4 + rng.random() * 6, 200, "none", input_tokens, output_tokens, 0.0, "hit")
            return
        per_input, per_output = self._rates(provider, model, moment)
        for attempt in range(1, 4):
            failed = attempt < 3 and rng.random() < fail_rate
            if failed and fail_class == "timeout":
                duration = rng.uniform(30_000, 60_000)
                status, tokens_out = 504, 0
            elif failed:
                duration = rng.uniform(50, 400)
                status, tokens_out = 429 if fail_class == "rate_limit" else 500, 0
            else:
                duration = (250 + output_tokens * 8 + input_tokens * 0.03) * rng.lognormvariate(0, 0.25)
                status, tokens_out = 200, output_tokens
            tokens_in = input_tokens if status == 200 else 0
            cost = tokens_in * per_input + tokens_out * per_output
            self._attempt(
                common,
                attempt,
                moment,
                duration,
                status,
                fail_class if failed else "none",
                tokens_in,
                tokens_out,
                cost,
                "miss" if feature.cache_rate else "none",
            )
            if not failed:
                return
            moment += timedelta(milliseconds=duration + 500 * attempt)

    def _attempt(
        self,
        common: tuple[Any, ...],
        attempt: int,
        moment: datetime,
        duration: float,
        status: int,
        error_class: str,
        input_tokens: int,
        output_tokens: int,
        cost: float,
        cache_status: str,
    ) -> None:
        ended = moment + timedelta(milliseconds=duration)
        event_id = f"{common[0]}-{attempt}"
        self.rows.append(
            (
                event_id,
                attempt,
                moment,
                ended,
                duration,
                status,
                error_class,
                input_tokens,
                output_tokens,
                cost,
                cache_status,
                *common,
            )
        )

    def hour(self, start: datetime, incidents: list[Incident]) -> None:
        """The traffic of the hour starting at `start`."""
        rng = self.rng
        end = start + timedelta(hours=1)
        active = [incident for incident in incidents if incident.start < end and incident.end > start]
        for feature in FEATURES:
            count = _poisson(rng, feature.per_hour * _rhythm(start))
            users = rng.choices(self.users, self.user_weights, k=count)
            for user in users:
                moment = start + timedelta(seconds=rng.uniform(0, 3600))
                self._call(feature, user, moment, [i for i in active if i.active(moment)])
        for incident in active:
            if incident.kind == "runaway_user":
                feature = next(f for f in FEATURES if f.name == incident.feature)
                for _ in range(_poisson(rng, 900)):
                    moment = start + timedelta(seconds=rng.uniform(0, 3600))
                    if incident.active(moment):
                        self._call(feature, incident.user or "", moment, [])

    def take(self) -> Any:
        """The events generated since the last call, as one Arrow table of the event schema."""
        columns: dict[str, list[Any]] = dict(zip(_ROW_COLUMNS, map(list, zip(*self.rows, strict=True)), strict=True))
        count = len(self.rows)
        columns["served_model"] = columns["upstream_model"] = columns["response_model"] = columns["requested_model"]
        columns["app"] = columns["team"]
        columns.update(operation=["chat"] * count, env=["prod"] * count, source=["simulated"] * count)
        columns["price_version"] = [self.price_table.version] * count
        features = [_BY_NAME[name] for name in columns["feature"]]
        columns["request_hash"] = [digest(request_id) for request_id in columns["request_id"]]
        columns["prefix_hash"] = [digest("prefix", feature.name) for feature in features]
        columns["system_tokens"] = [feature.system_tokens for feature in features]
        columns["max_tokens"] = [feature.max_tokens for feature in features]
        columns["n_messages"] = [2] * count
        columns["tools_count"] = [0] * count
        self.rows = []
        return columns_to_arrow(columns, count)


def simulate(
    store: Store,
    price_table: PriceTable,
    *,
    days: int,
    end: datetime,
    kinds: list[str],
    per_kind: int = 2,
    seed: int = 7,
    leaks: list[str] | None = None,
    progress: Callable[[int], None] = lambda _day: None,
) -> tuple[int, list[Incident]]:
    """Write `days` of traffic ending at `end` (an hour boundary) into `store`; the events written and the incidents.

    `leaks` (types of `meterline.leaks.LEAK_TYPES`) are injected from the first hour on.
    """
    unknown = sorted(set(kinds) - set(INCIDENT_TYPES))
    if unknown:
        raise ValueError(f"unknown incident type(s) {', '.join(unknown)}; known: {', '.join(INCIDENT_TYPES)}")
    if days <= WARMUP_DAYS and kinds:
        raise ValueError(f"incidents start after a {WARMUP_DAYS}-day warm-up: simulate more than {WARMUP_DAYS} days")
    simulation = Simulation(price_table, seed)
    start = end - timedelta(days=days)
    patterns = Patterns(price_table, leaks or [], start, seed)
    incidents = simulation.place(kinds, per_kind, start, end)
    written = 0
    for day in range(days):
        for hour in range(24):
            moment = start + timedelta(days=day, hours=hour)
            simulation.hour(moment, incidents)
            patterns.hour(moment)
        written += store.insert_events(simulation.take())
        written += store.insert_events(patterns.take())
        progress(day + 1)
    return written, incidents


def labels_path(store_path: Path) -> Path:
    return store_path.with_name(store_path.name + ".incidents.json")


def write_labels(
    path: Path, incidents: list[Incident], start: datetime, end: datetime, leaks: list[str] | None = None
) -> None:
    body = {
        "start": start.isoformat(),
        "end": end.isoformat(),
        "incidents": [i.as_json() for i in incidents],
        "leaks": leaks or [],
    }
    path.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))


def read_labels(path: Path) -> tuple[datetime, datetime, list[Incident]]:
    body = orjson.loads(path.read_bytes())
    incidents = [
        Incident(**{**item, "start": datetime.fromisoformat(item["start"]), "end": datetime.fromisoformat(item["end"])})
        for item in body["incidents"]
    ]
    return datetime.fromisoformat(body["start"]), datetime.fromisoformat(body["end"]), incidents


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
