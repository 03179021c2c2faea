"""OTLP spans from instrumented apps as usage events: decoding, the GenAI test, the attribute mapping.

`decode_request` reads an OTLP/HTTP `ExportTraceServiceRequest` in protobuf or in the OTLP JSON
encoding (hex trace and span ids, camelCase or snake_case field names, 64-bit integers as
strings) and raises `MalformedPayload` with a message that points at the bad field.
`SpanMapper.events` turns every span that carries GenAI usage (a model and token counts, and
not an agent, workflow or tool span that sums its children) into a `UsageEvent` with
`source="otlp"`, reading attributes through the one table in `meterline.otel.names`; other spans
are only counted. Cost always comes from meterline's price table; a cost the span reports
(OpenLIT's `gen_ai.usage.cost`) is kept as the property `reported_cost_usd`.

Attribution: a span attribute wins over a resource attribute of the same name. `service.name`
is the app unless `meterline.app` is set; `user.id`/`enduser.id` the user; `meterline.feature`,
then the configured `otel.ingest.feature_attributes`, then OpenLLMetry's association property
the feature; `traceloop.association.properties.<name>` that names no field becomes a property.
The ingest key's own team, app and user (a virtual key's) override what spans claim.

Event ids are derived from the trace and span ids, so a span sent twice is stored once.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from meterline.events.schema import ERROR_CLASSES, UsageEvent
from meterline.gateway.auth import Identity
from meterline.otel import names
from meterline.otel.recent import RecentGatewayCalls
from meterline.pricing.table import PriceTable
from meterline.store.base import Store

PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
JSON_TYPE = "application/json"
MAX_VALUE_LENGTH = 256
MAX_PROPERTIES = 32
_PROPERTY_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID_FIELDS = {"traceId": 32, "trace_id": 32, "spanId": 16, "span_id": 16, "parentSpanId": 16, "parent_span_id": 16}
DEDUP_WINDOW = timedelta(minutes=10)
"""How long before an ingested span's start a gateway event of the same call may have started."""


class MalformedPayload(ValueError):
    """The request body is not an OTLP trace export; the message says where."""


