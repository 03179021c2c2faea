"""OpenTelemetry both ways and Prometheus: OTLP ingest from instrumented apps, export, /metrics.

Real processes throughout: the mock provider, meterline gateways, and an app instrumented with
the OTel SDK and OpenLLMetry's `opentelemetry-instrumentation-openai` (tests/otel_app.py) in a
subprocess exporting with the official OTLP/HTTP exporter.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as semconv
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from meterline.config import OtelExportConfig
from meterline.events.schema import UsageEvent
from meterline.otel import names
from meterline.otel.export import OtlpExporter
from meterline.otel.spans import request_parameters
from tests.conftest import MASTER_KEY, GatewayService
from tests.test_gateway_batches import finished, start_batch

INGEST = "otel: {ingest: {enabled: true}}"
APP = Path(__file__).with_name("otel_app.py")
TRACEPARENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT_SPAN = "00f067aa0ba902b7"
RETRY_ONCE = {"x-mock-fault": "rate_limit", "x-mock-fault-times": "1", "x-mock-retry-after": "0"}


@pytest.fixture(scope="module")
def ingest_gateway(make_gateway) -> GatewayService:  # type: ignore[no-untyped-def]
    return make_gateway(extra=INGEST)


def run_app(base_url: str, openai_key: str, traces_url: str, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, str(APP), base_url, openai_key, traces_url, MASTER_KEY, json.dumps(calls)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def otlp_events(gateway: GatewayService, expected: int, **filters: Any) -> list[dict[str, Any]]:
    rows = gateway.events(expected=expected, **filters)
    return [row for row in rows if row["source"] == "otlp"]


def metric_samples(gateway: GatewayService) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reply = httpx.get(gateway.url + "/metrics")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all((key, want) in sample_labels for key, want in labels.items())
    )


# ---- ingest from an instrumented app ---------------------------------------------------------------


def test_an_instrumented_app_calling_the_provider_directly_lands_priced_and_attributed(
    ingest_gateway: GatewayService, mock_provider
) -> None:
    replies = run_app(
        mock_provider.url + "/v1",
        "sk-app-key",
        ingest_gateway.url + "/v1/traces",
        [
            {"model": "gpt-4o-mini", "prompt": "count my invoices"},
            {"model": "gpt-4o", "prompt": "summarise the quarter", "stream": True},
        ],
    )
    events = otlp_events(ingest_gateway, 2, app="billing-app")
    assert len(events) == 2
    by_model = {event["requested_model"]: event for event in events}
    plain = by_model["gpt-4o-mini"]
    usage = replies[0]["usage"]
    assert plain["input_tokens"] == usage["prompt_tokens"]
    assert plain["output_tokens"] == usage["completion_tokens"]
    assert plain["response_id"] == replies[0]["id"]
    assert plain["provider"] == "openai"
    assert (plain["user"], plain["feature"], plain["app"]) == ("ada", "invoices", "billing-app")
    assert plain["properties"] == {"tenant": "acme"}
    assert plain["cost_usd"] > 0 and plain["price_version"].startswith("genai-prices")
    streamed = by_model["gpt-4o"]
    assert streamed["output_tokens"] > 0 and streamed["cost_usd"] > 0
    assert all(event["trace_id"] and event["span_id"] for event in events)


def test_a_call_seen_by_the_gateway_and_by_the_apps_instrumentation_is_counted_once(
    ingest_gateway: GatewayService,
) -> None:
    before = metric_samples(ingest_gateway)
    replies = run_app(
        ingest_gateway.url + "/v1",
        MASTER_KEY,
        ingest_gateway.url + "/v1/traces",
        [{"model": "gpt-4o-mini", "prompt": "through the gateway and traced in the app"}],
    )
    response_id = replies[0]["id"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        after = metric_samples(ingest_gateway)
        seen = total(after, "meterline_otlp_ingest_spans_total") - total(before, "meterline_otlp_ingest_spans_total")
        if seen >= 1:
            break
        time.sleep(0.1)
    duplicates = total(after, "meterline_otlp_ingest_spans_total", outcome="duplicate") - total(
        before, "meterline_otlp_ingest_spans_total", outcome="duplicate"
    )
    assert duplicates == 1
    matching = [event for event in ingest_gateway.events(expected=1) if event["response_id"] == response_id]
    assert [event["source"] for event in matching] == ["gateway"]


def test_ingest_understands_older_spellings_in_otlp_json(ingest_gateway: GatewayService) -> None:
    trace_id, span_id, other_span = "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b175"
    start_ns = time.time_ns() - 2_000_000_000
    payload = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "legacy-app"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "openlit"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": span_id,
                                "name": "chat claude-sonnet-4-5",
                                "kind": 3,
                                "startTimeUnixNano": str(start_ns),
                                "endTimeUnixNano": str(start_ns + 1_500_000_000),
                                "attributes": [
                                    {"key": "gen_ai.system", "value": {"stringValue": "anthropic"}},
                                    {"key": "gen_ai.request.model", "value": {"stringValue": "claude-sonnet-4-5"}},
                                    {"key": "gen_ai.usage.prompt_tokens", "value": {"intValue": "1200"}},
                                    {"key": "gen_ai.usage.completion_tokens", "value": {"intValue": "300"}},
                                    {"key": "gen_ai.usage.cache_read_input_tokens", "value": {"intValue": "1000"}},
                                    {"key": "gen_ai.usage.cache_creation_input_tokens", "value": {"intValue": "100"}},
                                    {"key": "llm.usage.total_tokens", "value": {"intValue": "1500"}},
                                    {"key": "gen_ai.usage.cost", "value": {"doubleValue": 99.5}},
                                    {"key": "enduser.id", "value": {"stringValue": "grace"}},
                                    {"key": "meterline.feature", "value": {"stringValue": "reports"}},
                                    {
                                        "key": "gen_ai.response.finish_reasons",
                                        "value": {"arrayValue": {"values": [{"stringValue": "end_turn"}]}},
                                    },
                                ],
                            },
                            {
                                "traceId": trace_id,
                                "spanId": other_span,
                                "parentSpanId": span_id,
                                "name": "GET /search",
                                "startTimeUnixNano": str(start_ns),
                                "endTimeUnixNano": str(start_ns + 1000),
                            },
                        ],
                    }
                ],
            }
        ]
    }
    reply = httpx.post(ingest_gateway.url + "/v1/traces", json=payload, headers=ingest_gateway.headers())
    assert reply.status_code == 200, reply.text
    (event,) = otlp_events(ingest_gateway, 1, app="legacy-app")
    assert event["provider"] == "anthropic"
    assert (event["input_tokens"], event["output_tokens"]) == (1200, 300)
    assert (event["cache_read_tokens"], event["cache_write_tokens"]) == (1000, 100)
    assert event["user"] == "grace" and event["feature"] == "reports"
    assert event["finish_reason"] == "end_turn"
    assert event["trace_id"] == trace_id and event["span_id"] == span_id
    assert event["duration_ms"] == 1500
    assert event["properties"] == {"reported_cost_usd": "99.5"}
    assert 0 < event["cost_usd"] < 1, "meterline prices the call itself, it does not take the span's cost"
    again = httpx.post(ingest_gateway.url + "/v1/traces", json=payload, headers=ingest_gateway.headers())
    assert again.status_code == 200
    assert len(otlp_events(ingest_gateway, 1, app="legacy-app")) == 1, "a span sent twice is stored once"


def test_protobuf_gzip_and_bad_requests_get_clear_answers(ingest_gateway: GatewayService) -> None:
    url = ingest_gateway.url + "/v1/traces"
    protobuf = {"content-type": "application/x-protobuf"}
    empty = ExportTraceServiceRequest().SerializeToString()
    ok = httpx.post(url, content=gzip.compress(empty), headers=ingest_gateway.headers(**protobuf, **{
        "content-encoding": "gzip"}))  # fmt: skip
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/x-protobuf"

    missing_key = httpx.post(url, content=empty, headers=protobuf)
    assert missing_key.status_code == 401
    assert "Authorization" in status_pb2.Status.FromString(missing_key.content).message
    wrong_key = httpx.post(url, content=empty, headers={**protobuf, "authorization": "Bearer nope-nope-nope"})
    assert wrong_key.status_code == 401
    garbage = httpx.post(url, content=b"\xff\xff not protobuf", headers=ingest_gateway.headers(**protobuf))
    assert garbage.status_code == 400
    assert "not a protobuf ExportTraceServiceRequest" in status_pb2.Status.FromString(garbage.content).message
    not_json = httpx.post(url, content=b"{nope", headers=ingest_gateway.headers(**{"content-type": "application/json"}))
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["message"]
    bad_id = {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz", "spanId": "00f067aa0ba902b7"}]}]}]}
    bad = httpx.post(url, json=bad_id, headers=ingest_gateway.headers())
    assert bad.status_code == 400 and "traceId must be 32 hex digits" in bad.json()["message"]
    text = httpx.post(url, content=b"hello", headers=ingest_gateway.headers(**{"content-type": "text/plain"}))
    assert text.status_code == 415 and "application/x-protobuf" in text.json()["message"]
    huge = httpx.post(url, content=b"\0" * (6 * 1024 * 1024), headers=ingest_gateway.headers(**protobuf))
    assert huge.status_code == 413 and "max_body_mb" in huge.text


def test_a_flood_of_spans_is_rate_limited(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway(extra="otel: {ingest: {enabled: true, spans_per_s: 1, burst_spans: 3}}")
    span = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "work"}
    payload = {"resourceSpans": [{"scopeSpans": [{"spans": [span, {**span, "spanId": "eee19b7ec3c1b175"}]}]}]}
    statuses = [
        httpx.post(gateway.url + "/v1/traces", json=payload, headers=gateway.headers()).status_code for _ in range(3)
    ]
    assert statuses[0] == 200 and 429 in statuses
    refused = httpx.post(gateway.url + "/v1/traces", json=payload, headers=gateway.headers())
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "otel.ingest allows" in refused.json()["message"]


def test_ingest_is_off_unless_enabled(gateway: GatewayService) -> None:
    reply = httpx.post(gateway.url + "/v1/traces", json={}, headers=gateway.headers())
    assert reply.status_code == 404 and "otel.ingest.enabled" in reply.json()["error"]["message"]


# ---- export -------------------------------------------------------------------------------------------


def test_gateway_export_round_trips_into_another_meterline(make_gateway) -> None:  # type: ignore[no-untyped-def]
    receiver = make_gateway(extra=INGEST)
    exporter = make_gateway(
        extra=f"""
