"""The user's price overrides file: custom and self-hosted models, corrections and negotiated discounts.

It is the YAML file named by `pricing.overrides` in the config. Its shape::

    models:                       # custom or self-hosted models, or corrections to list prices
      - provider: local           # a meterline provider name from the config, or a genai-prices provider id
        model: llama-3.1-70b      # the model name as the API reports it; or `match: "llama-*"` (a glob)
        effective_from: 2026-01-01  # optional: a date (midnight UTC) or a datetime (naive = UTC)
        input_mtok: 0.4           # USD per million tokens; input_mtok and output_mtok are required
        output_mtok: 0.8
        cache_read_mtok: 0.1      # optional; a missing cache_read or cache_write rate is the input rate
        cache_write_mtok: 0.5     # optional: cache writes (5-minute TTL where the provider has two)
        cache_write_1h_mtok: 0.8  # optional: 1-hour cache writes; missing = cache_write_mtok
        tier_threshold: 200000    # optional long-context tier: a call with more input tokens than this
        tier_input_mtok: 0.8      #   pays the tier_* rates for ALL its tokens. tier_input_mtok and
        tier_output_mtok: 1.2     #   tier_output_mtok are then required, and tier_cache_read_mtok,
        tier_cache_read_mtok: 0.2 #   tier_cache_write_mtok, tier_cache_write_1h_mtok exactly when the
                                  #   matching base cache rate is given
      - provider: local
        model: qwen-32b
        gpu: {usd_per_hour: 2.50, input_tokens_per_hour: 20000000, output_tokens_per_hour: 2500000, utilization: 0.5}

    variants:                     # batch and service-tier prices (see meterline.pricing.variants)
      - provider: openai
        processing: batch         # batch results; or service_tier: flex (priority, ...: as the provider names it)
        models: ["gpt-4o*"]       # globs; omitted = every model of that provider
        percent_of_standard: 50   # these calls pay this share of the standard rates in effect; or give
                                  #   input_mtok/output_mtok (and the other rate fields) for exact prices
        effective_from: 2026-01-01

    discounts:                    # negotiated discounts, applied on top of the price in effect
      - provider: openai
        models: ["gpt-4o*"]       # globs; omitted = every model of that provider
        percent: 15
        effective_from: 2026-06-01

GPU amortisation (`gpu:` instead of input_mtok/output_mtok): a GPU costs `usd_per_hour`; in an
hour of doing only prefill it reads `input_tokens_per_hour` tokens, and in an hour of doing only
decode it writes `output_tokens_per_hour` tokens. A call then costs the share of the hour it
used::

    input_mtok  = usd_per_hour / input_tokens_per_hour  * 1_000_000
    output_mtok = usd_per_hour / output_tokens_per_hour * 1_000_000

e.g. $2.50/hour, 20M input and 2.5M output tokens/hour give $0.125 and $1.00 per million. With
a single `tokens_per_hour` (all tokens, input and output, one hour processes for your usual
mix), both rates are `usd_per_hour / tokens_per_hour * 1_000_000`. A GPU is paid for while it
idles too: `utilization` (default 1) is the share of the hour it is busy, and the rates are
divided by it, so the calls it serves carry its whole cost (at 0.5 the example's rates double
to $0.25 and $2.00). Throughputs are per GPU-hour as `usd_per_hour` is: for a model sharded over
8 GPUs, give the 8 GPUs' price and their combined throughput. Cache and tier rates may be given
beside `gpu:`.

Matching: `provider` matches a call's meterline provider name or that provider's genai-prices
id. `model` is compared, and `match`/`models` globs (`*`, `?`, `[...]`) are matched, without
regard to case (as genai-prices does), against the model name the API reports and against the
genai-prices model it matched: `model: gpt-4o-mini` also covers gpt-4o-mini-2024-07-18.

Effective dates: a model entry replaces the genai-prices price from its `effective_from` (no
date: always). When several entries match a call, the one with the latest `effective_from` not
after the call applies; on equal dates an exact `model` beats a `match` glob, then the later
entry in the file wins. So a price correction is one new entry with a date. Discounts and
variants follow the same rule among themselves (they do not add up), and `percent: 0` from a
date ends a discount. A variant entry applies to the calls of its variant only and beats
genai-prices' own price for that variant; without one, batch calls pay
`DEFAULT_BATCH_PERCENT` (50%) of the standard price unless genai-prices lists a batch price.
"""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meterline.config import ConfigError
from meterline.pricing.rates import SECONDS_PER_DAY, ModelRates, tier_problem
from meterline.pricing.variants import BATCH, tier_variant


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _DatedEntry(_Entry):
    effective_from: datetime | None = None

    @field_validator("effective_from")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """Dates (parsed as midnight) and naive datetimes are UTC."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class GpuCost(_Entry):
    """A self-hosted model's GPU cost per hour and throughput, amortised to per-token rates."""

    usd_per_hour: float = Field(gt=0)
    tokens_per_hour: float | None = Field(None, gt=0)
    input_tokens_per_hour: float | None = Field(None, gt=0)
    output_tokens_per_hour: float | None = Field(None, gt=0)
    utilization: float = Field(1.0, gt=0, le=1, description="the share of each hour the GPU is busy")

    @model_validator(mode="after")
    def _one_throughput(self) -> GpuCost:
        split = (self.input_tokens_per_hour, self.output_tokens_per_hour)
        single_only = self.tokens_per_hour is not None and split == (None, None)
        split_only = self.tokens_per_hour is None and None not in split
        if not (single_only or split_only):
            raise ValueError("give either tokens_per_hour, or both input_tokens_per_hour and output_tokens_per_hour")
        return self

    def input_mtok(self) -> float:
        return self._per_million(self.input_tokens_per_hour)

    def output_mtok(self) -> float:
        return self._per_million(self.output_tokens_per_hour)

    def _per_million(self, tokens_per_hour: float | None) -> float:
        throughput = tokens_per_hour if tokens_per_hour is not None else self.tokens_per_hour
        assert throughput is not None, "checked by _one_throughput"
        return self.usd_per_hour / (throughput * self.utilization) * 1_000_000


