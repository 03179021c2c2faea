"""OTel pieces in-process: span trees for retries, sampling, ingest mapping rules, the missing-extra error."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meterline.config import ConfigError, OtelExportConfig, parse_config
from meterline.events.schema import UsageEvent, new_id, new_span_id
from meterline.gateway.auth import Identity
from meterline.otel.export import OtlpExporter
from meterline.otel.ingest import SpanMapper
from meterline.otel.receiver import SpanRateLimiter
from meterline.otel.recent import RecentGatewayCalls
from meterline.pricing.table import PriceTable

STARTED = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def attempt(request_id: str, number: int, error_class: str = "none") -> UsageEvent:
    started = STARTED + timedelta(seconds=number)
    return UsageEvent(
        event_id=new_id(),
        request_id=request_id,
        attempt=number,
        span_id=new_span_id(),
        started_at=started,
        ended_at=started + timedelta(milliseconds=250),
        duration_ms=250,
        operation="messages",
        provider="anthropic",
        requested_model="claude-sonnet-4-5",
        status_code=429 if error_class != "none" else 200,
        error_class=error_class,
        input_tokens=0 if error_class != "none" else 100,
        output_tokens=0 if error_class != "none" else 20,
        cost_usd=None if error_class != "none" else 0.0006,
        user="ada",
    )


def exporter(ratio: float = 1.0) -> tuple[OtlpExporter, InMemorySpanExporter, InMemoryMetricReader]:
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    config = OtelExportConfig(enabled=True, sample_ratio=ratio)
    return OtlpExporter(config, {}, span_exporter=spans, metric_reader=reader), spans, reader


def test_retries_are_sibling_client_spans_under_the_requests_span() -> None:
    otlp, spans, _ = exporter()
    request_id = new_id()
    otlp.export([attempt(request_id, 1, "rate_limit"), attempt(request_id, 2)], {})
    otlp.flush()
    request, *attempts = sorted(spans.get_finished_spans(), key=lambda span: span.kind != SpanKind.SERVER)
    assert request.kind == SpanKind.SERVER and request.attributes["meterline.attempts"] == 2
    assert request.attributes["meterline.cost_usd"] == pytest.approx(0.0006)
    assert f"{request.context.trace_id:032x}" == request_id, "without traceparent the request id is the trace id"
    assert request.parent is None
    assert [span.kind for span in attempts] == [SpanKind.CLIENT, SpanKind.CLIENT]
    assert {span.parent.span_id for span in attempts} == {request.context.span_id}
    failed, answered = sorted(attempts, key=lambda span: span.attributes["meterline.attempt"])
    assert failed.status.status_code == StatusCode.ERROR and failed.attributes["error.type"] == "rate_limit"
    assert answered.attributes["gen_ai.operation.name"] == "chat" and answered.name == "chat claude-sonnet-4-5"
    assert answered.attributes["meterline.operation"] == "messages"
    assert request.start_time == min(span.start_time for span in attempts)
    assert request.end_time == max(span.end_time for span in attempts)
    otlp.shutdown()


def test_sampling_drops_spans_but_never_metrics() -> None:
    otlp, spans, reader = exporter(ratio=0.0)
    for _ in range(5):
        otlp.export([attempt(new_id(), 1)], {})
    otlp.flush()
    assert spans.get_finished_spans() == ()
    metrics = {
        metric.name: metric
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    (duration,) = metrics["gen_ai.client.operation.duration"].data.data_points
    assert duration.count == 5
    (cost,) = metrics["meterline.cost"].data.data_points
    assert cost.value == pytest.approx(5 * 0.0006)
    otlp.shutdown()


def span_export(attributes: dict[str, object], resource: dict[str, str] | None = None) -> ExportTraceServiceRequest:
    def pairs(values: dict[str, object]) -> list[KeyValue]:
        out = []
        for key, value in values.items():
            any_value = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=str(value))
            out.append(KeyValue(key=key, value=any_value))
        return out

    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(pairs(resource or {}))
    span = resource_spans.scope_spans.add().spans.add()
    span.trace_id, span.span_id = bytes.fromhex("ab" * 16), bytes.fromhex("cd" * 8)
    span.start_time_unix_nano = int(STARTED.timestamp() * 1e9)
    span.end_time_unix_nano = span.start_time_unix_nano + 10**9
    span.attributes.extend(pairs(attributes))
    return request


MAPPER = SpanMapper(PriceTable.load(None, {}), feature_attributes=["app.feature"])
MASTER = Identity(key_id="master", is_admin=True)


def test_ingest_maps_every_spelling_through_the_one_table() -> None:
    export = span_export(
        {
            "gen_ai.provider.name": "gcp.gemini",
            "gen_ai.request.model": "gemini-2.5-flash",
            "gen_ai.usage.input_tokens": 200,
            "llm.usage.total_tokens": 260,
            "gen_ai.usage.cache_write.input_tokens": 50,
            "gen_ai.usage.reasoning_tokens": 30,
            "app.feature": "triage",
            "traceloop.association.properties.session_id": "s-1",
            "traceloop.association.properties.Plan": "pro",
            "user.id": "lin",
        },
        resource={"service.name": "support-bot", "deployment.environment.name": "staging"},
    )
    (span,) = MAPPER.map(export, MASTER).spans
    event = span.event
    assert event.provider == "google" and event.operation == "chat"
    assert (event.input_tokens, event.output_tokens, event.cache_write_tokens, event.reasoning_tokens) == (
        200,
        60,
        50,
        30,
    )
    assert (event.user, event.feature, event.app, event.env, event.session_id) == (
        "lin",
        "triage",
        "support-bot",
        "staging",
        "s-1",
    )
    assert event.properties == {"plan": "pro"}
    assert event.cost_usd is not None and event.source == "otlp"


def test_uncached_input_counts_are_made_to_include_the_cache_and_a_keys_attribution_wins() -> None:
    export = span_export(
        {
            "gen_ai.system": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.usage.input_tokens": 10,
            "gen_ai.usage.output_tokens": 5,
            "gen_ai.usage.cache_read.input_tokens": 1000,
            "meterline.team": "claimed-team",
        }
    )
    virtual_key = Identity(key_id="key-1", team="search")
    (span,) = MAPPER.map(export, virtual_key).spans
    assert span.event.input_tokens == 1010 and span.event.cache_read_tokens == 1000
    assert span.event.team == "search" and span.event.key_id == "key-1"


def test_agent_and_tool_spans_are_not_usage() -> None:
    summed = {"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 9}
    assert MAPPER.map(span_export(summed), MASTER).not_genai == 1
    no_tokens = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    assert MAPPER.map(span_export(no_tokens), MASTER).not_genai == 1


def test_the_span_rate_limiter_refills_with_time() -> None:
    now = [0.0]
    limiter = SpanRateLimiter(rate=10, burst=20, clock=lambda: now[0])
    assert limiter.wait_s("k", 15) == 0
    assert limiter.wait_s("k", 15) == pytest.approx(1.0)
    assert limiter.wait_s("other", 20) == 0, "each key has its own bucket"
    now[0] = 1.0
    assert limiter.wait_s("k", 15) == 0


@pytest.mark.parametrize(
    ("section", "module"),
    [
        ("export: {enabled: true}", "opentelemetry.exporter.otlp.proto.http.trace_exporter"),
        ("ingest: {enabled: true}", "opentelemetry.proto.collector.trace.v1.trace_service_pb2"),
    ],
)
def test_enabling_otel_without_the_extra_fails_at_start_up(
    section: str, module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meterline.server import build_app

    for loaded in [
        name for name in sys.modules if name.startswith("meterline.otel.") and name != "meterline.otel.prometheus"
    ]:
        monkeypatch.delitem(sys.modules, loaded)
    monkeypatch.setitem(sys.modules, module, None)
    config = parse_config(f"server: {{master_key: a-long-master-key}}\notel: {{{section}}}\n", tmp_path)
    with pytest.raises(ConfigError, match=r"pip install 'meterline\[otel\]'"):
        build_app(config)


def test_recent_gateway_calls_keep_the_latest_attempts_only() -> None:
    recent = RecentGatewayCalls(capacity=2)
    first, second, third = (attempt(new_id(), 1) for _ in range(3))
    first.response_id, third.response_id = "chatcmpl-1", "chatcmpl-3"
    third.trace_id, third.parent_span_id = "ab" * 16, "cd" * 8
    for event in (first, second, third):
        recent.call_finished(SimpleNamespace(events=[event]))  # type: ignore[arg-type]
    assert not recent.has_response("chatcmpl-1") and recent.span_ids(first.request_id) == set()
    assert recent.span_ids(second.request_id) == {second.span_id}
    assert recent.has_response("chatcmpl-3") and recent.span_ids("ab" * 16) == {third.span_id, "cd" * 8}