otel:
  export:
    enabled: true
    endpoint: {receiver.url}
    headers: {{authorization: "Bearer {MASTER_KEY}"}}
    metrics: false
    batch_delay_ms: 100
"""
    )
    client = exporter.openai()
    attribution = {
        "x-meterline-user": "ada",
        "x-meterline-feature": "search",
        "x-meterline-team": "growth",
        "x-meterline-app": "web",
        "x-meterline-env": "prod",
        "x-meterline-prompt-id": "ranker",
        "x-meterline-prompt-version": "7",
        "x-meterline-session": "conv-42",
        "x-meterline-agent-run": "run-9",
        "x-meterline-agent-step": "3",
        "x-meterline-property-tenant": "acme",
        "traceparent": f"00-{TRACEPARENT_TRACE}-{TRACEPARENT_SPAN}-01",
    }
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "round trip"}], extra_headers=attribution
    )
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "and a stream"}],
        stream=True,
        extra_headers={"x-meterline-user": "bob"},
    )
    for _ in stream:
        pass
    sent = {event["event_id"]: event for event in exporter.events(expected=2)}
    received = otlp_events(receiver, 2)
    assert len(received) == 2
    compared = [
        *("user", "feature", "team", "app", "env", "prompt_id", "prompt_version", "session_id"),
        *("agent_run_id", "agent_step", "properties", "requested_model", "response_model", "response_id"),
        *("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"),
        *("trace_id", "span_id", "request_id", "attempt", "operation", "streaming", "cost_usd", "started_at"),
        *("finish_reason", "provider", "served_model", "upstream_model", "status_code"),
    ]
    by_span = {event["span_id"]: event for event in sent.values()}
    for event in received:
        original = by_span[event["span_id"]]
        differences = {
            name: (original[name], event[name])
            for name in compared
            if original[name] != event[name] and not (name == "trace_id" and original[name] is None)
        }
        assert differences == {}
    first = next(event for event in received if event["user"] == "ada")
    assert first["trace_id"] == TRACEPARENT_TRACE, "the client's traceparent joins the gateway's spans to its trace"
    second = next(event for event in received if event["user"] == "bob")
    assert second["trace_id"] == by_span[second["span_id"]]["request_id"]
    assert exporter.process is not None
    children = Path(f"/proc/{exporter.process.pid}/task/{exporter.process.pid}/children").read_text().split()
    (export_process,) = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    export_threads = [int(tid) for tid in os.listdir(f"/proc/{export_process}/task")]
    assert len(export_threads) > 1, "the SDK's export threads run beside the exporter's main thread"
    for thread in export_threads:  # every thread of the exporter (the SDK's, jemalloc's) yields to requests
        assert os.sched_getscheduler(thread) == os.SCHED_IDLE


def test_exported_spans_and_metrics_carry_the_semconv_names(gateway: GatewayService) -> None:
    client = gateway.openai()
    client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "name my attributes"}],
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        extra_headers={
            "x-meterline-user": "span-checker",
            "x-meterline-feature": "semconv",
            "x-meterline-session": "conv-7",
            "traceparent": f"00-{TRACEPARENT_TRACE}-{TRACEPARENT_SPAN}-01",
        },
    )
    (event,) = [
        msgspec.convert(row, UsageEvent, strict=False) for row in gateway.events(expected=1, user="span-checker")
    ]
    spans, reader = InMemorySpanExporter(), InMemoryMetricReader()
    exporter = OtlpExporter(
        OtelExportConfig(enabled=True),
        {"openai": "https://api.openai.com/v1"},
        span_exporter=spans,
        metric_reader=reader,
    )
    body = {"model": "gpt-4o-mini", "max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "stop": "END"}
    exporter.export([event], request_parameters(body))
    assert exporter.flush()
    request_span, attempt = sorted(spans.get_finished_spans(), key=lambda span: span.kind != SpanKind.SERVER)
    assert attempt.kind == SpanKind.CLIENT and attempt.name == "chat gpt-4o-mini"
    assert attempt.parent.span_id == request_span.context.span_id, "attempts are children of the request's span"
    assert request_span.parent.span_id == int(TRACEPARENT_SPAN, 16)
    assert f"{attempt.context.trace_id:032x}" == TRACEPARENT_TRACE
    assert f"{attempt.context.span_id:016x}" == event.span_id
    attributes = dict(attempt.attributes)
    expected = {
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GEN_AI_PROVIDER_NAME: "openai",
        semconv.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        semconv.GEN_AI_RESPONSE_MODEL: event.response_model,
        semconv.GEN_AI_RESPONSE_ID: event.response_id,
        semconv.GEN_AI_RESPONSE_FINISH_REASONS: [event.finish_reason],
        semconv.GEN_AI_USAGE_INPUT_TOKENS: event.input_tokens,
        semconv.GEN_AI_USAGE_OUTPUT_TOKENS: event.output_tokens,
        semconv.GEN_AI_REQUEST_MAX_TOKENS: 64,
        semconv.GEN_AI_REQUEST_TEMPERATURE: 0.2,
        semconv.GEN_AI_REQUEST_TOP_P: 0.9,
        semconv.GEN_AI_REQUEST_STOP_SEQUENCES: ["END"],
        semconv.GEN_AI_CONVERSATION_ID: "conv-7",
        "server.address": "api.openai.com",
        "server.port": 443,
        "meterline.cost_usd": event.cost_usd,
        "meterline.user": "span-checker",
        "meterline.feature": "semconv",
        "meterline.request_id": event.request_id,
    }
    assert {name: attributes.get(name) for name in expected} == expected
    assert event.response_id and event.cost_usd
    assert names.USAGE["cache_read_tokens"][0] == semconv.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS
    assert names.USAGE["cache_write_tokens"][0] == semconv.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS
    assert names.USAGE["reasoning_tokens"][0] == semconv.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS

    metrics = {
        metric.name: metric
        for resource in reader.get_metrics_data().resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert set(metrics) == {
        gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE,
        gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION,
        "meterline.cost",
    }
    usage = metrics[gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE]
    assert usage.unit == "{token}"
    points = {point.attributes["gen_ai.token.type"]: point for point in usage.data.data_points}
    assert points["input"].sum == event.input_tokens and points["output"].sum == event.output_tokens
    assert tuple(points["input"].explicit_bounds) == names.TOKEN_USAGE_BUCKETS
    assert "meterline.user" not in points["input"].attributes, "no user ids as metric attributes"
    assert points["input"].attributes["meterline.feature"] == "semconv"
    exporter.shutdown()


# ---- /metrics -------------------------------------------------------------------------------------------


JSON_NAMES = {"maxOutputTokens": 256, "temperature": 0.4, "topP": 0.8, "topK": 40, "candidateCount": 2,
              "stopSequences": ["END"], "seed": 7, "responseMimeType": "application/json"}  # fmt: skip
PROTO_NAMES = {"max_output_tokens": 256, "temperature": 0.4, "top_p": 0.8, "top_k": 40, "candidate_count": 2,
               "stop_sequences": ["END"], "seed": 7}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "settings"),
    [("generationConfig", JSON_NAMES), ("generation_config", PROTO_NAMES)],
    ids=["json-names", "proto-names"],
)
def test_gemini_generation_config_is_exported_as_request_parameters(field: str, settings: dict[str, Any]) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], field: settings}
    assert request_parameters(body) == {
        semconv.GEN_AI_REQUEST_MAX_TOKENS: 256,
        semconv.GEN_AI_REQUEST_TEMPERATURE: 0.4,
        semconv.GEN_AI_REQUEST_TOP_P: 0.8,
        semconv.GEN_AI_REQUEST_TOP_K: 40,
        semconv.GEN_AI_REQUEST_CHOICE_COUNT: 2,
        semconv.GEN_AI_REQUEST_STOP_SEQUENCES: ["END"],
        semconv.GEN_AI_REQUEST_SEED: 7,
    }


def test_prometheus_metrics_match_the_events(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway()
    client = gateway.openai()
    for prompt in ("one", "two", "three"):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}])
    for _ in client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream"}], stream=True
    ):
        pass
    failed = httpx.post(
        gateway.url + "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        headers=gateway.headers(**{"x-mock-fault": "rate_limit"}),
    )
    assert failed.status_code == 429
    events = gateway.events(expected=5)
    assert len(events) == 5
    samples = metric_samples(gateway)
    assert total(samples, "meterline_requests_total") == 5
    assert total(samples, "meterline_attempts_total") == 5
    assert total(samples, "meterline_errors_total", error_class="rate_limit") == 1
    for token_type, field in (("input", "input_tokens"), ("output", "output_tokens")):
        assert total(samples, "meterline_tokens_total", type=token_type) == sum(event[field] for event in events)
    assert total(samples, "meterline_tokens_total", model="gpt-4o", type="output") == sum(
        event["output_tokens"] for event in events if event["requested_model"] == "gpt-4o"
    )
    cost = sum(event["cost_usd"] or 0 for event in events)
    assert total(samples, "meterline_cost_usd_total") == pytest.approx(cost, rel=1e-9)
    assert ("meterline_spool_pending_bytes", ()) in samples
    assert ("meterline_store_lag_seconds", ()) in samples
    assert ("meterline_spool_oldest_pending_age_seconds", ()) in samples
    deadline = time.monotonic() + 10  # the loader counts a load just after committing it
    while total(samples, "meterline_store_loaded_events_total") < 5 and time.monotonic() < deadline:
        samples = metric_samples(gateway)
    assert total(samples, "meterline_store_loaded_events_total") >= 5


def test_a_metrics_token_guards_the_scrape(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway(extra_server=", metrics_token: scrape-only-secret")
    url = gateway.url + "/metrics"
    for headers in ({}, {"authorization": "Bearer wrong-secret"}, {"x-api-key": "scrape-only-secret-and-more"}):
        refused = httpx.get(url, headers=headers)
        assert (refused.status_code, refused.headers["www-authenticate"]) == (401, "Bearer")
        assert "meterline_" not in refused.text
    for token in ("scrape-only-secret", MASTER_KEY):
        scraped = httpx.get(url, headers={"authorization": f"Bearer {token}"})
        assert scraped.status_code == 200
        assert any(
            family.name == "meterline_spool_pending_bytes" for family in text_string_to_metric_families(scraped.text)
        )
    # the scrape secret is not an API key: it neither calls models nor reads data
    as_key = {"authorization": "Bearer scrape-only-secret"}
    assert httpx.get(gateway.url + "/api/v1/spend", headers=as_key).status_code == 401
    call = httpx.post(
        gateway.url + "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}, headers=as_key
    )
    assert call.status_code == 401


class OtlpSink:
    """A local OTLP/HTTP receiver that keeps what it is sent (the collector stand-in)."""

    def __init__(self) -> None:
        received: dict[str, list[bytes]] = {"/v1/traces": [], "/v1/metrics": []}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.setdefault(self.path, []).append(self.rfile.read(int(self.headers["content-length"])))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[Any]:
        exports = [ExportTraceServiceRequest.FromString(body) for body in self.received["/v1/traces"]]
        return [
            span for export in exports for rs in export.resource_spans for ss in rs.scope_spans for span in ss.spans
        ]

    def metric_points(self) -> dict[str, list[Any]]:
        """Each metric's data points in the latest export that has it (cumulative), by metric name."""
        exports = [ExportMetricsServiceRequest.FromString(body) for body in self.received["/v1/metrics"]]
        metrics = [
            metric
            for export in exports
            for rm in export.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]
        return {metric.name: list(getattr(metric, metric.WhichOneof("data")).data_points) for metric in metrics}


