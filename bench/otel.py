"""OpenTelemetry and Prometheus costs per call, in-process (CPU time, so other load skews them less).

Prints, for a typical chat call:
1. the gateway's share: `/metrics` counters (on the event loop) and the export pipeline's sender
   thread (request parameters and JSON encoding of the events), in microseconds per call;
2. the exporter process's share: spans built, metrics recorded and spans encoded to OTLP
   protobuf by the official SDK (the HTTP send excluded), per call, at sample ratios 1 and 0;
3. ingest: decoding an OTLP protobuf export of 512 GenAI spans and mapping them to events, per span.

Run: .venv/bin/python bench/otel.py [--calls 5000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from meterline.config import OtelExportConfig
from meterline.events.schema import UsageEvent, new_id, new_span_id
from meterline.gateway.auth import Identity
from meterline.otel.export import OtlpExporter
from meterline.otel.ingest import SpanMapper, decode_request
from meterline.otel.pipeline import _encoder
from meterline.otel.prometheus import GatewayMetrics
from meterline.otel.spans import request_parameters
from meterline.pricing.table import PriceTable

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "benchmark me please"}], "max_tokens": 64}


class EncodeOnly(SpanExporter):
    """Encodes each batch to OTLP protobuf bytes as the HTTP exporter does, and sends nothing."""

    def __init__(self) -> None:
        self.encoded: list[bytes] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.encoded.append(encode_spans(spans).SerializeToString())
        return SpanExportResult.SUCCESS


def event() -> UsageEvent:
    started = datetime.now(UTC)
    return UsageEvent(
        event_id=new_id(),
        request_id=new_id(),
        span_id=new_span_id(),
        started_at=started,
        ended_at=started + timedelta(milliseconds=3),
        duration_ms=3.0,
        operation="chat",
        provider="openai",
        requested_model="gpt-4o-mini",
        served_model="gpt-4o-mini",
        upstream_model="gpt-4o-mini",
        response_model="gpt-4o-mini-2024-07-18",
        response_id="chatcmpl-bench",
        status_code=200,
        finish_reason="stop",
        input_tokens=12,
        output_tokens=30,
        cost_usd=0.00002,
        price_version="bench",
        team="bench",
        user="bench-user",
        agent_run_id="bench-run",
    )


def per_call_us(calls: int, work: Callable[[], None]) -> float:
    started = time.process_time()
    work()
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=5000)
    calls = parser.parse_args().calls
    finished = [SimpleNamespace(events=[event()], body=BODY) for _ in range(calls)]

    metrics = GatewayMetrics(multiprocess=False)
    prometheus_us = per_call_us(calls, lambda: [metrics.call_finished(call) for call in finished])  # type: ignore[arg-type,func-returns-value]

    def send() -> None:
        batch = []
        for call in finished:
            batch.append((call.events, request_parameters(call.body), {}))
            if len(batch) == 512:
                _encoder.encode(batch)
                batch = []
        _encoder.encode(batch)

    sender_us = per_call_us(calls, send)
    print("gateway process, per call:")
    print(f"  /metrics counters (event loop):        {prometheus_us:6.1f} us")
    print(f"  export sender thread (params + JSON):  {sender_us:6.1f} us")

    print("exporter process, per call (SDK: spans built + metrics recorded + spans encoded):")
    for ratio in (1.0, 0.0):
        spans = EncodeOnly()
        exporter = OtlpExporter(
            OtelExportConfig(enabled=True, sample_ratio=ratio, max_queue=calls * 2 + 100),
            {"openai": "https://api.openai.com/v1"},
            span_exporter=spans,
            metric_reader=InMemoryMetricReader(),
        )
        parameters = request_parameters(BODY)

        def export(exporter: OtlpExporter = exporter, parameters: dict = parameters) -> None:  # type: ignore[type-arg]
            for call in finished:
                exporter.export(call.events, parameters)
            exporter.flush()

        export_us = per_call_us(calls, export)
        print(f"  sample_ratio {ratio:g}:                      {export_us:6.0f} us")
        payload = b"".join(spans.encoded[:1])
        exporter.shutdown()
        if ratio == 1.0:
            exported = payload

    mapper = SpanMapper(PriceTable.load(None, {}))
    identity = Identity(key_id="master", is_admin=True)
    request = decode_request(exported, "application/x-protobuf")
    span_total = sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
    rounds = 20
    ingest_us = per_call_us(
        rounds * span_total,
        lambda: [mapper.map(decode_request(exported, "application/x-protobuf"), identity) for _ in range(rounds)],  # type: ignore[func-returns-value]
    )
    print(f"ingest, per span (decode + map + price, {span_total}-span exports): {ingest_us:6.1f} us")


if __name__ == "__main__":
    main()
