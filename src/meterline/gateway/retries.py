"""Which failures are retried, how long to wait before the next try, and where a call may go.

A model's route is the model itself, then its `fallbacks` in order (`Routes`, built once at
start-up). A retryable failure (`retryable`: 429, 408, 409, 5xx and 529, network errors,
timeouts) is tried again on the same model up to its `retries`, waiting what the provider asked
(`retry-after-ms`, else `retry-after`) or else an exponential backoff with full jitter
(`backoff_s`); then the next fallback gets its turn. Nothing else is retried (bad requests,
auth, not found, content filters), except that a context-length error goes straight to the
first fallback whose context window is larger. The client may lower the retries with
`x-meterline-retries: N` and a virtual key with its `max_retries`, never raise them (`retries_limit`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from meterline.config import MAX_RETRIES, BackoffConfig, Config, ConfigError, ModelConfig
from meterline.gateway.breaker import FAILURES
from meterline.pricing.table import PriceTable
from meterline.providers.base import ProviderFamily

RETRIES_HEADER = "x-meterline-retries"
ATTEMPTS_HEADER = "x-meterline-attempts"


class RetriesHeaderInvalid(ValueError):
    """`x-meterline-retries` is not a whole number from 0 to `MAX_RETRIES`."""


def retryable(error_class: str, status: int) -> bool:
    """Whether an attempt that ended this way may be tried again (409 is a conflict worth one more go)."""
    return error_class in FAILURES or status == 409


def retry_after_s(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """The wait the provider asked for: `retry-after-ms`, else `retry-after` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    text = headers.get("retry-after")
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds)


def backoff_s(retry: int, backoff: BackoffConfig, rng: random.Random) -> float:
    """Full jitter: a random wait up to min(max_s, initial_s * 2^(retry-1)) before retry number `retry`."""
    return rng.uniform(0, min(backoff.max_s, backoff.initial_s * 2 ** (retry - 1)))


def requested_retries(headers: Mapping[str, str]) -> int | None:
    """The client's `x-meterline-retries`, or None; raises `RetriesHeaderInvalid` for a bad value."""
    value = headers.get(RETRIES_HEADER)
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit() or int(value) > MAX_RETRIES:
        raise RetriesHeaderInvalid(
            f"header '{RETRIES_HEADER}' must be a whole number from 0 to {MAX_RETRIES} (0 turns retries off), "
            f"got {value!r}"
        )
    return int(value)


def retries_limit(headers: Mapping[str, str], key_max_retries: int | None) -> int | None:
    """The most retries a call may have: the lower of the client's header and its key's setting (None: any)."""
    requested = requested_retries(headers)
    if key_max_retries is None:
        return requested
    return key_max_retries if requested is None else min(requested, key_max_retries)


@dataclass(frozen=True)
class Target:
    """A configured model as a place to send a call."""

    name: str
    provider: ProviderFamily
    upstream_model: str
    retries: int
    context_window: int | None


class Routes:
    """Each configured model's route: itself, then its fallbacks, resolved once."""

    def __init__(self, config: Config, providers: Mapping[str, ProviderFamily], price_table: PriceTable) -> None:
        default_retries = config.resilience.retries

        def target(model: ModelConfig) -> Target:
            provider = providers[model.provider]
            window = model.context_window or price_table.context_window(model.provider, model.upstream_name)
            retries = default_retries if model.retries is None else model.retries
            return Target(model.name, provider, model.upstream_name, retries, window)

        targets = {model.name: target(model) for model in config.models}
        self.routes: dict[str, tuple[Target, ...]] = {}
        for model in config.models:
            first = targets[model.name]
            for fallback in model.fallbacks:
                other = targets[fallback].provider
                if other.dialect != first.provider.dialect:
                    raise ConfigError(
                        f"models: {model.name!r} falls back to {fallback!r}, whose provider {other.name!r} speaks "
                        f"the {other.dialect} API while {first.provider.name!r} speaks {first.provider.dialect}; "
                        "a fallback must take the same request format"
                    )
            self.routes[model.name] = (first, *(targets[name] for name in model.fallbacks))

    def route(self, model: str) -> tuple[Target, ...]:
        return self.routes[model]


def larger_window(route: tuple[Target, ...], failed: int) -> int | None:
    """The index of the first target after `failed` whose context window is larger than the failed one's."""
    window = route[failed].context_window
    if window is None:
        return None
    for index in range(failed + 1, len(route)):
        other = route[index].context_window
        if other is not None and other > window:
            return index
    return None