def decode_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """The export request in `body`; `content_type` must be protobuf or JSON (checked by the caller)."""
    message = ExportTraceServiceRequest()
    if content_type in PROTOBUF_TYPES:
        try:
            message.ParseFromString(body)
        except DecodeError as exc:
            raise MalformedPayload(f"the body is not a protobuf ExportTraceServiceRequest: {exc}") from None
        return message
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedPayload(f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedPayload("the body must be a JSON object with resourceSpans")
    _hex_ids_to_base64(document, "")
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise MalformedPayload(f"the body is not an OTLP JSON trace export: {exc}") from None
    return message


def _hex_ids_to_base64(node: Any, where: str) -> None:
    """OTLP JSON writes trace and span ids as hex; protobuf's JSON reader expects base64 for bytes."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            _hex_ids_to_base64(item, f"{where}[{index}]")
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_FIELDS and isinstance(value, str):
                if value and (len(value) != _ID_FIELDS[key] or not _is_hex(value)):
                    raise MalformedPayload(f"{where}.{key} must be {_ID_FIELDS[key]} hex digits, got {value!r}")
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            elif key != "attributes":
                _hex_ids_to_base64(value, f"{where}.{key}" if where else key)


def _is_hex(value: str) -> bool:
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def span_count(request: ExportTraceServiceRequest) -> int:
    return sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)


def any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attribute_map(value.kvlist_value.values)
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return None if kind is None else getattr(value, kind)


def attribute_map(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: any_value(pair.value) for pair in pairs}


@dataclass
class IngestedSpan:
    """A GenAI span as an event, with the ids a gateway event of the same call would point at."""

    event: UsageEvent
    related_span_ids: set[str] = field(default_factory=set)
    """The span and its descendants in the same export: the client span the gateway saw may be a child (HTTP)."""


@dataclass
class MappedExport:
    spans: list[IngestedSpan]
    not_genai: int


class SpanMapper:
    def __init__(self, price_table: PriceTable, feature_attributes: Iterable[str] = ()) -> None:
        self.price_table = price_table
        spellings = names.ATTRIBUTION[names.FEATURE]
        self.attribution = {**names.ATTRIBUTION, names.FEATURE: (spellings[0], *feature_attributes, *spellings[1:])}
        self.consumed = {spelling for group in self.attribution.values() for spelling in group}

    def map(self, request: ExportTraceServiceRequest, identity: Identity) -> MappedExport:
        """Every GenAI span of the export as an event; raises `MalformedPayload` for a span with bad ids."""
        children: dict[str, list[str]] = {}
        found: list[IngestedSpan] = []
        not_genai = 0
        for resource, scope, span in _spans(request):
            span_id, parent_id = _span_id(span.span_id, "span_id"), _span_id(span.parent_span_id, "parent_span_id")
            if parent_id:
                children.setdefault(parent_id, []).append(span_id)
            attributes = {**resource, **attribute_map(span.attributes)}
            event = self.event(span, attributes, scope == names.GATEWAY_SCOPE, identity)
            if event is None:
                not_genai += 1
            else:
                found.append(IngestedSpan(event))
        for ingested in found:
            ingested.related_span_ids = set(_descendants(ingested.event.span_id or "", children))
        return MappedExport(found, not_genai)

    def event(
        self, span: Span, attributes: Mapping[str, Any], from_gateway: bool, identity: Identity
    ) -> UsageEvent | None:
        """The usage event a span describes, or None if it does not describe GenAI usage."""
        requested = _first_str(attributes, names.REQUEST_MODEL)
        response_model = _first_str(attributes, names.RESPONSE_MODEL)
        operation = _first_str(attributes, names.OPERATION) or ""
        if (
            not (requested or response_model)
            or operation in names.NOT_INFERENCE
            or attributes.get(names.TRACELOOP_SPAN_KIND) in names.NOT_INFERENCE
        ):
            return None
        tokens = {field: _first_int(attributes, spellings) for field, spellings in names.USAGE.items()}
        total = _first_int(attributes, names.TOTAL_TOKENS)
        if tokens["input_tokens"] is None and tokens["output_tokens"] is None and total is None:
            return None
        usage = _normalised_usage(tokens, total)
        trace_id = _hex_id(span.trace_id, 16, "trace_id")
        span_id = _span_id(span.span_id, "span_id")
        if not span.start_time_unix_nano:
            raise MalformedPayload(f"span {span_id} ({span.name!r}) carries GenAI usage but no startTimeUnixNano")
        started = _EPOCH + timedelta(microseconds=span.start_time_unix_nano // 1000)
        ended = max(started, _EPOCH + timedelta(microseconds=span.end_time_unix_nano // 1000))
        event_id = hashlib.sha256(f"{trace_id}:{span_id}".encode()).hexdigest()[:32]
        attribution = self.attribution_of(attributes, from_gateway)
        for name in ("team", "app", "user"):
            attribution[name] = getattr(identity, name) or attribution.get(name)
        error_class = _error_class(span, attributes)
        ttft_s = _first_float(attributes, names.TIME_TO_FIRST_CHUNK_S)
        finish = attributes.get(names.FINISH_REASONS[0], attributes.get(names.FINISH_REASONS[1]))
        status = _first_int(attributes, names.HTTP_STATUS)
        meterline_field = attributes.get if from_gateway else _nothing
        event = UsageEvent(
            event_id=event_id,
            request_id=_text(meterline_field(names.REQUEST_ID)) or event_id,
            attempt=_int(meterline_field(names.ATTEMPT)) or 1,
            trace_id=trace_id,
            span_id=span_id,
            parent_span_id=_span_id(span.parent_span_id, "parent_span_id") or None,
            started_at=started,
            ended_at=ended,
            duration_ms=round((ended - started) / timedelta(milliseconds=1), 3),
            ttft_ms=None if ttft_s is None else round(ttft_s * 1000, 3),
            operation=_text(meterline_field(names.METERLINE_OPERATION))
            or names.INGESTED_OPERATION.get(operation, operation or "chat"),
            streaming=bool(_first(attributes, names.STREAMING)),
            provider=_provider(attributes),
            requested_model=requested or response_model or "",
            served_model=_text(meterline_field(names.SERVED_MODEL)) or requested or response_model,
            upstream_model=_text(meterline_field(names.UPSTREAM_MODEL)),
            response_model=response_model,
            response_id=_first_str(attributes, names.RESPONSE_ID),
            status_code=status or (500 if error_class != "none" else 200),
            error_class=error_class,
            error_message=(span.status.message or None) if error_class != "none" else None,
            finish_reason=_finish_reason(finish),
            usage_source=_text(meterline_field(names.USAGE_SOURCE)) or "provider",
            cache_status=_text(meterline_field(names.CACHE_STATUS)) or "none",
            key_id=identity.key_id,
            agent_step=_int(_first(attributes, names.AGENT_STEP)),
            properties=self.properties_of(attributes, from_gateway),
            source="otlp",
            **usage,
            **attribution,
        )
        priced = self.price_table.price_event(event)
        if priced is not None:
            event.cost_usd, event.price_version = priced.cost_usd, priced.price_version
        return event

    def attribution_of(self, attributes: Mapping[str, Any], from_gateway: bool) -> dict[str, str | None]:
        found = {
            field: _clip(_first_str(attributes, spellings[:1] if from_gateway else spellings))
            for field, spellings in self.attribution.items()
        }
        if found["app"] is None and not from_gateway:
            found["app"] = _clip(_text(attributes.get(names.SERVICE_NAME)))
        return found

    def properties_of(self, attributes: Mapping[str, Any], from_gateway: bool) -> dict[str, str]:
        properties: dict[str, str] = {}
        for name, value in attributes.items():
            if name.startswith(names.PROPERTY_PREFIX):
                key = name[len(names.PROPERTY_PREFIX) :]
            elif name.startswith(names.TRACELOOP_PROPERTIES) and name not in self.consumed and not from_gateway:
                key = name[len(names.TRACELOOP_PROPERTIES) :].lower()
            else:
                continue
            text = _clip(_text(value))
            if text is not None and _PROPERTY_NAME.match(key) and len(properties) < MAX_PROPERTIES:
                properties[key] = text
        reported = _first_float(attributes, names.REPORTED_COST)
        if reported is not None and not from_gateway:
            properties["reported_cost_usd"] = f"{reported:g}"
        return properties


@dataclass(frozen=True)
class MapperSpec:
    """What a `SpanMapper` is built from, so an ingest process can build its own."""

    price_overrides: Path | None
    pricing_ids: Mapping[str, str | None]
    feature_attributes: tuple[str, ...] = ()

    def build(self) -> SpanMapper:
        return SpanMapper(PriceTable.load(self.price_overrides, self.pricing_ids), self.feature_attributes)


_process_mapper: SpanMapper | None = None


def start_ingest_process(spec: MapperSpec) -> None:
    """Initializer of the ingest process (see `meterline.otel.receiver`): build its mapper once."""
    global _process_mapper
    _process_mapper = spec.build()


def map_in_process(body: bytes, content_type: str, identity: Identity) -> tuple[MappedExport, int]:
    """Decode and map one export in the ingest process: (GenAI spans as events, spans in the export)."""
    assert _process_mapper is not None, "start_ingest_process did not run in this process"
    export = decode_request(body, content_type)
    return _process_mapper.map(export, identity), span_count(export)


def recent_duplicates(spans: list[IngestedSpan], recent: RecentGatewayCalls) -> set[str]:
    """Event ids of ingested spans the gateway recorded lately (same call seen on both paths).

    A gateway event is the same call when it is in the span's trace and is, or is a child of,
    the span or one of its descendants in the export (the app's HTTP client span), or when both
    name the same `gen_ai.response.id`. `found_in_store` applies the same test to stored events.
    """
    return {
        span.event.event_id
        for span in spans
        if recent.has_response(span.event.response_id)
        or span.related_span_ids & recent.span_ids(span.event.trace_id or "")
    }


def found_in_store(store: Store, spans: list[IngestedSpan]) -> set[str]:
    """Event ids of ingested spans that stored gateway events describe (a query: call from a worker thread)."""
    if not spans:
        return set()
    since = min(span.event.started_at for span in spans) - DEDUP_WINDOW
    traces = sorted({span.event.trace_id for span in spans if span.event.trace_id})
    responses = sorted({span.event.response_id for span in spans if span.event.response_id})
    rows = store.query(
        """
        SELECT coalesce(e.trace_id, e.request_id) AS trace_id, e.span_id, e.parent_span_id, e.response_id
        FROM events e
        WHERE e.source = 'gateway' AND e.started_at >= $since
          AND (list_contains($traces, coalesce(e.trace_id, e.request_id)) OR list_contains($responses, e.response_id))
        """,
        {"since": since, "traces": traces, "responses": responses},
    ).to_pylist()
    by_trace: dict[str, set[str]] = {}
    seen_responses = set()
    for row in rows:
        ids = by_trace.setdefault(row["trace_id"], set())
        ids.update(value for value in (row["span_id"], row["parent_span_id"]) if value)
        if row["response_id"]:
            seen_responses.add(row["response_id"])
    return {
        span.event.event_id
        for span in spans
        if span.event.response_id in seen_responses
        or span.related_span_ids & by_trace.get(span.event.trace_id or "", set())
    }


# ---- reading attributes ----------------------------------------------------------------------------


def _spans(request: ExportTraceServiceRequest) -> Iterator[tuple[dict[str, Any], str, Span]]:
    for resource_spans in request.resource_spans:
        resource = attribute_map(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield resource, scope_spans.scope.name, span


def _descendants(span_id: str, children: Mapping[str, list[str]]) -> Iterator[str]:
    pending = [span_id]
    seen: set[str] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        yield current
        pending.extend(children.get(current, ()))


def _hex_id(raw: bytes, size: int, name: str) -> str:
    if len(raw) != size or not any(raw):
        raise MalformedPayload(f"a span's {name} must be {size} bytes and not all zero, got {binascii.hexlify(raw)!r}")
    return raw.hex()


def _span_id(raw: bytes, name: str) -> str:
    """A span id as hex; '' for an absent parent."""
    if not raw and name == "parent_span_id":
        return ""
    return _hex_id(raw, 8, name)


def _nothing(_: str) -> None:
    return None


def _first(attributes: Mapping[str, Any], spellings: Iterable[str]) -> Any:
    for name in spellings:
        value = attributes.get(name)
        if value is not None and value != "":
            return value
    return None


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, list | dict):
        return None
    text = str(value).strip()
    return text or None


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:MAX_VALUE_LENGTH]


def _first_str(attributes: Mapping[str, Any], spellings: Iterable[str]) -> str | None:
    return _text(_first(attributes, spellings))


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = int(float(value))
    except (TypeError, ValueError):
        return None
    return max(number, 0)


def _first_int(attributes: Mapping[str, Any], spellings: Iterable[str]) -> int | None:
    for name in spellings:
        number = _int(attributes.get(name))
        if number is not None:
            return number
    return None


def _first_float(attributes: Mapping[str, Any], spellings: Iterable[str]) -> float | None:
    value = _first(attributes, spellings)
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _normalised_usage(tokens: dict[str, int | None], total: int | None) -> dict[str, int]:
    """meterline's token convention: input includes cache reads and writes, output includes reasoning."""
    usage = {field: count or 0 for field, count in tokens.items()}
    if tokens["output_tokens"] is None and total is not None:
        usage["output_tokens"] = max(total - usage["input_tokens"], 0)
    elif tokens["input_tokens"] is None and total is not None:
        usage["input_tokens"] = max(total - usage["output_tokens"], 0)
    cached = usage["cache_read_tokens"] + usage["cache_write_tokens"]
    if usage["input_tokens"] < cached:  # an instrumentation that counts uncached input only (older Anthropic ones)
        usage["input_tokens"] += cached
    usage["output_tokens"] = max(usage["output_tokens"], usage["reasoning_tokens"])
    return usage


def _provider(attributes: Mapping[str, Any]) -> str:
    name = (_first_str(attributes, names.PROVIDER) or "unknown").lower()
    return names.INGESTED_PROVIDER.get(name, name)


def _finish_reason(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return _clip(_text(value))


_ERROR_WORDS = (
    ("ratelimit", "rate_limit"),
    ("rate_limit", "rate_limit"),
    ("429", "rate_limit"),
    ("timeout", "timeout"),
    ("context_length", "context_length"),
    ("content_filter", "content_filter"),
    ("auth", "auth"),
    ("permission", "auth"),
    ("401", "auth"),
    ("403", "auth"),
    ("notfound", "not_found"),
    ("404", "not_found"),
    ("badrequest", "bad_request"),
    ("400", "bad_request"),
    ("connection", "network"),
)


def _error_class(span: Span, attributes: Mapping[str, Any]) -> str:
    """meterline's error class from `error.type` (meterline's own classes pass through) or an ERROR status."""
    own = _text(attributes.get(names.ERROR_TYPE[0]))
    if own in ERROR_CLASSES:
        return own
    if own is None and span.status.code != Status.STATUS_CODE_ERROR:
        return "none"
    words = (own or span.status.message or "").lower().replace(" ", "").replace("-", "_")
    return next((error_class for word, error_class in _ERROR_WORDS if word in words), "server_error")
