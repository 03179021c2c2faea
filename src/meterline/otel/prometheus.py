"""`GET /metrics`: meterline's own health and traffic in the Prometheus text format.

Counters are updated when a gateway call finishes (`call_finished`, a few dictionary lookups),
when a finished batch's results are metered (each result a request), and when OTLP ingest
handles a request; gauges (spool depth, store lag, export queue) are read
at scrape time. Every name starts with `meterline_`; labels are low-cardinality (provider,
model, operation, error class, token type), never users or request ids.

Under `meterline serve --workers N` the supervisor sets `PROMETHEUS_MULTIPROC_DIR` for the
workers, so each one's counters land in a shared folder and `/metrics` (served by worker 0,
whichever worker the scrape reaches) sums them over all workers; the gauges are worker 0's,
which loads the whole spool.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

from meterline.events.loader import SpoolLoader
from meterline.events.schema import UsageEvent
from meterline.gateway.auth import api_key_from_headers
from meterline.gateway.metering import CallContext

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
TOKEN_TYPES = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_read": "cache_read_tokens",
    "cache_write": "cache_write_tokens",
    "reasoning": "reasoning_tokens",
}
INGEST_OUTCOMES = ("stored", "duplicate", "not_genai")


class GatewayMetrics:
    """The counters, and a collector for the gauges; a `CallObserver` of the gateway."""

    def __init__(self, multiprocess: bool | None = None) -> None:
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV)) if multiprocess is None else multiprocess
        # in multiprocess mode values live in files of the shared folder and are read by MultiProcessCollector
        self.registry = CollectorRegistry()
        own = None if self.multiprocess else self.registry
        model = ["provider", "model", "operation"]
        self.requests = Counter("meterline_requests", "Logical requests the gateway finished.", model, registry=own)
        self.attempts = Counter(
            "meterline_attempts", "Upstream attempts, by how they ended.", [*model, "error_class"], registry=own
        )
        self.errors = Counter(
            "meterline_errors", "Attempts that failed, by error class.", ["error_class"], registry=own
        )
        self.tokens = Counter(
            "meterline_tokens", "Tokens metered, by type.", ["provider", "model", "type"], registry=own
        )
        self.cost = Counter(
            "meterline_cost_usd", "Priced cost of attempts in USD.", ["provider", "model"], registry=own
        )
        self.unpriced = Counter(
            "meterline_unpriced_attempts", "Attempts without a price.", ["provider", "model"], registry=own
        )
        self.cache_hits = Counter("meterline_cache_hits", "Attempts answered from the cache.", ["model"], registry=own)
        self.cache_saved = Counter(
            "meterline_cache_saved_usd", "What cache hits saved, in USD.", ["model"], registry=own
        )
        self.budget_blocked = Counter(
            "meterline_budget_refusals", "Calls refused by a budget, quota or guardrail.", registry=own
        )
        self.ingest_spans = Counter(
            "meterline_otlp_ingest_spans",
            "Spans received on /v1/traces: stored as events, duplicates of gateway events, or not GenAI usage.",
            ["outcome"],
            registry=own,
        )
        self.ingest_requests = Counter(
            "meterline_otlp_ingest_requests", "Requests to /v1/traces, by HTTP status.", ["status"], registry=own
        )
        self._gauges: list[Callable[[], Iterator[Metric]]] = []
        self._by_model: dict[tuple[str, str, str], _Series] = {}
        if self.multiprocess:
            MultiProcessCollector(self.registry)
        self.registry.register(_Gauges(self._gauges))

    def call_finished(self, call: CallContext) -> None:
        events = call.events
        first = events[0]
        self._series(first.provider, first.requested_model, first.operation).requests.inc()
        for event in events:
            self._count_attempt(event)

    def results_recorded(self, events: Sequence[UsageEvent]) -> None:
        for event in events:
            self._series(event.provider, event.requested_model, event.operation).requests.inc()
            self._count_attempt(event)

    def _count_attempt(self, event: UsageEvent) -> None:
        model = event.served_model or event.requested_model
        series = self._series(event.provider, model, event.operation)
        if event.error_class == "none":
            series.succeeded.inc()
        else:
            self.attempts.labels(event.provider, model, event.operation, event.error_class).inc()
            self.errors.labels(event.error_class).inc()
            if event.error_class == "budget_blocked":
                self.budget_blocked.inc()
        for token_type, field in TOKEN_TYPES.items():
            count = getattr(event, field)
            if count:
                series.tokens[token_type].inc(count)
        if event.cost_usd is not None:
            series.cost.inc(event.cost_usd)
        elif event.error_class == "none":
            series.unpriced.inc()
        if event.cache_status.startswith("hit"):
            self.cache_hits.labels(model).inc()
            if event.saved_usd:
                self.cache_saved.labels(model).inc(event.saved_usd)

    def _series(self, provider: str, model: str, operation: str) -> _Series:
        """The counters of one (provider, model, operation), looked up once: `labels()` costs microseconds."""
        key = (provider, model, operation)
        series = self._by_model.get(key)
        if series is None:
            series = self._by_model[key] = _Series(
                requests=self.requests.labels(provider, model, operation),
                succeeded=self.attempts.labels(provider, model, operation, "none"),
                tokens={kind: self.tokens.labels(provider, model, kind) for kind in TOKEN_TYPES},
                cost=self.cost.labels(provider, model),
                unpriced=self.unpriced.labels(provider, model),
            )
        return series

    def spans_ingested(self, outcome: str, count: int) -> None:
        if count:
            self.ingest_spans.labels(outcome).inc(count)

    def ingest_answered(self, status: int) -> None:
        self.ingest_requests.labels(str(status)).inc()

    def watch_loader(self, loader: SpoolLoader) -> None:
        """Report the spool and store gauges of the process that loads the spool (alone, or worker 0)."""
        started = datetime.now(UTC)

        def collect() -> Iterator[Metric]:
            yield GaugeMetricFamily(
                "meterline_spool_pending_bytes",
                "Bytes of events in the spool not yet in the store.",
                loader.pending_bytes,
            )
            pending_age_s = loader.oldest_pending_age_s
            yield GaugeMetricFamily(
                "meterline_spool_oldest_pending_age_seconds",
                "Age of the oldest spool segment not yet loaded into the store (0 when the spool is empty).",
                pending_age_s,
            )
            since_load_s = time.time() - (loader.last_load_at or started).timestamp()
            yield GaugeMetricFamily(
                "meterline_store_lag_seconds",
                "How far the store is behind: seconds since the last load, while events wait in the spool.",
                min(since_load_s, pending_age_s) if loader.pending_bytes else 0.0,
            )
            yield GaugeMetricFamily(
                "meterline_store_healthy", "1 if the last load into the store succeeded.", int(loader.store_healthy)
            )
            yield CounterMetricFamily(
                "meterline_store_loaded_events", "Events loaded into the store since start.", loader.loaded_events
            )
            if loader.last_load_at is not None:
                yield GaugeMetricFamily(
                    "meterline_store_last_load_timestamp_seconds",
                    "When events were last committed to the store (Unix time).",
                    loader.last_load_at.timestamp(),
                )

        self._gauges.append(collect)

    def watch(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """Add gauges read at scrape time (e.g. the OTLP export queue)."""
        self._gauges.append(collect)

    def route(self, tokens: tuple[str, ...] = ()) -> web.RouteDef:
        """`GET /metrics`; when `tokens` are given, only for a request that bears one of them."""

        async def handle(request: web.Request) -> web.Response:
            presented = api_key_from_headers(request.headers) or ""
            if tokens and not any(hmac.compare_digest(presented.encode(), token.encode()) for token in tokens):
                message = "GET /metrics needs 'Authorization: Bearer <server.metrics_token>'\n"
                return web.Response(status=401, text=message, headers={"www-authenticate": "Bearer"})
            body = generate_latest(self.registry)
            return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})

        return web.get("/metrics", handle)


@dataclass(frozen=True)
class _Series:
    """The labelled counters every successful attempt of one provider, model and operation touches."""

    requests: Counter
    succeeded: Counter
    tokens: dict[str, Counter]
    cost: Counter
    unpriced: Counter


class _Gauges:
    """A collector over callbacks that read live values at scrape time."""

    def __init__(self, sources: list[Callable[[], Iterator[Metric]]]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source()
