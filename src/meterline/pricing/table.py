"""The price table: the bundled genai-prices snapshot plus the user's overrides, resolved per model.

`PriceTable.load` reads the overrides file once; prices never change at run time and nothing
is fetched from the network. For a (meterline provider, model) pair the table resolves a list of
`PricePeriod`s, once, and caches it, so pricing a call on the request path is a dict lookup and
a little arithmetic.

How a pair is resolved (and, for the calls of a price variant — batch results, service tiers —
see `meterline.pricing.variants` for where the variant's price comes from):

- `load` is given each configured provider's genai-prices provider id (its `pricing_provider`,
  else its kind's default; None for an `openai_compatible` provider without one, which only
  overrides then price). A provider name that is not configured (e.g. from ingested OTel
  spans) is looked up as a genai-prices provider id, by genai-prices' own rules.
- The model is matched by genai-prices' own rules (`Provider.find_model`: each model's `match`
  clause, dated names such as gpt-4o-mini-2024-07-18, fallback providers such as Azure → OpenAI).
  A name in the provider's `deployments` map (an Azure deployment, a served-model name) is
  looked up as the model it runs; overrides may name either.
- A model's conditional prices become periods: `StartDateConstraint` dates (midnight UTC) start
  new periods; `TimeOfDateConstraint` windows (DeepSeek's off-peak hours) split a period by UTC
  time of day. Each period's rates are what genai-prices itself selects for a call at that time.
- Override model entries replace that price from their `effective_from` on; discounts apply on
  top (see `meterline.pricing.overrides` for the file and its precedence rules).

Batch and service-tier prices are applied by variant (`price_event` reads the event's
`batch_id` and `service_tier`). What is not priced, and said so by `describe`: per-request and
per-search charges; genai-prices variants other than batch processing and service tiers (such
as Anthropic's `speed: fast`);
modality-specific token prices (audio, image tokens are priced at the text rate); and models
whose genai-prices entry cannot be expressed as `ModelRates` (no per-token input price, or more
than one long-context tier) — those are unpriced, never $0.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pyarrow as pa
from genai_prices import __version__ as genai_prices_version
from genai_prices.data import providers as snapshot_providers
from genai_prices.data_snapshot import find_provider_by_id
from genai_prices.types import ModelInfo, ModelPrice, Provider, StartDateConstraint, TieredPrices, TimeOfDateConstraint

from meterline.config import ConfigError
from meterline.events.schema import UsageEvent
from meterline.pricing.overrides import Discount, ModelOverride, Overrides, VariantPrice, Window, parse_overrides
from meterline.pricing.rates import SECONDS_PER_DAY, ModelRates, PricePeriod, cost_usd
from meterline.pricing.variants import (
    BATCH,
    DEFAULT_BATCH_PERCENT,
    describe_variant,
    pricing_variant,
    variant_context,
)

_Dated = TypeVar("_Dated", ModelOverride, Discount, VariantPrice)

_MAX_CACHED_RESOLUTIONS = 10_000
_EARLIEST = datetime.min.replace(tzinfo=UTC)

PERIODS_SCHEMA = pa.schema(
    [
        pa.field("provider", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("effective_from", pa.timestamp("us", tz="UTC")),
        pa.field("effective_to", pa.timestamp("us", tz="UTC")),
        pa.field("day_seconds_from", pa.int32(), nullable=False),
        pa.field("day_seconds_to", pa.int32(), nullable=False),
        pa.field("input_mtok", pa.float64(), nullable=False),
        pa.field("output_mtok", pa.float64(), nullable=False),
        pa.field("cache_read_mtok", pa.float64(), nullable=False),
        pa.field("cache_write_mtok", pa.float64(), nullable=False),
        pa.field("cache_write_1h_mtok", pa.float64(), nullable=False),
        pa.field("tier_threshold", pa.int64()),
        pa.field("tier_input_mtok", pa.float64()),
        pa.field("tier_output_mtok", pa.float64()),
        pa.field("tier_cache_read_mtok", pa.float64()),
        pa.field("tier_cache_write_mtok", pa.float64()),
        pa.field("tier_cache_write_1h_mtok", pa.float64()),
        pa.field("source", pa.string(), nullable=False),
    ]
)
"""Columns of `PriceTable.periods_arrow`; see its docstring."""


class Priced(NamedTuple):
    """The cost of one call and the version of the price table that priced it."""

    cost_usd: float
    price_version: str


@dataclass
class PriceCheck:
    """What `meterline prices check` reports: problems to fix, and configured models without a price."""

    problems: list[str] = field(default_factory=list)
    unpriced: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.unpriced


# What applies from one instant on: the windows covering the day, or () when unpriced.
_Cell = tuple[Window, ...]


@dataclass(frozen=True)
class _Resolution:
    """Everything known about one (provider, model) pair, built once and cached."""

    periods: tuple[PricePeriod, ...]
    slot_starts: tuple[float, ...]
    """Epoch seconds at which each slot starts (the first is -inf)."""
    slots: tuple[tuple[PricePeriod, ...], ...]
    """The periods in force from each slot start, one per time-of-day window; empty = unpriced."""
    notes: tuple[str, ...]
    problems: tuple[str, ...]
    always: PricePeriod | None = field(init=False)
    """The only period, when one all-day period covers all time (the common case, priced without search)."""
    window_starts: tuple[tuple[int, ...], ...] = field(init=False)
    """For each slot, the UTC second of day at which each of its windows starts."""

    def __post_init__(self) -> None:
        single = len(self.slots) == 1 and len(self.slots[0]) == 1
        object.__setattr__(self, "always", self.slots[0][0] if single else None)
        starts = tuple(tuple(period.day_seconds_from for period in slot) for slot in self.slots)
        object.__setattr__(self, "window_starts", starts)

    def at(self, when: datetime) -> PricePeriod | None:
        if self.always is not None:
            return self.always
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp()
        slot = bisect_right(self.slot_starts, seconds) - 1
        windows = self.slots[slot]
        if len(windows) <= 1:
            return windows[0] if windows else None
        # the windows tile the day in order, so the last one starting by this time of day applies
        return windows[bisect_right(self.window_starts[slot], seconds % SECONDS_PER_DAY) - 1]


class PriceTable:
    """Prices for every (meterline provider, model) pair, from the genai-prices snapshot and overrides."""

    def __init__(
        self,
        overrides: Overrides,
        pricing_ids: Mapping[str, str | None],
        version: str,
        deployments: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.version = version
        """Identifies the whole table, e.g. genai-prices-0.2.3+overrides-1a2b3c4d; recorded on each priced event."""
        self._overrides = overrides
        self._pricing_ids = dict(pricing_ids)
        self._deployments = {provider: dict(names) for provider, names in (deployments or {}).items()}
        """Per provider: a deployment or served-model name -> the model it runs."""
        self._snapshot_providers: dict[str, Provider] = {}
        for name, pricing_id in self._pricing_ids.items():
            if pricing_id is None:
                continue
            found = find_provider_by_id(snapshot_providers, pricing_id)
            if found is None:
                known = ", ".join(sorted(provider.id for provider in snapshot_providers))
                raise ConfigError(
                    f"providers.{name}.pricing_provider: {pricing_id!r} is not a genai-prices provider id "
                    f"(known: {known})"
                )
            self._snapshot_providers[name] = found
        self._resolutions: dict[tuple[str, str, str], _Resolution] = {}

    @classmethod
    def load(
        cls,
        overrides_path: Path | None,
        provider_pricing_ids: Mapping[str, str | None],
        deployments: Mapping[str, Mapping[str, str]] | None = None,
    ) -> PriceTable:
        """Build the table from the bundled snapshot and, if given, the overrides file (`ConfigError` if invalid).

        `deployments`: per configured provider, its `deployments` map (deployment -> the model it runs).
        """
        if overrides_path is None:
            version = f"genai-prices-{genai_prices_version}+no-overrides"
            return cls(Overrides(), provider_pricing_ids, version, deployments)
        try:
            content = overrides_path.read_bytes()
            text = content.decode("utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read price overrides file {overrides_path}: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{overrides_path}: the price overrides file is not UTF-8 text") from exc
        digest = hashlib.sha256(content).hexdigest()[:8]
        overrides = parse_overrides(text, str(overrides_path))
        version = f"genai-prices-{genai_prices_version}+overrides-{digest}"
        return cls(overrides, provider_pricing_ids, version, deployments)

    def periods(self, provider: str, model: str, variant: str = "") -> list[PricePeriod]:
        """All price periods for a meterline provider name and a model name as the API reports it; [] = unpriced.

        `variant` (see `meterline.pricing.variants`) selects batch or service-tier prices.
        """
        return list(self._resolution(provider, model, variant).periods)

    def price(
        self,
        provider: str,
        model: str,
        at: datetime,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        cache_write_1h_tokens: int = 0,
        variant: str = "",
    ) -> Priced | None:
        """The cost of one call made at `at` (naive = UTC) at the `variant`'s prices; None when it has no price then."""
        resolution = self._resolutions.get((provider, model, variant)) or self._resolution(provider, model, variant)
        period = resolution.at(at)
        if period is None:
            return None
        cost = cost_usd(
            period.rates,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=cache_read_tokens,
            cache_write_tokens=cache_write_tokens,
            cache_write_1h_tokens=cache_write_1h_tokens,
        )
        return Priced(cost, self.version)

    def rates_at(self, provider: str, model: str, at: datetime) -> ModelRates | None:
        """The rates of a model in force at `at` (naive = UTC); None when it has no price then."""
        period = self._resolution(provider, model).at(at)
        return None if period is None else period.rates

    def price_event(self, event: UsageEvent) -> Priced | None:
        """The cost of a usage event from its stored token counts, at the time it started."""
        return self.price(
            event.provider,
            event.priced_model,
            event.started_at,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            cache_read_tokens=event.cache_read_tokens,
            cache_write_tokens=event.cache_write_tokens,
            cache_write_1h_tokens=event.cache_write_1h_tokens,
            variant=pricing_variant(event.service_tier, event.batch_id),
        )

    def periods_arrow(self, keys: Iterable[tuple[str, str, str]]) -> pa.Table:
        """The periods of the given (provider, model, variant) keys as rows, for re-pricing stored events in SQL.

        Columns (`PERIODS_SCHEMA`): provider, model, variant (`meterline.pricing.variants`);
        effective_from (null: since always) and effective_to (null: open-ended), UTC timestamps, the period covering
        effective_from <= started_at < effective_to; day_seconds_from/day_seconds_to, the UTC
        time-of-day window in seconds since midnight (0 and 86400 for all day); USD per million
        tokens, with fallbacks already applied: input_mtok (uncached input), output_mtok,
        cache_read_mtok, cache_write_mtok (writes that are not 1-hour), cache_write_1h_mtok;
        tier_threshold and tier_*_mtok (null without a long-context tier); source.

        One event's cost, with e the event and p its matching row::

            rate(kind) = CASE WHEN e.input_tokens > p.tier_threshold THEN p.tier_<kind>_mtok ELSE p.<kind>_mtok END
            cost_usd = ( (e.input_tokens - e.cache_read_tokens - e.cache_write_tokens) * rate(input)
                       + e.output_tokens * rate(output)
                       + e.cache_read_tokens * rate(cache_read)
                       + (e.cache_write_tokens - e.cache_write_1h_tokens) * rate(cache_write)
                       + e.cache_write_1h_tokens * rate(cache_write_1h) ) / 1e6

        joined on p.provider = e.provider AND p.model = <the event's priced model> AND p.variant =
        <the event's variant, `VARIANT_SQL`> AND the effective range AND
        day_seconds_from <= (epoch seconds of e.started_at) % 86400 < day_seconds_to.
        """
        rows = []
        for provider, model, variant in dict.fromkeys(keys):
            for period in self._resolution(provider, model, variant).periods:
                rates = period.rates
                tier = rates.tier_resolved if rates.tier_threshold is not None else (None,) * 5
                rows.append(
                    (
                        provider,
                        model,
                        variant,
                        period.effective_from,
                        period.effective_to,
                        period.day_seconds_from,
                        period.day_seconds_to,
                        *rates.resolved,
                        rates.tier_threshold,
                        *tier,
                        period.source,
                    )
                )
        columns = list(zip(*rows, strict=True)) if rows else [[] for _ in PERIODS_SCHEMA]
        return pa.Table.from_arrays(
            [pa.array(values, type=column.type) for values, column in zip(columns, PERIODS_SCHEMA, strict=True)],
            schema=PERIODS_SCHEMA,
        )

    def describe(self, provider: str | None, model: str) -> str:
        """Human-readable prices of a model (for `meterline prices show`); provider None = every configured one."""
        if provider is not None:
            return self._describe_pair(provider, model)
        priced_by = [name for name in self._pricing_ids if self._resolution(name, model).periods]
        if priced_by:
            return "\n\n".join(self._describe_pair(name, model) for name in priced_by)
        listed_by = [snapshot.id for snapshot in snapshot_providers if snapshot.find_model(model)]
        hint = (
            f"genai-prices lists it under {', '.join(listed_by)}: set `pricing_provider` on the provider that serves it"
            if listed_by
            else "add it under `models:` in the price overrides file"
        )
        return f"{model}: no configured provider has a price for it; {hint}"

    def check(self, configured: list[tuple[str, str]]) -> PriceCheck:
        """Check that each configured (provider, upstream model) has a price now and overrides name real providers."""
        result = PriceCheck()
        known = set(self._pricing_ids) | {provider.id for provider in snapshot_providers}
        known |= {pricing_id for pricing_id in self._pricing_ids.values() if pricing_id}
        entries: list[tuple[str, ModelOverride | Discount | VariantPrice]] = [
            *((f"models[{index}]", entry) for index, entry in enumerate(self._overrides.models)),
            *((f"variants[{index}]", entry) for index, entry in enumerate(self._overrides.variants)),
            *((f"discounts[{index}]", entry) for index, entry in enumerate(self._overrides.discounts)),
        ]
        for where, entry in entries:
            if entry.provider not in known:
                result.problems.append(
                    f"overrides {where}: provider {entry.provider!r} is neither a configured provider "
                    f"({', '.join(self._pricing_ids) or 'none'}) nor a genai-prices provider id, so it never applies"
                )
        now = datetime.now(UTC)
        for provider, model in dict.fromkeys(configured):
            resolution = self._resolution(provider, model)
            if resolution.at(now) is None:
                result.unpriced.append((provider, model))
            result.problems.extend(f"{provider}/{model}: {problem}" for problem in resolution.problems)
        return result

    def context_window(self, provider: str, model: str) -> int | None:
        """The model's maximum input tokens as the genai-prices snapshot lists it; None when unknown."""
        snapshot_provider = self._snapshot_providers.get(provider)
        if snapshot_provider is None:
            return None
        info = snapshot_provider.find_model(self._runs(provider, model), all_providers=snapshot_providers)
        return None if info is None else info.context_window

    def _runs(self, provider: str, model: str) -> str:
        """The model a provider's deployment (or served-model name) runs; the name itself when it is not one."""
        return self._deployments.get(provider, {}).get(model, model)

    def _resolution(self, provider: str, model: str, variant: str = "") -> _Resolution:
        key = (provider, model, variant)
        resolution = self._resolutions.get(key)
        if resolution is None:
            if len(self._resolutions) >= _MAX_CACHED_RESOLUTIONS:
                self._resolutions.clear()
            resolution = self._resolutions[key] = self._resolve(provider, model, variant)
        return resolution

    def _resolve(self, provider: str, model: str, variant: str) -> _Resolution:
        snapshot_provider, names, notes = self._provider_for(provider)
        runs = self._runs(provider, model)
        if runs != model:
            notes.append(f"{model!r} runs {runs!r} (providers.{provider}.deployments)")
        snapshot = None
        if snapshot_provider is not None:
            info = snapshot_provider.find_model(runs, all_providers=snapshot_providers)
            if info is None:
                notes.append(f"genai-prices {snapshot_provider.id} has no model matching {runs!r}")
            else:
                snapshot = _SnapshotModel(info, _owner(snapshot_provider, info))
                notes.append(f"genai-prices model: {snapshot.label}" + (f" ({info.name})" if info.name else ""))
        # Overrides may name the model as the API reports it, as the model a deployment runs, or by the
        # genai-prices model it matched.
        model_names = list(dict.fromkeys([model, runs, *([snapshot.info.id] if snapshot else [])]))
        overrides = _applicable(self._overrides.models, names, model_names)
        discounts = _applicable(self._overrides.discounts, names, model_names)
        variants = [
            (index, entry)
            for index, entry in _applicable(self._overrides.variants, names, model_names)
            if entry.variant == variant
        ]
        if overrides or discounts or variants:
            used = [f"models[{index}]" for index, _ in overrides] + [f"variants[{index}]" for index, _ in variants]
            used += [f"discounts[{index}]" for index, _ in discounts]
            notes.append(f"overrides that apply: {', '.join(used)}")
        prices = _VariantPrices(variant, variants)

        boundaries = {entry.effective_from for _, entry in (*overrides, *discounts, *variants) if entry.effective_from}
        if snapshot is not None:
            boundaries.update(snapshot.start_dates)
        starts: list[datetime | None] = [None, *sorted(boundaries)]
        problems: list[str] = []
        merged: list[tuple[datetime | None, _Cell]] = []
        for start in starts:
            cell = _cell_at(start, snapshot, overrides, discounts, prices, problems)
            if not merged or merged[-1][1] != cell:
                merged.append((start, cell))
        ends = [start for start, _ in merged[1:]] + [None]
        slots = tuple(
            tuple(PricePeriod(start, end, rates, source, since, until) for since, until, rates, source in cell)
            for (start, cell), end in zip(merged, ends, strict=True)
        )
        if snapshot is not None:
            notes.extend(snapshot.notes)
        return _Resolution(
            periods=tuple(period for slot in slots for period in slot),
            slot_starts=tuple(float("-inf") if start is None else start.timestamp() for start, _ in merged),
            slots=slots,
            notes=tuple(dict.fromkeys(notes)),
            problems=tuple(dict.fromkeys(problems)),
        )

    def _provider_for(self, provider: str) -> tuple[Provider | None, set[str], list[str]]:
        """The genai-prices provider pricing `provider`, the provider names its overrides use, and notes."""
        if provider in self._pricing_ids:
            snapshot_provider = self._snapshot_providers.get(provider)
            names = {provider, self._pricing_ids[provider] or provider}
            missing = "no genai-prices provider is set for this provider, so only overrides price it"
        else:
            snapshot_provider = find_provider_by_id(snapshot_providers, provider)
            names = {provider}
            missing = f"{provider!r} is neither a configured provider nor a genai-prices provider"
        if snapshot_provider is None:
            return None, names, [missing]
        return snapshot_provider, names | {snapshot_provider.id}, []

    def _describe_pair(self, provider: str, model: str) -> str:
        resolution = self._resolution(provider, model)
        lines = [f"{provider} / {model}"]
        if not resolution.periods:
            lines.append("  no price: calls to it are recorded without a cost")
        for period in resolution.periods:
            lines.append(f"  {_period_heading(period)}  [{period.source}]")
            lines.extend(f"    {line}" for line in _rate_lines(period.rates))
        for variant in self._variants_of(provider, model):
            variant_periods = self._resolution(provider, model, variant).periods
            if [_terms(period) for period in variant_periods] == [_terms(period) for period in resolution.periods]:
                continue  # the standard price
            lines.append(f"  {describe_variant(variant)} calls:")
            for period in variant_periods:
                lines.append(f"    {_period_heading(period)}  [{period.source}]")
                lines.extend(f"      {line}" for line in _rate_lines(period.rates))
        lines.extend(f"  note: {note}" for note in (*resolution.problems, *resolution.notes))
        return "\n".join(lines)

    def _variants_of(self, provider: str, model: str) -> list[str]:
        """The variants with prices of their own for a pair: batch, and every tier genai-prices or an override lists."""
        snapshot_provider, names, _ = self._provider_for(provider)
        info = snapshot_provider.find_model(model, all_providers=snapshot_providers) if snapshot_provider else None
        model_names = [model] if info is None else [model, info.id]
        listed = [entry.variant for _, entry in _applicable(self._overrides.variants, names, model_names)]
        for price_variant in (info.price_variants or []) if info is not None else []:
            listed.extend(f"{key}={value}" for key, value in price_variant.when.items())
        return list(dict.fromkeys([BATCH, *sorted(listed)]))


