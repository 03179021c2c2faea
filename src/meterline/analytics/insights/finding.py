"""What every insights detector gets (`Scan`: the window's events, prices, the month factor) and gives (`Finding`).

Money in a finding is per month at the window's rate: what the window's events show, times
`MONTH_DAYS` over the window's length in days. The window runs from `since` (or, when the data
starts later, from the UTC midnight of its first event) to `until`. Amounts that are token
counts times a rate are priced at the rates in force at `until` (today's prices); amounts that
are whole events (failed attempts, duplicate embeddings, loop runs, unattributed calls) are
their cost in the window's `cost_basis`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from meterline.analytics.call import Call
from meterline.analytics.cost import PRICED_MODEL
from meterline.analytics.params import Statement, Window
from meterline.pricing.rates import ModelRates

MONTH_DAYS = 30
"""A month, for `usd_per_month`: 30 days."""

GROUP_SELECT = (
    "e.feature AS feature, e.app AS app, e.provider AS provider, e.requested_model AS model, "
    f"max(e.prompt_version) AS prompt_version, count(DISTINCT e.prompt_version) AS prompt_versions, "
    f"max({PRICED_MODEL}) AS priced_model"
)
"""Select items of a detector grouped by where the waste is (GROUP BY ALL): feature, app, provider and model
(as requested), the greatest prompt version seen and how many, and the model prices are looked up by."""

ANSWERED = "e.error_class = 'none' AND NOT e.cache_status LIKE 'hit%'"
"""Attempts that reached the provider and were answered (not failed, not served from the cache)."""

CHAT_CALLS = "e.operation IN ('chat', 'completion', 'responses', 'messages', 'generate_content')"
"""Calls that generate text (not embeddings)."""

_TOKEN_KINDS = {
    "uncached_input": "greatest(e.input_tokens - e.cache_read_tokens - e.cache_write_tokens, 0)",
    "output": "e.output_tokens",
    "cache_read": "e.cache_read_tokens",
    "cache_write": "greatest(e.cache_write_tokens - e.cache_write_1h_tokens, 0)",
    "cache_write_1h": "e.cache_write_1h_tokens",
}
"""Each kind of token a price has, in the order of `ModelRates.resolved`, as an expression over events `e`."""
TOKEN_SUMS = ", ".join(f"coalesce(sum({tokens}), 0)::BIGINT AS {kind}" for kind, tokens in _TOKEN_KINDS.items())
"""Select items summing the tokens of each kind a price has, read back in that order by `token_counts`."""


@dataclass(frozen=True)
class Finding:
    """One leak: what, where, the evidence, what it costs and what fixing it would save, and how."""

    detector: str
    title: str
    where: dict[str, Any]
    """feature, app, model, provider, prompt_version (when set), and what else pins it down (key_id, run ids)."""
    summary: str
    evidence: dict[str, Any]
    usd_per_month: float
    """What the leak costs per month at the window's rate."""
    saving_usd_per_month: float | None
    """What the fix would save per month (None when the fix is not about money, e.g. attribution)."""
    fix: str
    assumptions: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "title": self.title,
            "where": self.where,
            "summary": self.summary,
            "evidence": self.evidence,
            "usd_per_month": self.usd_per_month,
            "saving_usd_per_month": self.saving_usd_per_month,
            "fix": self.fix,
            "assumptions": self.assumptions,
        }


@dataclass
class Scan:
    """One insights run over the call's window."""

    call: Call
    start: datetime
    """Where the window effectively starts: `since`, or the UTC midnight of the first event when later."""
    min_usd: float
    """Findings costing less per month are left out."""
    _rates: dict[tuple[str, str], ModelRates | None] = field(default_factory=dict)

    @property
    def window(self) -> Window:
        return self.call.window

    @property
    def days(self) -> float:
        return (self.window.until - self.start) / timedelta(days=1)

    def per_month(self, usd_in_window: float) -> float:
        return usd_in_window * MONTH_DAYS / self.days

    def rates(self, provider: str, model: str) -> ModelRates | None:
        """The model's rates in force at the end of the window (today's prices)."""
        key = (provider, model)
        if key not in self._rates:
            self._rates[key] = self.call.price_table.rates_at(provider, model, self.window.until)
        return self._rates[key]

    def rows(self, sql: str, statement: Statement) -> list[dict[str, Any]]:
        return self.call.rows(sql, statement)

    def events(self, statement: Statement) -> str:
        return self.call.events(statement)


def where_of(row: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The `where` of a finding from a row selected with `GROUP_SELECT`."""
    where = {name: row[name] for name in ("feature", "app", "provider", "model")}
    if row["prompt_version"] is not None:
        versions = row["prompt_versions"]
        where["prompt_version"] = row["prompt_version"] + (f" (and {versions - 1} more)" if versions > 1 else "")
    return {**where, **extra}


def label(where: Mapping[str, Any]) -> str:
    """`feature 'x' on model y` (or `unattributed calls` when there is no feature) for summaries."""
    feature = where.get("feature")
    subject = f"feature '{feature}'" if feature is not None else "calls with no feature"
    return f"{subject} on {where['model']}" if where.get("model") else subject


def token_counts(row: Mapping[str, Any]) -> tuple[int, ...]:
    """The sums selected by `TOKEN_SUMS`, in the order of `ModelRates.resolved`."""
    return tuple(row[kind] for kind in _TOKEN_KINDS)


def token_cost(rates_per_mtok: tuple[float, ...], tokens: tuple[int | float, ...]) -> float:
    """USD for token counts at per-million-token rates, kind by kind."""
    return sum(rate * count for rate, count in zip(rates_per_mtok, tokens, strict=True)) / 1e6


def money(usd: float) -> str:
    return f"${usd:,.2f}"
