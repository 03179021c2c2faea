"""Reconciliation: metered vs billed per provider, model and UTC day, with the gap explained where possible.

`GET /api/v1/usage/daily` gives what meterline metered per day, provider and priced model
(answered upstream calls; cache hits made no provider call and are left out). `reconcile` lines
those rows up with a provider's export (`meterline.analytics.invoices`): models are matched by
name without a date suffix (`gpt-4o-2024-08-06` is `gpt-4o`), providers by their genai-prices id
(a configured `openai` provider named `openai-eu` is reconciled with OpenAI's invoice), and a day
billed without models is compared with all of that day's metered models.

A gap is explained, in this order, by tokens (billed tokens the gateway never saw: traffic that
bypassed it; or metered tokens not billed), unpriced models (metered calls with no price), price
changes (re-priced at today's table the gap closes) and price differences (same tokens, another
price: a change or discount missing from the price overrides). Differences within
`TOKEN_TOLERANCE` and `COST_TOLERANCE_USD` (or 1%) count as matching.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from meterline.analytics.call import Call, bucket_start, instant
from meterline.analytics.cost import CACHE_HIT, PRICED_MODEL
from meterline.analytics.invoices import Billed
from meterline.analytics.params import Statement

_DATED = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{8}|latest)$")
TOKEN_TOLERANCE = 0.02
COST_TOLERANCE_USD = 0.01
ALL_MODELS = "(all models)"
_TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


def daily_usage(call: Call) -> dict[str, Any]:
    statement = Statement()
    sql = f"""
        SELECT {bucket_start("day")} AS day, e.provider AS provider, {PRICED_MODEL} AS model,
            count(*) FILTER (WHERE e.attempt = 1) AS requests, count(*) AS attempts,
            {", ".join(f"coalesce(sum(e.{name}), 0)::BIGINT AS {name}" for name in _TOKEN_FIELDS)},
            coalesce(sum(e.cost), 0) AS cost_usd, count(*) FILTER (WHERE e.cost IS NULL) AS unpriced_attempts
        FROM {call.events(statement)} e WHERE NOT {CACHE_HIT} GROUP BY ALL ORDER BY day, provider, model
    """
    rows = call.rows(sql, statement)
    for row in rows:
        row["day"] = instant(row["day"]).date().isoformat()
    return {"cost_basis": call.window.cost_basis, "rows": rows}


@dataclass
class Metered:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_usd: float = 0.0
    cost_usd_current: float = 0.0
    unpriced_attempts: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def add(self, row: Mapping[str, Any], current_cost: float) -> None:
        for name in ("requests", *_TOKEN_FIELDS, "unpriced_attempts"):
            setattr(self, name, getattr(self, name) + row[name])
        self.cost_usd += row["cost_usd"]
        self.cost_usd_current += current_cost


def invoice_window(billed: Iterable[Billed]) -> tuple[date, date]:
    """The UTC days an export covers: its first day, and the day after its last."""
    days = [line.day for line in billed]
    return min(days), max(days) + timedelta(days=1)


def reconcile(
    billed: list[Billed],
    metered_rows: list[dict[str, Any]],
    current_rows: list[dict[str, Any]],
    family: Callable[[str], str | None],
) -> dict[str, Any]:
    """Line `billed` up with `/usage/daily` rows at the recorded (`metered_rows`) and today's prices (`current_rows`).

    `family(provider)` is a metered provider's genai-prices id (the `provider` of billed lines).
    """
    providers = {line.provider for line in billed}
    days = {line.day for line in billed}
    whole_days = {(line.provider, line.day) for line in billed if line.model is None}
    current = {(row["day"], row["provider"], row["model"]): row["cost_usd"] for row in current_rows}
    metered: dict[tuple[str, date, str], Metered] = {}
    for row in metered_rows:
        provider, day = family(row["provider"]), date.fromisoformat(row["day"])
        if provider not in providers or day not in days:
            continue
        model = ALL_MODELS if (provider, day) in whole_days else canonical_model(row["model"])
        key = (provider, day, model)
        metered.setdefault(key, Metered()).add(row, current.get((row["day"], row["provider"], row["model"]), 0.0))
    billed_by_key: dict[tuple[str, date, str], Billed] = {}
    for line in billed:
        key = (line.provider, line.day, canonical_model(line.model) if line.model else ALL_MODELS)
        billed_by_key.setdefault(key, Billed(line.provider, line.day, line.model)).add(line)
    rows = []
    for key in sorted(set(metered) | set(billed_by_key), key=lambda item: (item[1], item[0], item[2])):
        provider, day, model = key
        row = _row(metered.get(key), billed_by_key.get(key))
        rows.append({"day": day.isoformat(), "provider": provider, "model": model, **row})
    billed_usd = sum(line.cost_usd for line in billed if line.cost_usd is not None)
    metered_usd = sum(item.cost_usd for item in metered.values())
    return {
        "since": min(days).isoformat(),
        "until": (max(days) + timedelta(days=1)).isoformat(),
        "rows": rows,
        "totals": {
            "metered_usd": metered_usd,
            "billed_usd": billed_usd if any(line.cost_usd is not None for line in billed) else None,
            "matched_rows": sum(1 for row in rows if row["explanation"] == "matches"),
            "rows": len(rows),
        },
    }


def canonical_model(name: str) -> str:
    """A model name without its date or `-latest` suffix: `gpt-4o-2024-08-06` and `gpt-4o` are one model."""
    return _DATED.sub("", name)


def _row(metered: Metered | None, billed: Billed | None) -> dict[str, Any]:
    gap_usd = None
    if billed is not None and billed.cost_usd is not None:
        gap_usd = billed.cost_usd - (metered.cost_usd if metered else 0.0)
    return {
        "metered": None if metered is None else vars(metered) | {"tokens": metered.tokens},
        "billed": None
        if billed is None
        else {
            "requests": billed.requests,
            **{name: getattr(billed, name) for name in _TOKEN_FIELDS},
            "cost_usd": billed.cost_usd,
            "files": sorted(billed.sources),
        },
        "gap_usd": gap_usd,
        "explanation": _explain(metered, billed),
    }


def _explain(metered: Metered | None, billed: Billed | None) -> str:
    if billed is None:
        return (
            "metered but not on the export: it may not cover this day or project, or the calls were billed to "
            "another account"
        )
    if metered is None:
        return "billed but never metered: traffic that bypassed the gateway (another key, a direct call, a batch job)"
    explanations = []
    if billed.input_tokens is not None and billed.output_tokens is not None:
        billed_tokens = billed.input_tokens + billed.output_tokens
        gap = billed_tokens - metered.tokens
        if abs(gap) > TOKEN_TOLERANCE * max(billed_tokens, metered.tokens, 1):
            share = abs(gap) / max(billed_tokens, 1)
            if gap > 0:
                worth = f", worth about ${gap * metered.cost_usd / metered.tokens:,.2f}" if metered.tokens else ""
                explanations.append(
                    f"{gap:,} tokens ({share:.0%} of the billed) never went through the gateway: traffic that "
                    f"bypassed it{worth}"
                )
            else:
                explanations.append(
                    f"{-gap:,} more tokens metered than billed: calls the provider did not charge (or another "
                    "account's), or the export misses part of the day"
                )
    if billed.cost_usd is not None:
        gap_usd = billed.cost_usd - metered.cost_usd
        tolerance = max(COST_TOLERANCE_USD, 0.01 * max(abs(billed.cost_usd), abs(metered.cost_usd)))
        if abs(gap_usd) > tolerance and not explanations:
            explanations.append(_cost_gap(metered, billed.cost_usd, gap_usd, tolerance, billed.input_tokens is None))
    return "; ".join(explanations) or "matches"


def _cost_gap(metered: Metered, billed_usd: float, gap_usd: float, tolerance: float, tokens_unknown: bool) -> str:
    if metered.unpriced_attempts:
        return (
            f"{metered.unpriced_attempts:,} metered attempts have no price (an unpriced model): add it to the price "
            "overrides"
        )
    if abs(billed_usd - metered.cost_usd_current) <= tolerance:
        return (
            f"prices changed since the calls were recorded: re-priced at today's table the metered cost is "
            f"${metered.cost_usd_current:,.2f}, as billed"
        )
    if tokens_unknown:
        side = "more" if gap_usd > 0 else "less"
        return (
            f"billed ${abs(gap_usd):,.2f} {side} than metered: traffic that bypassed the gateway or a price "
            "difference (add the usage export to tell them apart)"
        )
    return (
        f"the same tokens cost ${billed_usd:,.2f} on the invoice and ${metered.cost_usd:,.2f} in meterline's price "
        "table: a price change or negotiated discount missing from the price overrides"
    )
