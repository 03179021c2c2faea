"""Deterministic traffic for `meterline simulate`: the eight leaks the insights find, and clean look-alikes.

Every pattern here sends the same calls at the same minutes of every hour, with fixed token
counts, so what a leak costs over any whole number of hours can be worked out by hand from the
numbers below and the price table (each event is priced by `PriceTable.price`, long-context
tiers included). The clean patterns (`planner`, an agent whose runs take 4 to 8 steps, and
`search-index`, which embeds a new document every time) run in every simulation, beside the
features of `meterline.simulate`; a leak runs only when asked for. All calls carry the shape
columns the gateway records (request and prefix hashes, estimated system tokens, max_tokens).

The leaks (named after the detector that finds each):

- `retry_amplifier` (feature `ingest`, gpt-4o): every 10 minutes a 4,000-in/500-out stream
  times out after its tokens were billed (estimated usage); the client resends at once, is
  rate-limited with Retry-After 20 s, and resends after 1 s, which succeeds.
- `system_prompt_tax` (`triage`, claude-sonnet-4-20250514): a burst of 10 calls, one a minute,
  at the top of every hour, each with the same 2,000-token system prompt (2,500 in, 150 out) and
  no cache reads.
- `model_mismatch` (`classify`, gpt-4o): 30 calls an hour, 400 tokens in and 2, 3 or 4 out in turn.
- `embedding_leak` (`docs-index`, text-embedding-3-large): a minute's call embeds one of the same
  20 documents of 8,000 tokens, in turn.
- `context_growth`: `assistant-memory` (claude-sonnet-4-5, 10 calls an hour, 300 out) sends
  20,000 input tokens on the first day and 4,000 more each day after (over 14-day cycles);
  `contract-review` (claude-sonnet-4-5) sends 210,000 tokens once an hour, above its 200,000 tier.
- `agent_loops` (`browse-agent`, claude-sonnet-4-20250514): two runs an hour of 5 steps (3,000 in,
  150 + step out), and at 12:45 UTC every day a run of 60 identical steps (3,000 in, 150 out).
- `unattributed_spend` (key `key-batch`, app `batch-jobs`, gpt-4o): 20 calls an hour (2,000 in,
  300 out) with no feature, user or team.
- `output_bloat` (`faq-bot`, gpt-4o): 20 calls an hour (1,500 in), 120 tokens out except every
  20th call, which runs to 3,000; no max_tokens.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timedelta

import pyarrow as pa

from meterline.events.schema import arrow_schema, columns_to_arrow
from meterline.pricing.table import PriceTable

LEAK_TYPES = (
    "retry_amplifier",
    "system_prompt_tax",
    "model_mismatch",
    "embedding_leak",
    "context_growth",
    "agent_loops",
    "unattributed_spend",
    "output_bloat",
)
MODEL_PROVIDERS = {
    "gpt-4o": "openai",
    "gpt-4.1-mini": "openai",
    "text-embedding-3-large": "openai",
    "text-embedding-3-small": "openai",
    "claude-sonnet-4-20250514": "anthropic",
    "claude-sonnet-4-5": "anthropic",
}
GROWTH_CYCLE_DAYS = 14
LOOP_HOUR = 12


@dataclass
class Attempt:
    """One generated event: the columns the patterns set (the others take the schema's defaults)."""

    event_id: str
    request_id: str
    attempt: int
    started_at: datetime
    ended_at: datetime
    duration_ms: float
    operation: str
    streaming: bool
    provider: str
    requested_model: str
    served_model: str
    upstream_model: str
    response_model: str
    status_code: int
    error_class: str
    finish_reason: str | None
    input_tokens: int
    output_tokens: int
    usage_source: str
    cost_usd: float | None
    price_version: str
    cache_status: str
    key_id: str | None
    team: str | None
    app: str | None
    user: str | None
    feature: str | None
    env: str
    agent_run_id: str | None
    agent_step: int | None
    source: str
    retry_after_s: float | None
    request_hash: str
    prefix_hash: str | None
    system_tokens: int
    max_tokens: int | None
    n_messages: int
    tools_count: int


@dataclass(frozen=True)
class Owner:
    """Who a pattern's calls are attributed to."""

    feature: str | None
    team: str | None
    app: str
    key_id: str | None = None


def digest(*parts: object) -> str:
    return hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=16).hexdigest()


