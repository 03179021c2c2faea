"""Agent guardrails: limits per agent run on steps, cost and duration, and a loop detector.

A run is the calls that carry one `x-meterline-agent-run` id. Its counter's requests are its
steps, its spend is its cost, and its first use is its start. The loop detector counts, per run,
each prompt hash: the model plus the request's text lowercased with whitespace collapsed, so
the same prompt sent again with other spacing or case is the same; the `loop_threshold`-th
identical call is a loop. With `action: refuse` the limits are checked before a call goes
upstream and a refused step does not count; with `action: alert` every call goes through and a
breach becomes a notice. Runs are kept for a day after their last call (longer if
`max_duration_s` is longer).
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from meterline.budgets.counters import Line, Totals
from meterline.budgets.rules import format_usd
from meterline.config import AgentsConfig
from meterline.store.base import Store

_DAY_S = 86400
_SETTINGS = {"requests": "max_steps", "usd": "max_cost_usd", "age": "max_duration_s"}
"""Which setting a limit of the run's counter comes from."""


def prompt_hash(model: str, text: str) -> str:
    """The loop detector's identity of a call: the model and its prompt, lowercased, whitespace collapsed."""
    normalised = " ".join(text.lower().split())
    return hashlib.blake2b(f"{model}\0{normalised}".encode(), digest_size=12).hexdigest()


class Guardrails:
    def __init__(self, settings: AgentsConfig, prefix: str) -> None:
        self.settings = settings
        self.prefix = prefix
        limits = (settings.max_steps, settings.max_cost_usd, settings.max_duration_s, settings.loop_threshold)
        self.enabled = any(limit is not None for limit in limits)
        self.refuses = settings.action == "refuse"
        self.ttl_s = int(max(_DAY_S, 2 * (settings.max_duration_s or 0)))

    def run_key(self, run_id: str) -> str:
        return f"{self.prefix}run:{run_id}"

    def run_line(self, run_id: str) -> Line:
        settings = self.settings
        if not self.refuses:
            return Line(self.run_key(run_id), self.ttl_s)
        return Line(
            self.run_key(run_id),
            self.ttl_s,
            limit_usd=settings.max_cost_usd,
            limit_requests=settings.max_steps,
            limit_age_s=settings.max_duration_s,
        )

    def loop_line(self, run_id: str, model: str, text: str) -> Line | None:
        threshold = self.settings.loop_threshold
        if threshold is None:
            return None
        key = f"{self.run_key(run_id)}:loop:{prompt_hash(model, text)}"
        return Line(key, self.ttl_s, limit_requests=threshold - 1 if self.refuses else None)

    @staticmethod
    def setting(limit: str, loop: bool) -> str:
        """The setting behind a passed limit of a run's counter (`loop`: of its loop detector)."""
        return "loop_threshold" if loop else _SETTINGS[limit]

    def passed(self, totals: Totals, loop: bool, now: float) -> list[str]:
        """The settings a run's counter (`loop`: its loop detector's) has gone past after a call (`action: alert`)."""
        settings = self.settings
        if loop:
            looped = settings.loop_threshold is not None and totals.requests >= settings.loop_threshold
            return ["loop_threshold"] if looped else []
        passed = []
        if settings.max_steps is not None and totals.requests > settings.max_steps:
            passed.append("max_steps")
        if settings.max_cost_usd is not None and totals.spent_usd > settings.max_cost_usd:
            passed.append("max_cost_usd")
        if settings.max_duration_s is not None and now - totals.first_at > settings.max_duration_s:
            passed.append("max_duration_s")
        return passed

    def message(self, run_id: str, setting: str, run: Totals, now: float, estimate_usd: float) -> str:
        """What tripped, for the refused client, the event and the notice."""
        settings = self.settings
        run_name = f"agent run '{run_id}'"
        if setting == "max_steps":
            return f"{run_name} has made {run.requests} calls; its limit is {settings.max_steps} (agents.max_steps)"
        if setting == "max_cost_usd":
            return (
                f"{run_name} has cost {format_usd(run.spent_usd + run.held_usd)} (with calls in flight) and this "
                f"step is estimated at {format_usd(estimate_usd)}, against its limit of "
                f"{format_usd(settings.max_cost_usd or 0)} (agents.max_cost_usd)"
            )
        if setting == "max_duration_s":
            return (
                f"{run_name} started {now - run.first_at:,.0f} s ago, past its limit of "
                f"{settings.max_duration_s:g} s (agents.max_duration_s)"
            )
        return (
            f"{run_name} sent the same model the same prompt {settings.loop_threshold} times "
            f"(agents.loop_threshold is {settings.loop_threshold}): it looks stuck in a loop"
        )


def recent_runs(store: Store, since: datetime) -> list[tuple[str, Totals]]:
    """Each agent run with calls since `since`, as its counter's totals, from the stored events."""
    table = store.query(
        """
        SELECT agent_run_id, coalesce(sum(cost_usd), 0) AS usd,
               coalesce(sum(input_tokens + output_tokens), 0) AS tokens,
               count(DISTINCT request_id) AS steps, epoch(min(started_at)) AS first_at
        FROM events
        WHERE agent_run_id IS NOT NULL AND started_at >= $since AND error_class <> 'budget_blocked'
        GROUP BY agent_run_id
        """,
        {"since": since},
    )
    return [
        (row["agent_run_id"], Totals(float(row["usd"]), 0.0, int(row["tokens"]), 0, row["steps"], row["first_at"]))
        for row in table.to_pylist()
    ]
