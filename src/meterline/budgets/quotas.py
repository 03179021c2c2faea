"""Rate limits: requests and tokens per calendar minute, for each user and for each key.

Per-user limits come from `budgets.quotas` (`user_rpm`, `user_tpm`) and apply to every user a
call is attributed to; per-key limits come from the caller's key (`rpm_limit`, `tpm_limit`).
Each is one counter per minute; tokens are the call's estimated input + output, settled with the
real count afterwards. A call over a limit gets a 429 with Retry-After at the minute's end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from meterline.budgets.counters import Line, Totals
from meterline.config import QuotasConfig

MINUTE_S = 60
_TTL_S = 2 * MINUTE_S


class KeyLimits(Protocol):
    """The rate limits a caller's key carries (`meterline.gateway.auth.Identity` has them)."""

    @property
    def key_id(self) -> str: ...

    @property
    def rpm_limit(self) -> int | None: ...

    @property
    def tpm_limit(self) -> int | None: ...


@dataclass(frozen=True)
class Quota:
    """One rate limit: whom it limits, the counter it uses (without the minute), and its limits."""

    who: str
    key: str
    rpm: int | None
    tpm: int | None
    setting: str
    """Where the limit is set, for messages."""

    def line(self, minute_start: int) -> Line:
        return Line(f"{self.key}:{minute_start}", _TTL_S, limit_tokens=self.tpm, limit_requests=self.rpm)

    def refusal(self, limit: str, totals: Totals, tokens: int, resets_at: str) -> str:
        if limit == "requests":
            used = f"may send {self.rpm:,} requests per minute ({self.setting}) and has sent {totals.requests:,}"
        else:
            used = (
                f"may use {self.tpm:,} tokens per minute ({self.setting}): "
                f"{totals.spent_tokens + totals.held_tokens:,} are used and this call is estimated at {tokens:,}"
            )
        return f"{self.who} {used} this minute; the limit resets at {resets_at}"


def user_quota(prefix: str, quotas: QuotasConfig, user: str | None) -> Quota | None:
    if user is None or (quotas.user_rpm is None and quotas.user_tpm is None):
        return None
    return Quota(f"user '{user}'", f"{prefix}quota:user:{user}", quotas.user_rpm, quotas.user_tpm, "budgets.quotas")


def key_quota(prefix: str, key: KeyLimits) -> Quota | None:
    if key.rpm_limit is None and key.tpm_limit is None:
        return None
    return Quota(
        f"key '{key.key_id}'", f"{prefix}quota:key:{key.key_id}", key.rpm_limit, key.tpm_limit, "the key's limit"
    )