def _applicable(entries: list[_Dated], names: set[str], model_names: list[str]) -> list[tuple[int, _Dated]]:
    """The (index, entry) pairs for these provider and model names, lowest precedence first.

    Ordered by `effective_from`, then `match` globs before exact `model` names, then file order,
    so that of the entries in force at a time (see `_latest`) the last one applies.
    """
    found = [
        (index, entry)
        for index, entry in enumerate(entries)
        if entry.provider in names and any(entry.matches(name) for name in model_names)
    ]

    def precedence(item: tuple[int, _Dated]) -> tuple[datetime, bool, int]:
        index, entry = item
        exact = isinstance(entry, ModelOverride) and entry.model is not None
        return entry.effective_from or _EARLIEST, exact, index

    return sorted(found, key=precedence)


def _latest(entries: list[tuple[int, _Dated]], instant: datetime | None) -> tuple[int, _Dated] | None:
    """The (index, entry) in force at `instant` (None: the beginning of time): the last that has started."""
    active = None
    for index, entry in entries:
        start = entry.effective_from
        if start is None or (instant is not None and start <= instant):
            active = (index, entry)
    return active


class _VariantPrices:
    """Where the price of one variant comes from: the override entries for it, in precedence order."""

    def __init__(self, variant: str, entries: list[tuple[int, VariantPrice]]) -> None:
        self.variant = variant
        self.context = variant_context(variant)
        self.entries = entries

    def cell(
        self, instant: datetime | None, standard: _Cell, snapshot: _SnapshotModel | None, problems: list[str]
    ) -> _Cell:
        """The variant's windows from `instant` on, given the standard ones (see `meterline.pricing.variants`)."""
        if not self.variant:
            return standard
        entry = _latest(self.entries, instant)
        if entry is not None:
            index, price = entry
            return price.applied(standard, f"variants[{index}]")
        if snapshot is not None:
            listed = snapshot.cell_at(instant, problems, self.context)
            if listed is not None:
                return listed
        if self.variant == BATCH:
            label = f"meterline's default batch price, {DEFAULT_BATCH_PERCENT:g}% of standard"
            return tuple(
                (since, until, rates.scaled(DEFAULT_BATCH_PERCENT / 100), f"{source} ({label})")
                for since, until, rates, source in standard
            )
        return standard


