"""Turns a finished upstream attempt into a priced `UsageEvent` and hands it to the spool.

`CallContext` holds what is known about one logical request before it goes upstream;
`Recorder.record` builds the event for one attempt, prices it from the price table at the
attempt's start time, and appends it to the spool (one write to the OS) before the client
gets the end of its response.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from meterline.cache.service import Plan
from meterline.events.schema import UsageEvent, new_id, new_span_id
from meterline.events.spool import SpoolWriter
from meterline.gateway.attribution import Attribution
from meterline.gateway.auth import Identity
from meterline.pricing.table import PriceTable
from meterline.providers.base import Dialect, StreamState, Usage
from meterline.providers.estimate import estimate_tokens, estimator_name
from meterline.providers.shape import RequestShape


@dataclass
class CallContext:
    """One logical request as the gateway accepted it."""

    operation: str
    dialect: Dialect
    body: dict[str, Any]
    identity: Identity
    attribution: Attribution
    provider: str = ""
    requested_model: str = ""
    served_model: str = ""
    """The configured model that serves the call when a budget downgraded it; empty: the requested one."""
    upstream_model: str = ""
    streaming: bool = False
    request_id: str = field(default_factory=new_id)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started_perf: float = field(default_factory=time.perf_counter)
    events: list[UsageEvent] = field(default_factory=list)
    """The events recorded for this call so far, one per attempt."""
    cache_plan: Plan | None = None
    """What the response cache does for this call; None when the cache is off."""
    usage_injected: bool = False
    """The gateway asked the provider for stream usage the client did not ask for (the meter hides it)."""
    attempt: int = 0
    """The number of the upstream attempt under way (1 for the first); 0 before any."""
    shape: RequestShape | None = None
    """Hashes and counts of the body as the client sent it, recorded on every attempt's event; set where the
    gateway accepts a body (`Dialect.request_shape`), before anything changes it."""

    def begin_attempt(self) -> None:
        """Count a new upstream attempt; attempts after the first are timed from their own start."""
        self.attempt += 1
        if self.attempt > 1:
            self.started_at = datetime.now(UTC)
            self.started_perf = time.perf_counter()

    output_text: str | None = None
    """The text of the answer, kept only when content is exported (`otel.export.capture_content`)."""

    def elapsed_ms(self) -> float:
        """Milliseconds since the attempt under way started (the first: since the request arrived)."""
        return (time.perf_counter() - self.started_perf) * 1000

    @property
    def team(self) -> str | None:
        return self.attribution.team or self.identity.team

    @property
    def cache_status(self) -> str:
        """`none` without a cache plan, else `hit_exact`, `hit_semantic`, `miss`, `bypass` or `refresh`."""
        return "none" if self.cache_plan is None else self.cache_plan.status

    @property
    def app(self) -> str | None:
        return self.attribution.app or self.identity.app

    @property
    def user(self) -> str | None:
        return self.attribution.user or self.identity.user


@dataclass
class Outcome:
    """How one attempt ended."""

    status_code: int
    usage: Usage | None = None
    estimated: bool = False
    error_class: str = "none"
    error_message: str | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reason: str | None = None
    service_tier: str | None = None
    """The tier the provider says served the call; None: the request's tier is recorded."""
    ttft_ms: float | None = None
    saved_usd: float | None = None
    """For a cache hit: what the call that produced the answer cost."""
    retry_after_s: float | None = None
    """For a failed attempt: the wait the provider asked for before a retry."""


def estimated_usage(call: CallContext, reported: Usage | None, output_text: str) -> Usage:
    """Fill in what the provider did not report: input from the request text, output from what was seen."""
    usage = reported or Usage()
    if usage.input_tokens == 0:
        usage.input_tokens = estimate_tokens(call.dialect.request_text(call.operation, call.body))
    usage.output_tokens = max(usage.output_tokens, estimate_tokens(output_text))
    return usage


def outcome_of_stream(call: CallContext, state: StreamState, status_code: int, ttft_ms: float | None) -> Outcome:
    """The outcome of a stream from what its meter saw; usage is estimated unless the stream completed."""
    complete = state.finished and state.usage is not None
    return Outcome(
        status_code=status_code,
        usage=state.usage if complete else estimated_usage(call, state.usage, "".join(state.output_text_parts)),
        estimated=not complete,
        error_class=state.error_class or "none",
        error_message=state.error_message,
        response_model=state.response_model,
        response_id=state.response_id,
        finish_reason=state.finish_reason,
        service_tier=state.service_tier,
        ttft_ms=ttft_ms,
    )


