"""Circuit breakers, one per provider and model: stop calling a model that keeps failing.

A breaker is closed (calls go through) until `failures` retryable failures (rate limits,
server errors, timeouts, network errors) happen within `window_s`; then it is open: the
gateway skips the model (going to a fallback, or answering 503 when nothing else is left)
for `cooldown_s`. After the cool-down it is half-open: exactly one call goes through as a
probe; its success closes the breaker, its failure opens it for another cool-down. Any
answer that is not a failure (including a 400: the provider did answer) counts as a success.

Breakers live in the process's memory; under `serve --workers N` each worker keeps its own,
unless `breaker.redis_url` is set: then a breaker that opens or closes in one process does so in
all of them (`meterline.gateway.breaker_sync`).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from meterline.config import BreakerConfig
from meterline.gateway.clock import Clock

FAILURES = frozenset({"rate_limit", "timeout", "server_error", "network"})
"""The error classes a breaker counts; the same ones the gateway retries."""
NEUTRAL = frozenset({"client_cancelled"})
"""Outcomes that say nothing about the provider's health."""

State = Literal["closed", "open", "half_open"]


@dataclass
class Breaker:
    provider: str
    model: str
    settings: BreakerConfig
    threshold: int
    state: State = "closed"
    opened_at: float | None = None
    retry_at: float | None = None
    probing: bool = False
    last_error: str | None = None
    cause: str = ""
    """Why it opened last: the failures that opened it, or a failed probe."""
    on_change: Callable[[Breaker], None] | None = field(default=None, repr=False)
    """Told when this process's own calls open or close the breaker (not when it `adopt`s a change)."""

    def __post_init__(self) -> None:
        self.failures: deque[float] = deque()

    def allows(self, now: float) -> bool:
        """Whether a call may go to this model now; an open breaker past its cool-down lets one probe through."""
        if self.state == "closed":
            return True
        if self.state == "open":
            assert self.retry_at is not None
            if now < self.retry_at:
                return False
            self.state, self.probing = "half_open", False
        if self.probing:
            return False
        self.probing = True
        return True

    def record(self, error_class: str, error_message: str | None, now: float) -> None:
        """Learn from how a call that `allows` let through ended."""
        if error_class in NEUTRAL:
            self.probing = False
            return
        if error_class not in FAILURES:
            was = self.state
            self.state, self.probing, self.opened_at, self.retry_at = "closed", False, None, None
            self.failures.clear()
            if was != "closed" and self.on_change is not None:
                self.on_change(self)
            return
        self.last_error = f"{error_class}: {error_message}" if error_message else error_class
        if self.state == "half_open":
            self._open(now, "its probe failed")
            return
        self.failures.append(now)
        while self.failures and self.failures[0] <= now - self.settings.window_s:
            self.failures.popleft()
        if len(self.failures) >= self.threshold:
            self._open(now, f"{self.threshold} failures within {self.settings.window_s:g} s")

    def _open(self, now: float, cause: str) -> None:
        self.state, self.probing, self.cause = "open", False, cause
        self.opened_at, self.retry_at = now, now + self.settings.cooldown_s
        self.failures.clear()
        if self.on_change is not None:
            self.on_change(self)

    def adopt(self, opened_at: float | None, retry_at: float | None, cause: str, last_error: str | None) -> None:
        """Take on what another gateway process decided: open from `opened_at` until `retry_at`, or
        (both None) closed. Failures counted here so far are dropped, as after a local change."""
        self.state = "closed" if retry_at is None else "open"
        self.opened_at, self.retry_at, self.probing = opened_at, retry_at, False
        self.failures.clear()
        if retry_at is not None:
            self.cause, self.last_error = cause, last_error

    def describe(self, now: float) -> str:
        """What a refused client is told: which breaker is open, why, and when it lets a call through."""
        assert self.retry_at is not None
        wait = max(0.0, self.retry_at - now)
        when = _wall(self.retry_at, now).isoformat(timespec="seconds").replace("+00:00", "Z")
        return (
            f"the circuit breaker of model '{self.model}' on provider '{self.provider}' is open after {self.cause}"
            f" (last: {self.last_error}); it lets a probe through at {when} (in {wait:.1f} s)"
        )

    def retry_after_s(self, now: float) -> int:
        return max(1, math.ceil((self.retry_at or now) - now))

    def snapshot(self, now: float) -> dict[str, Any]:
        """The breaker's state for `GET /api/v1/providers/health`."""
        recent = [moment for moment in self.failures if moment > now - self.settings.window_s]
        return {
            "provider": self.provider,
            "model": self.model,
            "state": self.state,
            "recent_failures": len(recent),
            "failure_threshold": self.threshold,
            "window_s": self.settings.window_s,
            "cooldown_s": self.settings.cooldown_s,
            "opened_at": None if self.opened_at is None else _iso(_wall(self.opened_at, now)),
            "retry_at": None if self.retry_at is None else _iso(_wall(self.retry_at, now)),
            "cause": None if self.state == "closed" else self.cause,
            "last_error": self.last_error,
        }


def _wall(moment: float, now: float) -> datetime:
    """The wall-clock time of a `Clock` moment, given the clock's `now`."""
    return datetime.fromtimestamp(time.time() + moment - now, UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BreakerBoard:
    """The breakers of every configured (provider, model); empty when `breaker.failures` is unset."""

    def __init__(self, settings: BreakerConfig, models: list[tuple[str, str]], clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.breakers: dict[tuple[str, str], Breaker] = {}
        if settings.failures is not None:
            self.breakers = {
                (provider, model): Breaker(provider, model, settings, settings.failures) for provider, model in models
            }

    @property
    def enabled(self) -> bool:
        return bool(self.breakers)

    def get(self, provider: str, model: str) -> Breaker | None:
        return self.breakers.get((provider, model))

    def health(self) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "breakers_enabled": self.enabled,
            "data": [breaker.snapshot(now) for breaker in self.breakers.values()],
        }
