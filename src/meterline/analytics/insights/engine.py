"""`GET /api/v1/insights`: run the detectors over the window and list their findings, costliest first.

Parameters besides the common ones: `detector` (comma-separated names, default all of
`DETECTORS`) and `min_usd` (findings costing less per month are left out; default
`DEFAULT_MIN_USD`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from meterline.analytics.call import Call
from meterline.analytics.insights import (
    agents,
    attribution,
    context,
    embeddings,
    model_fit,
    output,
    prompt_cache,
    retries,
)
from meterline.analytics.insights.finding import MONTH_DAYS, Finding, Scan
from meterline.analytics.params import Statement

DETECTORS: dict[str, Callable[[Scan], list[Finding]]] = {
    "retry_amplifier": retries.detect,
    "system_prompt_tax": prompt_cache.detect,
    "model_mismatch": model_fit.detect,
    "embedding_leak": embeddings.detect,
    "context_growth": context.detect,
    "agent_loops": agents.detect,
    "unattributed_spend": attribution.detect,
    "output_bloat": output.detect,
}
DEFAULT_MIN_USD = 1.0


def insights(call: Call) -> dict[str, Any]:
    names = call.params.choices("detector", tuple(DETECTORS))
    min_usd = call.params.number("min_usd", DEFAULT_MIN_USD, 0, 1e12)
    scan = Scan(call, _effective_start(call), min_usd)
    findings = [finding for name in names for finding in DETECTORS[name](scan)]
    findings.sort(key=lambda finding: (-finding.usd_per_month, finding.detector, str(finding.where)))
    return {
        "since": scan.start,
        "until": call.window.until,
        "window_days": scan.days,
        "month_days": MONTH_DAYS,
        "cost_basis": call.window.cost_basis,
        "detectors": list(names),
        "min_usd": min_usd,
        "total_usd_per_month": sum(finding.usd_per_month for finding in findings),
        "total_saving_usd_per_month": sum(finding.saving_usd_per_month or 0.0 for finding in findings),
        "findings": [finding.as_json() for finding in findings],
    }


def _effective_start(call: Call) -> datetime:
    """`since`, or the UTC midnight of the window's first event when the data starts later."""
    statement = Statement()
    (row,) = call.rows(f"SELECT min(e.started_at) AS first FROM {call.events(statement)} e", statement)
    since = call.window.since
    assert since is not None, "the insights endpoint always has a since"
    if row["first"] is None:
        return since
    first = row["first"].astimezone(UTC)
    return max(since, first.replace(hour=0, minute=0, second=0, microsecond=0))
