"""Agent loops: runs whose step count or cost sits far above their feature's norm, and repeated near-identical steps.

A run is the events of one `agent_run_id` in the window; its steps are its logical requests
(first attempts), its feature and app those of its first event. A feature's norm is the median
steps and median cost of its runs; with at least `MIN_RUNS` runs, a run is far above it with more
than `STEP_FACTOR` times the median steps and `MIN_EXTRA_STEPS` steps more, or more than
`COST_FACTOR` times the median cost. A step is near-identical to an earlier one of its run when
its answer had the same length and finish reason (answers are not stored: a loop re-issuing one
tool call gives the same answer again).

Dollars per feature: what the runs above the norm cost beyond the median run; a step or cost
limit near the norm (budgets.agents) would have stopped them there.
"""

from __future__ import annotations

import math

from meterline.analytics.insights.finding import Finding, Scan, money
from meterline.analytics.params import Statement

MIN_RUNS = 5
STEP_FACTOR = 3
MIN_EXTRA_STEPS = 10
COST_FACTOR = 3
LISTED_RUNS = 5


def detect(scan: Scan) -> list[Finding]:
    statement = Statement()
    runs = f"""
        SELECT e.agent_run_id AS run, arg_min(e.feature, e.started_at) AS feature, arg_min(e.app, e.started_at) AS app,
            count(*) FILTER (WHERE e.attempt = 1) AS steps, coalesce(sum(e.cost), 0) AS cost,
            count(*) FILTER (WHERE e.attempt = 1)
                - count(DISTINCT (e.output_tokens, e.finish_reason)) FILTER (WHERE e.attempt = 1) AS repeated_steps,
            max(e.requested_model) AS model
        FROM {scan.events(statement)} e WHERE e.agent_run_id IS NOT NULL GROUP BY e.agent_run_id
    """
    norms = """
        SELECT coalesce(feature, '') AS feature_key, count(*) AS runs, median(steps) AS median_steps,
            median(cost) AS median_cost
        FROM runs GROUP BY ALL
    """
    sql = f"""
        WITH runs AS ({runs}), norms AS ({norms})
        SELECT r.run, r.feature, r.app, r.model, r.steps, r.cost, r.repeated_steps, n.runs, n.median_steps,
            n.median_cost
        FROM runs r JOIN norms n ON n.feature_key = coalesce(r.feature, '')
        WHERE n.runs >= {statement.bind(MIN_RUNS)} AND (
            (r.steps > {STEP_FACTOR} * n.median_steps AND r.steps >= n.median_steps + {MIN_EXTRA_STEPS})
            OR r.cost > {COST_FACTOR} * n.median_cost
        )
        ORDER BY r.cost DESC, r.run
    """
    by_feature: dict[str | None, list[dict]] = {}
    for row in scan.rows(sql, statement):
        by_feature.setdefault(row["feature"], []).append(row)
    findings = []
    for feature, outliers in by_feature.items():
        worst = outliers[0]
        excess = sum(max(row["cost"] - row["median_cost"], 0.0) for row in outliers)
        usd = scan.per_month(excess)
        if usd < scan.min_usd:
            continue
        median_steps = worst["median_steps"]
        step_limit = max(MIN_EXTRA_STEPS, math.ceil(STEP_FACTOR * median_steps))
        cost_limit = COST_FACTOR * worst["median_cost"]
        where = {
            "feature": feature,
            "app": worst["app"],
            "model": worst["model"],
            "agent_run_ids": [row["run"] for row in outliers[:LISTED_RUNS]],
        }
        subject = f"feature '{feature}'" if feature is not None else "runs with no feature"
        findings.append(
            Finding(
                detector="agent_loops",
                title="Agent runs loop far past their norm",
                where=where,
                summary=(
                    f"{len(outliers)} of {worst['runs']} runs of {subject} went far past its norm of "
                    f"{median_steps:g} steps and {money(worst['median_cost'])} a run; the worst, {worst['run']}, "
                    f"took {worst['steps']} steps ({worst['repeated_steps']} near-identical) and cost "
                    f"{money(worst['cost'])}: {money(usd)} a month beyond the norm"
                ),
                evidence={
                    "runs": worst["runs"],
                    "runs_above_norm": len(outliers),
                    "median_steps": median_steps,
                    "median_cost_usd": worst["median_cost"],
                    "worst_run": {
                        "agent_run_id": worst["run"],
                        "steps": worst["steps"],
                        "repeated_steps": worst["repeated_steps"],
                        "cost_usd": worst["cost"],
                    },
                    "excess_cost_usd": excess,
                },
                usd_per_month=usd,
                saving_usd_per_month=usd,
                fix=(
                    f"Give runs a guardrail near the norm, e.g. budgets.agents: {{max_steps: {step_limit}, "
                    f"max_cost_usd: {cost_limit:.4g}, loop_threshold: 3, action: refuse}}, and make the agent stop "
                    "when a tool call repeats"
                ),
                assumptions="the saving assumes runs stopped at the norm's cost would have done their job",
            )
        )
    return findings
