"""Logging a dependency that does not answer (a Redis, the budget counters) without flooding the log.

While it is away every call may fail against it; `OutageLog.report` writes the first failure and
then at most one every `interval_s`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

INTERVAL_S = 10.0


class OutageLog:
    def __init__(self, logger: logging.Logger, level: int = logging.WARNING, interval_s: float = INTERVAL_S) -> None:
        self.logger = logger
        self.level = level
        self.interval_s = interval_s
        self._logged_at = -interval_s

    def report(self, message: str, *args: Any) -> None:
        """Log `message % args` unless a report was logged less than `interval_s` ago."""
        now = time.monotonic()
        if now - self._logged_at >= self.interval_s:
            self._logged_at = now
            self.logger.log(self.level, message, *args)