def test_content_is_exported_only_when_enabled(make_gateway) -> None:  # type: ignore[no-untyped-def]
    sink = OtlpSink()
    exporting = f"endpoint: {sink.url}, batch_delay_ms: 50, metrics_interval_s: 0.2"
    retries = "resilience: {retries: 1, backoff: {initial_s: 0.01, max_s: 0.02}}"
    gateway = make_gateway(extra=f"otel: {{export: {{enabled: true, capture_content: true, {exporting}}}}}\n{retries}")
    quiet = make_gateway(extra=f"otel: {{export: {{enabled: true, {exporting}}}}}")
    for service, user in ((gateway, "with-content"), (quiet, "without-content")):
        service.openai().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "the secret plan"}],
            extra_headers={"x-meterline-user": user},
        )
        for _ in service.openai().chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "stream the plan"}],
            stream=True,
            extra_headers={"x-meterline-user": user},
        ):
            pass
    retried = gateway.openai().chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "retry me"}],
        extra_headers={"x-meterline-user": "retried", **RETRY_ONCE, "x-mock-fault-key": uuid.uuid4().hex},
    )
    retried_request = retried.headers["x-meterline-request-id"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (len(sink.spans()) < 11 or not sink.received["/v1/metrics"]):
        time.sleep(0.1)
    request_span, *attempt_spans = sorted(
        (span for span in sink.spans() if span.trace_id.hex() == retried_request),
        key=lambda span: span.kind != span.SPAN_KIND_SERVER,
    )
    assert request_span.kind == request_span.SPAN_KIND_SERVER and len(attempt_spans) == 2
    assert {span.parent_span_id for span in attempt_spans} == {request_span.span_id}, "retries are siblings"
    failed = next(span for span in attempt_spans if span.status.code == span.status.STATUS_CODE_ERROR)
    assert {pair.key: pair.value.string_value for pair in failed.attributes}["error.type"] == "rate_limit"
    attempts = [
        {pair.key: pair.value for pair in span.attributes}
        for span in sink.spans()
        if span.kind == span.SPAN_KIND_CLIENT
    ]
    by_user: dict[str, list[dict[str, Any]]] = {}
    for attributes in attempts:
        by_user.setdefault(attributes["meterline.user"].string_value, []).append(attributes)
    assert all(names.INPUT_MESSAGES not in attributes for attributes in by_user["without-content"])
    with_content = by_user["with-content"]
    assert len(with_content) == 2
    assert len(by_user["retried"]) == 2
    for attributes in with_content:
        inputs = json.loads(attributes[names.INPUT_MESSAGES].string_value)
        outputs = json.loads(attributes[names.OUTPUT_MESSAGES].string_value)
        assert inputs[-1]["role"] == "user" and "plan" in inputs[-1]["parts"][0]["content"]
        assert outputs[0]["role"] == "assistant" and outputs[0]["parts"][0]["content"]
    assert sink.received["/v1/metrics"], "metrics are exported over OTLP too"


def test_a_killed_ingest_process_is_replaced(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway(extra=INGEST)
    assert gateway.process is not None
    children = Path(f"/proc/{gateway.process.pid}/task/{gateway.process.pid}/children").read_text().split()
    (ingest_process,) = [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(ingest_process, signal.SIGKILL)
    url, empty = gateway.url + "/v1/traces", {"resourceSpans": []}
    first = httpx.post(url, json=empty, headers=gateway.headers(), timeout=60)
    assert first.status_code == 503 and "restarted" in first.json()["message"]
    assert httpx.post(url, json=empty, headers=gateway.headers(), timeout=60).status_code == 200


def test_batch_results_count_in_prometheus_and_exported_metrics_but_make_no_spans(make_gateway) -> None:  # type: ignore[no-untyped-def]
    sink = OtlpSink()
    exporting = f"endpoint: {sink.url}, batch_delay_ms: 50, metrics_interval_s: 0.2"
    only_on_retrieve = "batches: {poll_interval_s: 3600}"
    gateway = make_gateway(extra=f"otel: {{export: {{enabled: true, {exporting}}}}}\n{only_on_retrieve}")
    client = gateway.openai()
    batch = finished(client, start_batch(client, "gpt-4o-mini", ["one", "two", "three"]).id)
    events = gateway.events(expected=3, batch_id=batch.id)
    assert len(events) == 3
    cost = sum(event["cost_usd"] for event in events)
    input_tokens = sum(event["input_tokens"] for event in events)

    samples = metric_samples(gateway)  # the counters move when the results are spooled
    assert total(samples, "meterline_requests_total", model="gpt-4o-mini", operation="chat") == 3
    assert total(samples, "meterline_attempts_total", error_class="none") == 3
    assert total(samples, "meterline_tokens_total", type="input") == input_tokens
    assert total(samples, "meterline_cost_usd_total") == pytest.approx(cost, rel=1e-9)

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and names.METRIC_COST not in sink.metric_points():
        time.sleep(0.1)
    points = sink.metric_points()
    assert sum(point.as_double for point in points[names.METRIC_COST]) == pytest.approx(cost, rel=1e-9)
    token_points = {
        {pair.key: pair.value.string_value for pair in point.attributes}[names.TOKEN_TYPE]: point
        for point in points[names.METRIC_TOKEN_USAGE]
    }
    assert (token_points["input"].count, token_points["input"].sum) == (3, input_tokens)
    assert names.METRIC_OPERATION_DURATION not in points, "no client waited on a batch's result"
    assert sink.spans() == [], "the gateway timed no call, so there is no span"