class Patterns:
    """Generates the deterministic patterns hour by hour; `take` hands over what was generated."""

    def __init__(self, price_table: PriceTable, leaks: list[str], start: datetime, seed: int) -> None:
        unknown = sorted(set(leaks) - set(LEAK_TYPES))
        if unknown:
            raise ValueError(f"unknown leak type(s) {', '.join(unknown)}; known: {', '.join(LEAK_TYPES)}")
        self.price_table = price_table
        self.leaks = set(leaks)
        self.start = start
        self.rng = random.Random(seed)  # the clean agent's step counts only
        self.rows: list[Attempt] = []
        self._requests = 0

    def hour(self, start: datetime) -> None:
        """The calls of every pattern in the hour starting at `start` (an hour boundary)."""
        self._planner(start)
        self._search_index(start)
        for leak in LEAK_TYPES:
            if leak in self.leaks:
                getattr(self, f"_{leak}")(start)

    def take(self) -> pa.Table:
        if not self.rows:
            return arrow_schema().empty_table()
        names = [field.name for field in fields(Attempt)]
        columns = dict(zip(names, map(list, zip(*map(astuple, self.rows), strict=True)), strict=True))
        table = columns_to_arrow(columns, len(self.rows))
        self.rows = []
        return table

    # ---- one call -----------------------------------------------------------------------------

    def call(
        self,
        owner: Owner,
        at: datetime,
        model: str,
        input_tokens: int,
        output_tokens: int,
        *,
        request_hash: str,
        duration_ms: float = 1500.0,
        attempt: int = 1,
        request_id: str | None = None,
        operation: str = "chat",
        error_class: str = "none",
        status_code: int = 200,
        retry_after_s: float | None = None,
        system_tokens: int = 0,
        max_tokens: int | None = 1024,
        user: str | None = None,
        agent: tuple[str, int] | None = None,
        finish_reason: str | None = "stop",
        estimated: bool = False,
    ) -> Attempt:
        provider = MODEL_PROVIDERS[model]
        if request_id is None:
            self._requests += 1
            request_id = f"pattern-{self._requests:012d}"
        priced = self.price_table.price(provider, model, at, input_tokens=input_tokens, output_tokens=output_tokens)
        if priced is None:
            raise ValueError(f"the price table has no price for {provider}/{model}")
        row = Attempt(
            event_id=f"{request_id}-{attempt}",
            request_id=request_id,
            attempt=attempt,
            started_at=at,
            ended_at=at + timedelta(milliseconds=duration_ms),
            duration_ms=duration_ms,
            operation=operation,
            streaming=operation == "chat",
            provider=provider,
            requested_model=model,
            served_model=model,
            upstream_model=model,
            response_model=model,
            status_code=status_code,
            error_class=error_class,
            finish_reason=finish_reason if error_class == "none" else None,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            usage_source="estimated" if estimated else "provider",
            cost_usd=priced.cost_usd,
            price_version=priced.price_version,
            cache_status="none",
            key_id=owner.key_id,
            team=owner.team,
            app=owner.app,
            user=user if owner.feature is None else user or f"{owner.feature}-user",
            feature=owner.feature,
            env="prod",
            agent_run_id=agent[0] if agent else None,
            agent_step=agent[1] if agent else None,
            source="simulated",
            retry_after_s=retry_after_s,
            request_hash=request_hash,
            prefix_hash=digest("prefix", owner.feature, owner.app) if system_tokens else None,
            system_tokens=system_tokens,
            max_tokens=None if operation == "embeddings" else max_tokens,
            n_messages=1 if operation == "embeddings" else 2,
            tools_count=0,
        )
        self.rows.append(row)
        return row

    # ---- clean patterns -----------------------------------------------------------------------

    def _planner(self, hour: datetime) -> None:
        """Three agent runs an hour of 4 to 8 steps on gpt-4.1-mini."""
        owner = Owner("planner", "assistant", "assistant")
        for index, minute in enumerate((5, 25, 45)):
            run = digest("planner", hour, index)
            for step in range(1, self.rng.randint(4, 8) + 1):
                at = hour + timedelta(minutes=minute, seconds=15 * step)
                tokens_in = 2000 + 400 * step
                self.call(
                    owner, at, "gpt-4.1-mini", tokens_in, 200 + step, request_hash=digest(run, step), agent=(run, step)
                )

    def _search_index(self, hour: datetime) -> None:
        """30 new documents an hour embedded once each."""
        owner = Owner("search-index", "search", "search")
        for index in range(30):
            at = hour + timedelta(minutes=2 * index)
            self.call(
                owner,
                at,
                "text-embedding-3-small",
                600,
                0,
                request_hash=digest("new-doc", hour, index),
                operation="embeddings",
                duration_ms=120,
            )

    # ---- leaks --------------------------------------------------------------------------------

    def _retry_amplifier(self, hour: datetime) -> None:
        owner = Owner("ingest", "data", "ingest-worker", key_id="key-ingest")
        for index in range(6):
            logical = digest("ingest", hour, index)
            failed = self.call(
                owner,
                hour + timedelta(minutes=10 * index),
                "gpt-4o",
                4000,
                500,
                request_hash=logical,
                duration_ms=30_000,
                error_class="timeout",
                status_code=504,
                estimated=True,
                system_tokens=600,
            )
            limited = self.call(
                owner,
                failed.ended_at + timedelta(milliseconds=200),
                "gpt-4o",
                0,
                0,
                request_hash=logical,
                duration_ms=80,
                error_class="rate_limit",
                status_code=429,
                retry_after_s=20.0,
                system_tokens=600,
            )
            self.call(
                owner,
                limited.ended_at + timedelta(seconds=1),
                "gpt-4o",
                4000,
                500,
                request_hash=logical,
                duration_ms=9000,
                system_tokens=600,
            )

    def _system_prompt_tax(self, hour: datetime) -> None:
        owner = Owner("triage", "support", "support-desk")
        for minute in range(10):
            self.call(
                owner,
                hour + timedelta(minutes=minute),
                "claude-sonnet-4-20250514",
                2500,
                150,
                request_hash=digest("triage", hour, minute),
                system_tokens=2000,
            )

    def _model_mismatch(self, hour: datetime) -> None:
        owner = Owner("classify", "ops", "mail-router")
        for index in range(30):
            self.call(
                owner,
                hour + timedelta(minutes=2 * index),
                "gpt-4o",
                400,
                2 + index % 3,
                request_hash=digest("classify", hour, index),
                max_tokens=5,
                system_tokens=300,
            )

    def _embedding_leak(self, hour: datetime) -> None:
        owner = Owner("docs-index", "knowledge", "kb")
        for minute in range(60):
            self.call(
                owner,
                hour + timedelta(minutes=minute),
                "text-embedding-3-large",
                8000,
                0,
                request_hash=digest("doc", minute % 20),
                operation="embeddings",
                duration_ms=200,
            )

    def _context_growth(self, hour: datetime) -> None:
        day = (hour - self.start) // timedelta(days=1) % GROWTH_CYCLE_DAYS
        memory = Owner("assistant-memory", "assistant", "assistant")
        for index in range(10):
            self.call(
                memory,
                hour + timedelta(minutes=6 * index),
                "claude-sonnet-4-5",
                20_000 + 4_000 * day,
                300,
                request_hash=digest("memory", hour, index),
                system_tokens=900,
            )
        review = Owner("contract-review", "legal", "legal")
        self.call(
            review,
            hour + timedelta(minutes=30),
            "claude-sonnet-4-5",
            210_000,
            1000,
            request_hash=digest("contract", hour),
            duration_ms=40_000,
            system_tokens=500,
            max_tokens=4096,
        )

    def _agent_loops(self, hour: datetime) -> None:
        owner = Owner("browse-agent", "research", "research")
        runs = [(digest("browse", hour, minute), minute, 5, 20) for minute in (0, 30)]
        if hour.hour == LOOP_HOUR:
            runs.append((digest("browse-loop", hour), 45, 60, 10))
        for run, minute, steps, seconds in runs:
            for step in range(1, steps + 1):
                at = hour + timedelta(minutes=minute, seconds=seconds * step)
                output = 150 if steps > 5 else 150 + step
                self.call(
                    owner,
                    at,
                    "claude-sonnet-4-20250514",
                    3000,
                    output,
                    request_hash=digest(run, step),
                    agent=(run, step),
                    finish_reason="tool_use",
                    system_tokens=800,
                    duration_ms=4000,
                )

    def _unattributed_spend(self, hour: datetime) -> None:
        owner = Owner(None, None, "batch-jobs", key_id="key-batch")
        for index in range(20):
            self.call(
                owner,
                hour + timedelta(minutes=3 * index),
                "gpt-4o",
                2000,
                300,
                request_hash=digest("batch", hour, index),
            )

    def _output_bloat(self, hour: datetime) -> None:
        owner = Owner("faq-bot", "support", "help-center")
        for index in range(20):
            output = 3000 if index == 19 else 120
            self.call(
                owner,
                hour + timedelta(minutes=3 * index),
                "gpt-4o",
                1500,
                output,
                request_hash=digest("faq", hour, index),
                max_tokens=None,
                system_tokens=400,
            )