def _cell_at(
    instant: datetime | None,
    snapshot: _SnapshotModel | None,
    overrides: list[tuple[int, ModelOverride]],
    discounts: list[tuple[int, Discount]],
    prices: _VariantPrices,
    problems: list[str],
) -> _Cell:
    """The windows in force from `instant` (None: the beginning of time) until the next boundary.

    genai-prices' variant prices stand beside its own standard price, so an override of the
    standard price also decides the variant's (through a variant entry, the batch default, or as is).
    """
    override = _latest(overrides, instant)
    if override is not None:
        index, entry = override
        standard: _Cell = ((0, SECONDS_PER_DAY, entry.rates(), f"override models[{index}]"),)
        cell = prices.cell(instant, standard, None, problems)
    elif snapshot is not None:
        cell = prices.cell(instant, snapshot.cell_at(instant, problems) or (), snapshot, problems)
    else:
        cell = prices.cell(instant, (), None, problems)
    discount = _latest(discounts, instant)
    if not cell or discount is None or discount[1].percent == 0:
        return cell
    index, entry = discount
    factor = 1 - entry.percent / 100
    suffix = f" + discount {entry.percent:g}% (discounts[{index}])"
    return tuple((since, until, rates.scaled(factor), source + suffix) for since, until, rates, source in cell)


