"""Per-token rates for one model and the cost of one call at those rates.

`ModelRates` holds USD per million tokens for each kind of token meterline records; a
`PricePeriod` says when (and, for off-peak pricing, at which time of day) those rates
apply and where they came from; `cost_usd` prices one call's token counts.

Token counts follow the event schema: `input_tokens` is all input, including cache reads
and cache writes; `cache_write_1h_tokens` is the part of `cache_write_tokens` written with a
1-hour TTL; reasoning tokens are part of `output_tokens` and cost the output rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

SECONDS_PER_DAY = 86_400

RateKinds = tuple[float, float, float, float, float]
"""Rates with fallbacks applied, in the order (input, output, cache read, 5-minute cache write, 1-hour cache write)."""


@dataclass(frozen=True)
class ModelRates:
    """USD per million tokens for one model during one period.

    A missing cache rate falls back: `cache_read` and `cache_write` to `input` (cache tokens
    cost what uncached input costs), `cache_write_1h` to `cache_write`.

    Long-context tier: when `tier_threshold` is set and a call's total input tokens exceed
    it, every token of that call is priced at the `tier_*` rates (the "cliff" rule used by
    Anthropic, Google and OpenAI). `tier_input` and `tier_output` are then required, and each
    `tier_cache_*` rate is given exactly when its base `cache_*` rate is, with the same
    fallbacks among the tier rates.
    """

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    cache_write_1h: float | None = None
    tier_threshold: int | None = None
    tier_input: float | None = None
    tier_output: float | None = None
    tier_cache_read: float | None = None
    tier_cache_write: float | None = None
    tier_cache_write_1h: float | None = None
    resolved: RateKinds = field(init=False, repr=False, compare=False)
    """Base rates with fallbacks applied, see `RateKinds`."""
    tier_resolved: RateKinds = field(init=False, repr=False, compare=False)
    """Rates above `tier_threshold` with fallbacks applied; the base rates when there is no tier."""

    def __post_init__(self) -> None:
        problem = tier_problem(vars(self))
        if problem is not None:
            raise ValueError(problem)
        resolved = _with_fallbacks(self.input, self.output, self.cache_read, self.cache_write, self.cache_write_1h)
        tier_resolved = resolved
        # With no tier problem, tier_input and tier_output are set exactly when tier_threshold is.
        if self.tier_input is not None and self.tier_output is not None:
            tier_resolved = _with_fallbacks(
                self.tier_input, self.tier_output, self.tier_cache_read, self.tier_cache_write, self.tier_cache_write_1h
            )
        object.__setattr__(self, "resolved", resolved)
        object.__setattr__(self, "tier_resolved", tier_resolved)

    def scaled(self, factor: float) -> ModelRates:
        """These rates multiplied by `factor` (e.g. 0.85 for a 15% discount); the threshold is unchanged."""
        return replace(
            self,
            **{name: getattr(self, name) * factor for name in _RATE_FIELDS if getattr(self, name) is not None},
        )


_TIER_FIELDS = ("tier_input", "tier_output", "tier_cache_read", "tier_cache_write", "tier_cache_write_1h")
_RATE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h", *_TIER_FIELDS)


def tier_problem(values: Mapping[str, object], suffix: str = "") -> str | None:
    """What is inconsistent in the long-context tier fields of `values` (keyed by `ModelRates` field names).

    `suffix` is added to rate names in the message, for callers whose fields are named
    differently (the overrides file says `tier_input_mtok`).
    """
    if values.get("tier_threshold") is None:
        given = [f"{name}{suffix}" for name in _TIER_FIELDS if values.get(name) is not None]
        return f"{', '.join(given)} given without tier_threshold" if given else None
    if values.get("tier_input") is None or values.get("tier_output") is None:
        return f"tier_threshold needs tier_input{suffix} and tier_output{suffix} (the rates above the threshold)"
    for kind in ("cache_read", "cache_write", "cache_write_1h"):
        if (values.get(kind) is None) != (values.get(f"tier_{kind}") is None):
            return f"give tier_{kind}{suffix} exactly when {kind}{suffix} is given (its rate above tier_threshold)"
    return None


def _with_fallbacks(
    input_rate: float,
    output_rate: float,
    cache_read: float | None,
    cache_write: float | None,
    cache_write_1h: float | None,
) -> RateKinds:
    write = input_rate if cache_write is None else cache_write
    return (
        input_rate,
        output_rate,
        input_rate if cache_read is None else cache_read,
        write,
        write if cache_write_1h is None else cache_write_1h,
    )


@dataclass(frozen=True)
class PricePeriod:
    """The rates for one model from `effective_from` (None: since always) until `effective_to` (None: open).

    Off-peak pricing splits a period by UTC time of day: the rates apply to calls whose time of
    day, in seconds since UTC midnight, is in [`day_seconds_from`, `day_seconds_to`); an
    all-day period has 0 and 86400. `source` says where the rates came from, e.g.
    "genai-prices openai/gpt-4o-mini" or "override models[2] + discount 15% (discounts[0])".
    """

    effective_from: datetime | None
    effective_to: datetime | None
    rates: ModelRates
    source: str
    day_seconds_from: int = 0
    day_seconds_to: int = SECONDS_PER_DAY


def cost_usd(
    rates: ModelRates,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    cache_write_1h_tokens: int,
) -> float:
    """The USD cost of one call's tokens at `rates`.

    Uncached input is input minus cache reads and writes; 5-minute writes are cache writes
    minus 1-hour writes (both floored at 0 should a provider report inconsistent counts).
    """
    threshold = rates.tier_threshold
    tiered = threshold is not None and input_tokens > threshold
    input_rate, output_rate, read_rate, write_rate, write_1h_rate = rates.tier_resolved if tiered else rates.resolved
    uncached = max(input_tokens - cache_read_tokens - cache_write_tokens, 0)
    writes_5m = max(cache_write_tokens - cache_write_1h_tokens, 0)
    return (
        uncached * input_rate
        + output_tokens * output_rate
        + cache_read_tokens * read_rate
        + writes_5m * write_rate
        + cache_write_1h_tokens * write_1h_rate
    ) / 1_000_000
