"""The gateway's sense of time for retries and circuit breakers: what time it is, and waiting.

Backoff waits, deadlines and breaker cool-downs read `Clock.now()` and wait with
`Clock.sleep()`, never the time module directly, so tests can inject a clock whose sleeps
return at once and record what was asked (see `tests/test_resilience.py`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`."""


class SystemClock:
    """Real time: `time.monotonic` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