class _Rates(_Entry):
    """Per-token rates in USD per million tokens, with an optional long-context tier."""

    input_mtok: float | None = Field(None, ge=0)
    output_mtok: float | None = Field(None, ge=0)
    cache_read_mtok: float | None = Field(None, ge=0)
    cache_write_mtok: float | None = Field(None, ge=0)
    cache_write_1h_mtok: float | None = Field(None, ge=0)
    tier_threshold: int | None = Field(None, ge=0)
    tier_input_mtok: float | None = Field(None, ge=0)
    tier_output_mtok: float | None = Field(None, ge=0)
    tier_cache_read_mtok: float | None = Field(None, ge=0)
    tier_cache_write_mtok: float | None = Field(None, ge=0)
    tier_cache_write_1h_mtok: float | None = Field(None, ge=0)

    def rates(self) -> ModelRates:
        return ModelRates(**self._rate_fields())

    def _input_output(self) -> tuple[float | None, float | None]:
        return self.input_mtok, self.output_mtok

    def _rate_fields(self) -> dict[str, Any]:
        """This entry's rates keyed by `ModelRates` field names."""
        input_rate, output_rate = self._input_output()
        return {
            "input": input_rate,
            "output": output_rate,
            "cache_read": self.cache_read_mtok,
            "cache_write": self.cache_write_mtok,
            "cache_write_1h": self.cache_write_1h_mtok,
            "tier_threshold": self.tier_threshold,
            "tier_input": self.tier_input_mtok,
            "tier_output": self.tier_output_mtok,
            "tier_cache_read": self.tier_cache_read_mtok,
            "tier_cache_write": self.tier_cache_write_mtok,
            "tier_cache_write_1h": self.tier_cache_write_1h_mtok,
        }

    def _tier_problem(self) -> None:
        problem = tier_problem(self._rate_fields(), suffix="_mtok")
        if problem is not None:
            raise ValueError(problem)


class ModelOverride(_DatedEntry, _Rates):
    """One price entry for a model (by exact name or glob) of one provider, from a date."""

    provider: str = Field(min_length=1)
    model: str | None = Field(None, min_length=1)
    match: str | None = Field(None, min_length=1)
    gpu: GpuCost | None = None

    @model_validator(mode="after")
    def _complete(self) -> ModelOverride:
        if (self.model is None) == (self.match is None):
            raise ValueError("give exactly one of model (an exact name) or match (a glob such as 'llama-*')")
        if self.gpu is not None and (self.input_mtok is not None or self.output_mtok is not None):
            raise ValueError("give either gpu or input_mtok/output_mtok, not both")
        if self.gpu is None and (self.input_mtok is None or self.output_mtok is None):
            raise ValueError("input_mtok and output_mtok are required (or gpu, for a self-hosted model)")
        self._tier_problem()
        return self

    def matches(self, model: str) -> bool:
        if self.model is not None:
            return self.model.lower() == model.lower()
        return self.match is not None and fnmatch.fnmatchcase(model.lower(), self.match.lower())

    def _input_output(self) -> tuple[float | None, float | None]:
        gpu = self.gpu
        return (gpu.input_mtok(), gpu.output_mtok()) if gpu else (self.input_mtok, self.output_mtok)


