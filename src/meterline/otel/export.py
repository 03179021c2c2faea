"""OTLP/HTTP export of finished gateway calls: GenAI spans (sampled) and GenAI metrics (complete).

`OtlpExporter.export` turns one finished call into spans (`meterline.otel.spans`) and metric
recordings, and a finished batch's results into token and cost recordings only; the official
SDK's `BatchSpanProcessor` and `PeriodicExportingMetricReader` batch them and send them with
the OTLP/HTTP protobuf exporters on threads of their own. The gateway runs it in a process of
its own (`meterline.otel.pipeline`), because the SDK spends a few hundred microseconds of CPU
per call. Span sampling is the SDK's trace-id ratio rule, so a trace is kept or dropped whole;
metrics are recorded for every attempt.

Metric attributes are low-cardinality only: operation, provider, request and response model,
token type, error type, feature and team — never users, keys or request ids.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from meterline import __version__
from meterline.config import OtelExportConfig
from meterline.events.schema import UsageEvent
from meterline.otel import names
from meterline.otel.spans import call_spans, trace_id_of

log = logging.getLogger("meterline.otel.export")


def server_of(base_url: str) -> tuple[str, int]:
    """`server.address` and `server.port` of a provider's base URL."""
    parts = urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


class OtlpExporter:
    """The SDK's tracer and meter machinery, fed with finished calls."""

    def __init__(
        self,
        config: OtelExportConfig,
        provider_urls: Mapping[str, str],
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
        provider_systems: Mapping[str, str] | None = None,
    ) -> None:
        """`provider_urls` and `provider_systems` map each provider's name in the config to its base URL and to
        the `gen_ai.provider.name` it exports (default: the name itself)."""
        self.config = config
        self.servers = {name: server_of(url) for name, url in provider_urls.items()}
        self.systems = dict(provider_systems or {})
        self.resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
        self.scope = InstrumentationScope(names.GATEWAY_SCOPE, __version__)
        self.sampler = TraceIdRatioBased(config.sample_ratio)
        self.spans = BatchSpanProcessor(
            span_exporter
            or OTLPSpanExporter(endpoint=config.traces_url, headers=config.headers, timeout=config.timeout_s),
            max_queue_size=config.max_queue,
            schedule_delay_millis=config.batch_delay_ms,
        )
        if metric_reader is None and config.metrics:
            metric_reader = PeriodicExportingMetricReader(
                OTLPMetricExporter(endpoint=config.metrics_url, headers=config.headers, timeout=config.timeout_s),
                export_interval_millis=config.metrics_interval_s * 1000,
            )
        self.meter_provider = MeterProvider(
            resource=self.resource, metric_readers=[metric_reader] if metric_reader is not None else []
        )
        meter = self.meter_provider.get_meter(names.GATEWAY_SCOPE, __version__)
        self.token_usage = meter.create_histogram(
            names.METRIC_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=names.TOKEN_USAGE_BUCKETS,
        )
        self.duration = meter.create_histogram(
            names.METRIC_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=names.DURATION_BUCKETS,
        )
        self.time_to_first_chunk = meter.create_histogram(
            names.METRIC_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time to receive the first chunk of a streamed response.",
            explicit_bucket_boundaries_advisory=names.TIME_TO_FIRST_CHUNK_BUCKETS,
        )
        self.cost = meter.create_counter(names.METRIC_COST, unit="USD", description="What the calls cost, priced.")

    def flush(self, timeout_s: float = 30) -> bool:
        """Send every finished span and the metrics now (blocking)."""
        spans_ok = self.spans.force_flush(int(timeout_s * 1000))
        return self.meter_provider.force_flush(int(timeout_s * 1000)) and spans_ok

    def shutdown(self) -> None:
        """Send what is left and stop the SDK's threads (blocking)."""
        self.spans.shutdown()
        self.meter_provider.shutdown()

    def export(
        self, events: list[UsageEvent], parameters: Mapping[str, Any], content: Mapping[str, str] | None = None
    ) -> None:
        """Record one finished call's metrics and, if its trace is sampled, its spans; or the metrics
        of a finished batch's results (events with a `batch_id`), which have no spans.

        `parameters` are the call's `gen_ai.request.*` attributes (`spans.request_parameters`);
        `content` its prompt and answer (`content.content_attributes`), when they are exported.
        """
        for event in events:
            self.record_metrics(event)
        first = events[0]
        if first.batch_id is not None:  # a finished batch's results: counted, but the gateway timed no call
            return
        name = f"{first.operation} {first.requested_model}"
        if self.sampler.should_sample(None, trace_id_of(first), name).decision.is_sampled():
            server, system = self.servers.get(first.provider), self.systems.get(first.provider, first.provider)
            for span in call_spans(events, parameters, self.resource, self.scope, server, content or {}, system):
                self.spans.on_end(span)

    def record_metrics(self, event: UsageEvent) -> None:
        attributes: dict[str, str] = {
            names.OPERATION[0]: names.EXPORTED_OPERATION.get(event.operation, event.operation),
            names.PROVIDER[0]: self.systems.get(event.provider, event.provider),
            names.REQUEST_MODEL[0]: event.requested_model,
        }
        if event.response_model:
            attributes[names.RESPONSE_MODEL[0]] = event.response_model
        if event.feature:
            attributes["meterline.feature"] = event.feature
        if event.team:
            attributes["meterline.team"] = event.team
        if event.error_class != "none":
            attributes[names.ERROR_TYPE[0]] = event.error_class
        if event.batch_id is None:  # a batch's result was not a client operation anybody waited for
            self.duration.record(event.duration_ms / 1000, attributes)
        if event.ttft_ms is not None and event.streaming:
            self.time_to_first_chunk.record(event.ttft_ms / 1000, attributes)
        if event.error_class == "none" or event.input_tokens or event.output_tokens:
            self.token_usage.record(event.input_tokens, {**attributes, names.TOKEN_TYPE: "input"})
            self.token_usage.record(event.output_tokens, {**attributes, names.TOKEN_TYPE: "output"})
        if event.cost_usd:
            self.cost.add(event.cost_usd, attributes)
