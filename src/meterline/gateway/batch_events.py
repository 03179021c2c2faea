"""Usage events from a finished batch's result files: one event per request the provider answered.

Each line of an OpenAI batch output or error file is `{"id": "batch_req_...", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}`. A line with a response becomes
one event: its usage read as a direct call's would be (`ProviderFamily.usage_from_response`),
an error response an event with the error's class and no tokens. A line without a response (a
request the batch never ran: cancelled, expired) costs nothing and makes no event.

The event is built only from the batch's record and the line, never from the clock or a random
source, so metering a batch twice (two workers, a restart mid-way) yields identical events
that the store keeps once: `event_id` is derived from the batch id and the line's `custom_id`,
and the call is timed by the provider's own timestamps (the response's `created`/`created_at`,
else the batch's `in_progress_at` or `created_at`; the clock only when the provider gives
none). `request_id` is the line's `id`, the line's `custom_id` is the property `custom_id`,
and `batch_id` marks the event as a batch result, which prices it at batch rates
(`meterline.pricing.variants`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from meterline.events.schema import UsageEvent
from meterline.gateway.batch_registry import BatchRecord
from meterline.pricing.table import PriceTable
from meterline.providers.base import ProviderFamily, Usage, classify_upstream_error, error_details, text_field
from meterline.providers.estimate import estimate_tokens, estimator_name

ENDPOINT_OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/embeddings": "embeddings",
    "/v1/completions": "completion",
}
"""The batch endpoints meterline meters, and the operation each one's requests are."""

CUSTOM_ID_PROPERTY = "custom_id"


def batch_event_id(batch_id: str, custom_id: str) -> str:
    """The event id of a batch request: 32 hex digits, the same however often the batch is metered."""
    return hashlib.sha256(f"batch\0{batch_id}\0{custom_id}".encode()).hexdigest()[:32]


def result_events(
    record: BatchRecord,
    batch: dict[str, Any],
    lines: Iterable[bytes],
    provider: ProviderFamily,
    price_table: PriceTable,
) -> tuple[list[UsageEvent], int]:
    """The priced events of a batch's result lines, and how many lines were not results (unreadable)."""
    operation = ENDPOINT_OPERATIONS[record.endpoint]
    fallback_time = _epoch(batch.get("in_progress_at")) or _epoch(batch.get("created_at")) or datetime.now(UTC)
    events: list[UsageEvent] = []
    unreadable = 0
    for raw in lines:
        if not raw.strip():
            continue
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            unreadable += 1
            continue
        custom_id = text_field(line, "custom_id") or text_field(line, "id")
        if custom_id is None:
            unreadable += 1
            continue
        response = line.get("response")
        if not isinstance(response, dict) or not isinstance(response.get("body"), dict):
            continue  # never run (the batch was cancelled or expired first): nothing was used
        event = _event(record, operation, provider, line, custom_id, response, fallback_time)
        priced = price_table.price_event(event)
        if priced is not None:
            event.cost_usd, event.price_version = priced
        events.append(event)
    return events, unreadable


def _event(
    record: BatchRecord,
    operation: str,
    provider: ProviderFamily,
    line: dict[str, Any],
    custom_id: str,
    response: dict[str, Any],
    fallback_time: datetime,
) -> UsageEvent:
    body: dict[str, Any] = response["body"]
    status = response.get("status_code") if isinstance(response.get("status_code"), int) else 200
    started = _epoch(body.get("created")) or _epoch(body.get("created_at")) or fallback_time
    ended = max(_epoch(body.get("completed_at")) or started, started)
    event_id = batch_event_id(record.batch_id, custom_id)
    attribution = dict(record.attribution)
    attribution["properties"] = {**attribution.get("properties", {}), CUSTOM_ID_PROPERTY: custom_id}
    usage: Usage | None = None
    error_class, error_message = "none", None
    if status >= 400:
        code, message = error_details(body)
        error_class, error_message = classify_upstream_error(status, code, message), message[:500] or None
    else:
        usage = provider.usage_from_response(operation, body)
    estimated = status < 400 and usage is None
    if estimated:  # the request's text is not at hand: only the answer's tokens can be estimated
        usage = Usage(output_tokens=estimate_tokens(provider.response_text(operation, body)))
    usage = usage or Usage()
    return UsageEvent(
        event_id=event_id,
        request_id=text_field(line, "id") or event_id,
        span_id=event_id[:16],
        started_at=started,
        ended_at=ended,
        duration_ms=(ended - started).total_seconds() * 1000,
        operation=operation,
        provider=record.provider,
        requested_model=record.model,
        served_model=record.model,
        upstream_model=record.upstream_model,
        response_model=text_field(body, "model"),
        response_id=text_field(body, "id"),
        status_code=status,
        error_class=error_class,
        error_message=error_message,
        finish_reason=provider.finish_reason(operation, body) if status < 400 else None,
        service_tier=provider.service_tier(operation, body),
        batch_id=record.batch_id,
        **usage.token_counts(),
        usage_source="estimated" if estimated else "provider",
        usage_estimator=estimator_name() if estimated else None,
        key_id=record.key_id,
        **attribution,
    )


def _epoch(value: Any) -> datetime | None:
    """A Unix timestamp in seconds as a UTC datetime; None when `value` is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return datetime.fromtimestamp(value, UTC)