# A window of a day's prices: (UTC second of day from, to, rates, where they came from).
Window = tuple[int, int, ModelRates, str]


class VariantPrice(_DatedEntry, _Rates):
    """The price of batch calls or of one service tier, for a provider's models (all, or by glob), from a date."""

    provider: str = Field(min_length=1)
    processing: Literal["batch"] | None = None
    service_tier: str | None = Field(None, min_length=1)
    models: list[str] | None = Field(None, min_length=1)
    percent_of_standard: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _complete(self) -> VariantPrice:
        if (self.processing is None) == (self.service_tier is None):
            raise ValueError("give exactly one of processing: batch or service_tier: <tier>")
        explicit = self.input_mtok is not None or self.output_mtok is not None
        if (self.percent_of_standard is None) == (not explicit):
            raise ValueError("give either percent_of_standard or input_mtok and output_mtok (exact rates)")
        if explicit and (self.input_mtok is None or self.output_mtok is None):
            raise ValueError("input_mtok and output_mtok are both required for exact rates")
        if self.percent_of_standard is not None and any(
            value is not None for name, value in self._rate_fields().items() if name not in ("input", "output")
        ):
            raise ValueError("rate fields cannot be given beside percent_of_standard")
        self._tier_problem()
        return self

    @property
    def variant(self) -> str:
        """The variant this entry prices, named as `meterline.pricing.variants` does."""
        return BATCH if self.processing == "batch" else tier_variant(self.service_tier or "")

    def matches(self, model: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(model.lower(), glob.lower()) for glob in self.models)

    def applied(self, standard: tuple[Window, ...], label: str) -> tuple[Window, ...]:
        """The windows this entry prices, given the standard ones in force; `label` names the entry."""
        if self.percent_of_standard is None:
            return ((0, SECONDS_PER_DAY, self.rates(), f"override {label}"),)
        percent = self.percent_of_standard
        return tuple(
            (since, until, rates.scaled(percent / 100), f"{source} at {percent:g}% ({label})")
            for since, until, rates, source in standard
        )


class Discount(_DatedEntry):
    """A percentage off every rate of a provider's models (all, or those matching `models` globs), from a date."""

    provider: str = Field(min_length=1)
    models: list[str] | None = Field(None, min_length=1)
    percent: float = Field(ge=0, le=100)

    def matches(self, model: str) -> bool:
        return self.models is None or any(fnmatch.fnmatchcase(model.lower(), glob.lower()) for glob in self.models)


class Overrides(_Entry):
    models: list[ModelOverride] = []
    variants: list[VariantPrice] = []
    discounts: list[Discount] = []


def parse_overrides(text: str, origin: str) -> Overrides:
    """Parse and validate an overrides file's text; `origin` (its path) starts every error message."""
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: the price overrides file is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{origin}: the price overrides file must be a mapping with 'models', 'variants' and/or 'discounts'"
        )
    try:
        return Overrides.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: invalid price overrides:\n" + _describe(exc, raw)) from exc


def _describe(error: ValidationError, raw: dict[str, Any]) -> str:
    """One line per problem, naming the entry (e.g. `models[1] (local/qwen-32b)`) and the field."""
    lines = []
    for problem in error.errors():
        location = list(problem["loc"])
        where = ""
        if len(location) >= 2 and isinstance(location[1], int):
            section, index = location[0], location[1]
            where = f"{section}[{index}]{_entry_label(raw[section][index])}"
            location = location[2:]
        where = ".".join([where, *(str(part) for part in location)]).strip(".") or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against the documented overrides shape"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def _entry_label(entry: object) -> str:
    if not isinstance(entry, dict):
        return ""
    model = entry.get("model") or entry.get("match") or entry.get("models")
    variant = entry.get("processing") or entry.get("service_tier")
    parts = [str(part) for part in (entry.get("provider"), model, variant) if part]
    return f" ({'/'.join(parts)})" if parts else ""