class CallObserver(Protocol):
    """Told of each logical request once it is over (telemetry: Prometheus counters, OTLP export).

    Called on the event loop after the call's last attempt is recorded, so it must only do cheap,
    non-blocking work (count, or put the call on a queue for a background thread).
    """

    def call_finished(self, call: CallContext) -> None: ...

    def results_recorded(self, events: Sequence[UsageEvent]) -> None:
        """Told of usage metered off the request path (a finished batch's results): each event is
        a request of its own, made upstream without the gateway timing it."""


class Recorder:
    def __init__(self, price_table: PriceTable, spool: SpoolWriter, observers: Sequence[CallObserver] = ()) -> None:
        self.price_table = price_table
        self.spool = spool
        self.observers = tuple(observers)

    def finish(self, call: CallContext) -> None:
        """The logical request is over: tell the observers, if it made any attempt."""
        if call.events:
            for observer in self.observers:
                observer.call_finished(call)

    def record_results(self, events: Sequence[UsageEvent]) -> None:
        """Record usage metered off the request path (a finished batch's results): spool the events,
        then tell the observers."""
        for event in events:
            self.spool.append(event)
        for observer in self.observers:
            observer.results_recorded(events)

    def record(self, call: CallContext, outcome: Outcome) -> UsageEvent:
        """Record the outcome of the call's attempt under way (a refusal before any attempt is attempt 1)."""
        usage = outcome.usage or Usage()
        attribution = call.attribution
        duration_ms = call.elapsed_ms()
        event = UsageEvent(
            event_id=new_id(),
            request_id=call.request_id,
            attempt=max(call.attempt, 1),
            trace_id=attribution.trace_id,
            span_id=new_span_id(),
            parent_span_id=attribution.parent_span_id,
            started_at=call.started_at,
            ended_at=call.started_at + timedelta(milliseconds=duration_ms),
            duration_ms=round(duration_ms, 3),
            ttft_ms=None if outcome.ttft_ms is None else round(outcome.ttft_ms, 3),
            operation=call.operation,
            streaming=call.streaming,
            provider=call.provider,
            requested_model=call.requested_model,
            served_model=call.served_model or call.requested_model,
            upstream_model=call.upstream_model,
            response_model=outcome.response_model,
            response_id=outcome.response_id,
            status_code=outcome.status_code,
            error_class=outcome.error_class,
            error_message=outcome.error_message,
            finish_reason=outcome.finish_reason,
            service_tier=outcome.service_tier or call.dialect.service_tier(call.body),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            cache_write_1h_tokens=usage.cache_write_1h_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            cache_status=call.cache_status,
            saved_usd=outcome.saved_usd,
            usage_source="estimated" if outcome.estimated else "provider",
            usage_estimator=estimator_name() if outcome.estimated else None,
            key_id=call.identity.key_id,
            team=call.team,
            app=call.app,
            user=call.user,
            feature=attribution.feature,
            env=attribution.env,
            prompt_id=attribution.prompt_id,
            prompt_version=attribution.prompt_version,
            session_id=attribution.session_id,
            agent_run_id=attribution.agent_run_id,
            agent_step=attribution.agent_step,
            properties=attribution.properties,
            retry_after_s=outcome.retry_after_s,
        )
        if usage.reported_cost_usd is not None:  # what the provider says it charged, beside meterline's price
            event.properties = {**attribution.properties, "reported_cost_usd": f"{usage.reported_cost_usd:g}"}
        if (shape := call.shape) is not None:
            event.request_hash = shape.request_hash
            event.prefix_hash = shape.prefix_hash
            event.system_tokens = shape.system_tokens
            event.max_tokens = shape.max_tokens
            event.n_messages = shape.n_messages
            event.tools_count = shape.tools_count
        if event.cache_status.startswith("hit"):
            event.cost_usd = 0.0  # answered from cache: no upstream call, nothing to pay
        elif (priced := self.price_table.price_event(event)) is not None:
            event.cost_usd = priced.cost_usd
            event.price_version = priced.price_version
        self.spool.append(event)
        call.events.append(event)
        return event