def _owner(provider: Provider, info: ModelInfo) -> Provider:
    """The provider whose list holds `info`: `provider` itself or one of its fallback providers."""
    if any(candidate is info for candidate in provider.models):
        return provider
    return next(
        (other for other in snapshot_providers if any(candidate is info for candidate in other.models)), provider
    )


class _SnapshotModel:
    """One genai-prices model, turned into `ModelRates` per start date and UTC time-of-day window."""

    def __init__(self, info: ModelInfo, owner: Provider) -> None:
        self.info = info
        self.label = f"{owner.id}/{info.id}"
        constraints = [price.constraint for price in info.prices] if isinstance(info.prices, list) else []
        constraints += [variant.constraint for variant in info.price_variants or []]
        self.start_dates = sorted({_midnight(c.start_date) for c in constraints if isinstance(c, StartDateConstraint)})
        breaks = {0}
        for constraint in constraints:
            if isinstance(constraint, TimeOfDateConstraint):
                breaks.update((_utc_second(constraint.start_time), _utc_second(constraint.end_time)))
        edges = sorted(breaks - {SECONDS_PER_DAY})
        self.windows = list(zip(edges, [*edges[1:], SECONDS_PER_DAY], strict=True))
        self.notes: list[str] = []
        variants = sorted({f"{k}={v}" for variant in info.price_variants or [] for k, v in variant.when.items()})
        unapplied = [name for name in variants if not name.startswith(_APPLIED_VARIANT_KEYS)]
        if unapplied:
            self.notes.append(
                f"not applied: genai-prices' prices for {', '.join(unapplied)} (events do not record it; "
                "those calls pay the price they would without it)"
            )
        if len(self.windows) > 1:
            self.notes.append("time-of-day prices are by UTC time, as genai-prices lists them")
        if info.price_comments:
            self.notes.append(f"genai-prices says: {info.price_comments.strip()}")

    def cell_at(
        self, instant: datetime | None, problems: list[str], context: dict[str, str] | None = None
    ) -> _Cell | None:
        """The windows genai-prices selects from `instant` on; () and a problem when they cannot be priced.

        With a price `context` (a variant's): None when genai-prices lists no price for it then.
        """
        if instant is not None:
            day = instant.date()
        elif self.start_dates:
            day = self.start_dates[0].date() - timedelta(days=1)
        else:
            day = date(2000, 1, 1)
        starts = [
            datetime.combine(day, time(since // 3600, since % 3600 // 60, since % 60), UTC) for since, _ in self.windows
        ]
        if context and not any(self._lists(context, when) for when in starts):
            return None
        variant = ", ".join(f"{key}={value}" for key, value in (context or {}).items())
        source = f"genai-prices {self.label}" + (f" ({variant})" if variant else "")
        cell: list[Window] = []
        for (since, until), when in zip(self.windows, starts, strict=True):
            rates, problem, not_applied = _convert(self.info.get_prices(when, context or None))
            if not_applied:
                note = f"not applied (meterline does not count these): {', '.join(not_applied)}"
                if note not in self.notes:
                    self.notes.append(note)
            if rates is None:
                problems.append(f"genai-prices {self.label} has {problem}; price it with an override")
                return ()
            if cell and cell[-1][2] == rates:
                cell[-1] = (cell[-1][0], until, rates, cell[-1][3])
            else:
                cell.append((since, until, rates, source))
        return tuple(cell)

    def _lists(self, context: dict[str, str], when: datetime) -> bool:
        """Whether genai-prices has a price variant for `context` in force at `when`."""
        return any(
            all(context.get(key) == value for key, value in variant.when.items())
            and (variant.constraint is None or variant.constraint.active(when))
            for variant in self.info.price_variants or []
        )


_APPLIED_VARIANT_KEYS = ("processing=", "service_tier=")
"""The genai-prices variant keys meterline prices (see `meterline.pricing.variants`)."""

_SNAPSHOT_KINDS = {
    "input_mtok": "input",
    "output_mtok": "output",
    "cache_read_mtok": "cache_read",
    "cache_write_mtok": "cache_write",
    "cache_write_1h_mtok": "cache_write_1h",
}


class _Conversion(NamedTuple):
    rates: ModelRates | None
    problem: str
    """Why `rates` is None."""
    not_applied: list[str]
    """The prices meterline does not apply, e.g. "web_searches_kcount $10"."""


def _convert(price: ModelPrice) -> _Conversion:
    """One genai-prices price as `ModelRates`, if it can be expressed as such."""
    values = {key: value for key, value in vars(price).items() if value is not None and not key.startswith("_")}
    not_applied = [f"{key} {_price_text(value)}" for key, value in values.items() if key not in _SNAPSHOT_KINDS]
    if not values:
        # Free (":free" models) or not known: genai-prices does not say which, so it stays unpriced.
        return _Conversion(
            None, "no price at all (free, or not known; if free, override it with input_mtok: 0, output_mtok: 0)", []
        )
    if "input_mtok" not in values:
        return _Conversion(None, f"no per-token input price (only {', '.join(values)})", not_applied)
    if "output_mtok" not in values and any(key.startswith("output_") for key in values):
        return _Conversion(None, "output priced only per modality", not_applied)
    token_prices = {_SNAPSHOT_KINDS[key]: value for key, value in values.items() if key in _SNAPSHOT_KINDS}
    starts = {
        tuple(tier.start for tier in value.tiers) for value in token_prices.values() if isinstance(value, TieredPrices)
    }
    if len(starts) > 1 or any(len(tier_starts) != 1 for tier_starts in starts):
        thresholds = sorted({start for tier_starts in starts for start in tier_starts})
        return _Conversion(
            None, f"long-context tiers at {thresholds} input tokens, and meterline models one", not_applied
        )
    rates: dict[str, Any] = {"output": 0.0}  # no output price at all (e.g. embeddings): output is free
    rates.update({kind: float(_base(value)) for kind, value in token_prices.items()})
    if starts:
        ((threshold,),) = starts
        rates.update(tier_threshold=threshold, tier_output=0.0)
        rates.update({f"tier_{kind}": float(_tier_price(value)) for kind, value in token_prices.items()})
    return _Conversion(ModelRates(**rates), "", not_applied)


def _base(value: Decimal | TieredPrices) -> Decimal:
    return value.base if isinstance(value, TieredPrices) else value


def _tier_price(value: Decimal | TieredPrices) -> Decimal:
    return value.tiers[0].price if isinstance(value, TieredPrices) else value


def _price_text(value: Decimal | TieredPrices) -> str:
    return f"${_base(value)}" + (" (+tiers)" if isinstance(value, TieredPrices) else "")


def _terms(period: PricePeriod) -> tuple[object, ...]:
    """What a period charges and when, without where the rates came from."""
    return period.effective_from, period.effective_to, period.day_seconds_from, period.day_seconds_to, period.rates


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _utc_second(moment: time) -> int:
    """Seconds since UTC midnight of a time of day (naive = UTC)."""
    if moment.tzinfo is not None:
        moment = datetime.combine(date(2000, 1, 1), moment).astimezone(UTC).time()
    return moment.hour * 3600 + moment.minute * 60 + moment.second


def _instant_text(instant: datetime) -> str:
    return instant.date().isoformat() if instant.time() == time(0) else instant.isoformat(sep=" ")


def _period_heading(period: PricePeriod) -> str:
    start, end = period.effective_from, period.effective_to
    if start is None:
        heading = "always" if end is None else f"until {_instant_text(end)}"
    else:
        heading = f"from {_instant_text(start)}" + ("" if end is None else f" until {_instant_text(end)}")
    if (period.day_seconds_from, period.day_seconds_to) != (0, SECONDS_PER_DAY):
        heading += f", {_clock(period.day_seconds_from)}-{_clock(period.day_seconds_to)} UTC"
    return heading


def _clock(second_of_day: int) -> str:
    return f"{second_of_day // 3600:02d}:{second_of_day % 3600 // 60:02d}"


def _rate_lines(rates: ModelRates) -> list[str]:
    """One line per token kind, $ per million tokens, saying which rates fall back to another."""
    input_rate, output_rate, read_rate, write_rate, write_1h_rate = rates.resolved
    lines = [
        f"input           ${input_rate:g} / 1M tokens",
        f"output          ${output_rate:g}",
        f"cache read      ${read_rate:g}" + (" (the input rate)" if rates.cache_read is None else ""),
        f"cache write     ${write_rate:g}" + (" (the input rate)" if rates.cache_write is None else ""),
        f"cache write 1h  ${write_1h_rate:g}" + (" (the cache write rate)" if rates.cache_write_1h is None else ""),
    ]
    if rates.tier_threshold is not None:
        tier = ", ".join(
            f"{kind} ${rate:g}"
            for kind, rate in zip(
                ("input", "output", "cache read", "cache write", "cache write 1h"), rates.tier_resolved, strict=True
            )
        )
        lines.append(f"above {rates.tier_threshold:,} input tokens, for every token: {tier}")
    return lines
