"""Crafted traffic for the alert tests: steady hourly calls with chosen cost, latency, cache hits and retries."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from meterline.config import StoreConfig
from meterline.events.schema import columns_to_arrow
from meterline.store.duckdb import DuckDBStore

AT = datetime(2026, 5, 6, 12, 0, tzinfo=UTC)
"""The instant the tests evaluate at: a Wednesday noon, with eight days of history before it."""
HISTORY = timedelta(days=8)
PROVIDER_OF = {"gpt-4o-mini": "openai", "gpt-4o": "openai", "claude-haiku-4-5": "anthropic"}


@dataclass
class Traffic:
    columns: dict[str, list[Any]] = field(default_factory=dict)
    rows: int = 0
    _ids: itertools.count = field(default_factory=itertools.count)

    def calls(
        self,
        start: datetime,
        end: datetime,
        per_hour: int,
        *,
        feature: str = "search",
        user: str | None = None,
        users: int = 10,
        model: str = "gpt-4o-mini",
        cost: float = 0.01,
        duration_ms: float = 800.0,
        hit_every: int = 0,
        failed_attempts: int = 0,
        error_class: str = "rate_limit",
    ) -> Traffic:
        """`per_hour` requests in each hour from `start` to `end`, spread evenly; every `hit_every`th a cache hit,
        each after `failed_attempts` failed attempts."""
        hour = start
        while hour < end:
            for index in range(per_hour):
                moment = hour + timedelta(seconds=3600 * (index + 0.5) / per_hour)
                if moment >= end:
                    break
                request_id = f"req-{next(self._ids)}"
                caller = user or f"user-{index % users}"
                hit = bool(hit_every) and index % hit_every == 0
                attempts = 1 if hit else failed_attempts + 1
                for attempt in range(1, attempts + 1):
                    failed = attempt < attempts
                    self._row(
                        event_id=f"{request_id}-{attempt}",
                        request_id=request_id,
                        attempt=attempt,
                        started_at=moment,
                        ended_at=moment + timedelta(milliseconds=duration_ms),
                        duration_ms=5.0 if hit else duration_ms,
                        operation="chat",
                        provider=PROVIDER_OF[model],
                        requested_model=model,
                        status_code=429 if failed else 200,
                        error_class=error_class if failed else "none",
                        cost_usd=0.0 if hit or failed else cost,
                        cache_status="hit" if hit else "miss",
                        feature=feature,
                        user=caller,
                        input_tokens=100,
                        output_tokens=20,
                    )
            hour += timedelta(hours=1)
        return self

    def _row(self, **values: Any) -> None:
        for name, value in values.items():
            self.columns.setdefault(name, []).append(value)
        self.rows += 1

    def write(self, path: Path) -> Path:
        store = DuckDBStore(StoreConfig(path=path))
        store.open()
        store.insert_events(columns_to_arrow(self.columns, self.rows))
        store.close()
        return path


def steady(at: datetime = AT, **options: Any) -> Traffic:
    """Eight days of the same traffic up to `at`, whose hours alternate between 50 and 70 requests."""
    traffic = Traffic()
    hour = at - HISTORY
    while hour < at:
        traffic.calls(hour, hour + timedelta(hours=1), 50 if hour.hour % 2 else 70, **options)
        hour += timedelta(hours=1)
    return traffic
