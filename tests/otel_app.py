"""An app instrumented in-process with the OTel SDK and OpenLLMetry's OpenAI instrumentation.

Run as a script by tests/test_otel.py: `python otel_app.py <openai base url> <openai key> <otlp
traces url> <meterline key> <calls JSON>`. It makes the calls with the official `openai` SDK, its spans go
to the OTLP/HTTP exporter, and it prints the response ids. Association properties are set the
way the Traceloop SDK sets them: a span processor copies them onto every span at its start.
"""

from __future__ import annotations

import json
import sys

import openai
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


class AssociationProperties(SpanProcessor):
    def __init__(self, properties: dict[str, str]) -> None:
        self.properties = properties

    def on_start(self, span: Span, parent_context: object = None) -> None:
        for name, value in self.properties.items():
            span.set_attribute(f"traceloop.association.properties.{name}", value)


def main() -> None:
    base_url, openai_key, traces_url, key, calls_json = sys.argv[1:6]
    calls = json.loads(calls_json)
    provider = TracerProvider(resource=Resource.create({"service.name": "billing-app"}))
    provider.add_span_processor(AssociationProperties({"user_id": "ada", "feature": "invoices", "tenant": "acme"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url, headers={"authorization": f"Bearer {key}"}))
    )
    trace.set_tracer_provider(provider)
    OpenAIInstrumentor().instrument()
    client = openai.OpenAI(base_url=base_url, api_key=openai_key, max_retries=0)
    for call in calls:
        if call.get("stream"):
            stream = client.chat.completions.create(
                model=call["model"],
                messages=[{"role": "user", "content": call["prompt"]}],
                stream=True,
                stream_options={"include_usage": True},
            )
            ids = {chunk.id for chunk in stream}
            print(json.dumps({"id": ids.pop() if ids else None}))
        else:
            reply = client.chat.completions.create(
                model=call["model"], messages=[{"role": "user", "content": call["prompt"]}], max_tokens=50
            )
            print(json.dumps({"id": reply.id, "usage": reply.usage.model_dump()}))
    provider.shutdown()


if __name__ == "__main__":
    main()
