"""Finished gateway calls as OTel GenAI spans: one CLIENT span per attempt under one span for the request.

Spans are built after the fact from the recorded `UsageEvent`s (they carry everything a span
needs, including start and end times), so nothing is traced live on the request path. The
request's span joins the client's trace when it sent a W3C `traceparent` (its parent is the
client's span); otherwise the request id, 32 hex digits, is the trace id. Each attempt's span id
is the event's `span_id`, so a stored event and its exported span name each other. Attributes
are named in `meterline.otel.names`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from meterline.events.schema import UsageEvent
from meterline.otel import names
from meterline.providers.gemini import proto_field, snake_case

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
Attributes = dict[str, Any]


def unix_ns(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def trace_id_of(event: UsageEvent) -> int:
    """The trace an event's span belongs to: the client's (from traceparent), else its request id."""
    return int(event.trace_id or event.request_id, 16)


def request_parameters(body: Mapping[str, Any]) -> Attributes:
    """The `gen_ai.request.*` parameters a request body sets (max_tokens, temperature, ...).

    OpenAI- and Anthropic-style bodies set them at the top level; Gemini's in `generationConfig`,
    under camelCase JSON names or snake_case proto names."""
    config = proto_field(body, "generationConfig")
    settings = {snake_case(name): value for name, value in config.items()} if isinstance(config, dict) else body
    found: Attributes = {}
    for field, attribute in names.REQUEST_PARAMETERS.items():
        value = settings.get(field)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float | str):
            found[attribute] = [value] if attribute.endswith(("stop_sequences", "encoding_formats")) else value
        elif isinstance(value, list) and value and all(isinstance(item, str) for item in value):
            found[attribute] = value
    return found


def attribution_attributes(event: UsageEvent) -> Attributes:
    """meterline's attribution of an event under the names ingest reads back (first spelling of each)."""
    attributes: Attributes = {}
    for field, spellings in names.ATTRIBUTION.items():
        value = getattr(event, field)
        if value is not None:
            attributes[spellings[0]] = value
    if event.agent_step is not None:
        attributes[names.AGENT_STEP[0]] = event.agent_step
    if event.key_id is not None:
        attributes[names.KEY_ID] = event.key_id
    for name, value in event.properties.items():
        attributes[names.PROPERTY_PREFIX + name] = value
    return attributes


def attempt_attributes(
    event: UsageEvent, parameters: Mapping[str, Any], server: tuple[str, int] | None, system: str
) -> Attributes:
    """The attributes of one attempt's CLIENT span; `system` is its provider's `gen_ai.provider.name`."""
    attributes: Attributes = {
        names.OPERATION[0]: names.EXPORTED_OPERATION.get(event.operation, event.operation),
        names.METERLINE_OPERATION: event.operation,
        names.PROVIDER[0]: system,
        names.REQUEST_MODEL[0]: event.requested_model,
        names.STREAMING[0]: event.streaming,
        names.REQUEST_ID: event.request_id,
        names.ATTEMPT: event.attempt,
        names.HTTP_STATUS[0]: event.status_code,
        names.USAGE_SOURCE: event.usage_source,
        names.CACHE_STATUS: event.cache_status,
        **parameters,
    }
    optional = {
        names.RESPONSE_MODEL[0]: event.response_model,
        names.RESPONSE_ID[0]: event.response_id,
        names.SERVED_MODEL: event.served_model,
        names.UPSTREAM_MODEL: event.upstream_model,
        names.COST_USD: event.cost_usd,
        names.PRICE_VERSION: event.price_version,
        names.SAVED_USD: event.saved_usd,
    }
    attributes.update((name, value) for name, value in optional.items() if value is not None)
    if event.finish_reason is not None:
        attributes[names.FINISH_REASONS[0]] = [event.finish_reason]
    for field, spellings in names.USAGE.items():
        count = getattr(event, field)
        if count or field in ("input_tokens", "output_tokens"):
            attributes[spellings[0]] = count
    if event.ttft_ms is not None:
        attributes[names.TIME_TO_FIRST_CHUNK_S[0]] = event.ttft_ms / 1000
    if event.error_class != "none":
        attributes[names.ERROR_TYPE[0]] = event.error_class
    if server is not None:
        attributes[names.SERVER_ADDRESS], attributes[names.SERVER_PORT] = server
    attributes.update(attribution_attributes(event))
    return attributes


def call_spans(
    events: Sequence[UsageEvent],
    parameters: Mapping[str, Any],
    resource: Resource,
    scope: InstrumentationScope,
    server: tuple[str, int] | None,
    content: Mapping[str, str],
    system: str,
) -> list[ReadableSpan]:
    """The request's SERVER span and one CLIENT span per attempt (siblings under it), ended.

    `content` (prompt and answer, when exported) goes on the last attempt's span: the one that answered.
    """
    first = events[0]
    trace_id = trace_id_of(first)
    request_span = SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False, trace_flags=_SAMPLED)
    client_parent = (
        SpanContext(trace_id, int(first.parent_span_id, 16), is_remote=True, trace_flags=_SAMPLED)
        if first.parent_span_id
        else None
    )
    operation = names.EXPORTED_OPERATION.get(first.operation, first.operation)
    name = f"{operation} {first.requested_model}"
    last = events[-1]
    priced = [event.cost_usd for event in events if event.cost_usd is not None]
    request_attributes: Attributes = {
        names.OPERATION[0]: operation,
        names.METERLINE_OPERATION: first.operation,
        names.REQUEST_MODEL[0]: first.requested_model,
        names.REQUEST_ID: first.request_id,
        names.ATTEMPTS: len(events),
        **attribution_attributes(first),
    }
    if priced:
        request_attributes[names.COST_USD] = sum(priced)
    if last.error_class != "none":
        request_attributes[names.ERROR_TYPE[0]] = last.error_class
    spans = [
        ReadableSpan(
            name,
            context=request_span,
            parent=client_parent,
            resource=resource,
            attributes=request_attributes,
            kind=SpanKind.SERVER,
            status=_status(last),
            start_time=unix_ns(first.started_at),
            end_time=max(unix_ns(event.ended_at) for event in events),
            instrumentation_scope=scope,
        )
    ]
    for event in events:
        context = SpanContext(trace_id, int(event.span_id or "1", 16), is_remote=False, trace_flags=_SAMPLED)
        attributes = attempt_attributes(event, parameters, server, system)
        if event is last:
            attributes.update(content)
        spans.append(
            ReadableSpan(
                name,
                context=context,
                parent=request_span,
                resource=resource,
                attributes=attributes,
                kind=SpanKind.CLIENT,
                status=_status(event),
                start_time=unix_ns(event.started_at),
                end_time=unix_ns(event.ended_at),
                instrumentation_scope=scope,
            )
        )
    return spans


def _status(event: UsageEvent) -> Status:
    if event.error_class == "none":
        return Status(StatusCode.UNSET)
    return Status(StatusCode.ERROR, event.error_message or event.error_class)
