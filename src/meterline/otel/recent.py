"""The ids of the gateway's latest attempts, so ingest can tell a span of a call the gateway saw.

A gateway event reaches the store a loader interval after it is recorded; a span the app exports
for the same call can arrive sooner. `RecentGatewayCalls` is a `CallObserver` that keeps, for the
last `capacity` attempts, their trace (the client's, else the request id), span and parent span
ids and response id; ingest looks there first and in the store for older events. Everything runs
on the event loop's thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from meterline.events.schema import UsageEvent
from meterline.gateway.metering import CallContext

DEFAULT_CAPACITY = 50_000


class RecentGatewayCalls:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._order: deque[tuple[str, str | None]] = deque()
        self._span_ids: dict[str, list[str]] = {}  # trace -> span and parent ids, two per attempt, oldest first
        self._response_ids: set[str] = set()

    def call_finished(self, call: CallContext) -> None:
        for event in call.events:
            trace = event.trace_id or event.request_id
            self._span_ids.setdefault(trace, []).extend((event.span_id or "", event.parent_span_id or ""))
            if event.response_id:
                self._response_ids.add(event.response_id)
            self._order.append((trace, event.response_id))
        while len(self._order) > self.capacity:
            trace, response_id = self._order.popleft()
            ids = self._span_ids[trace]
            del ids[:2]
            if not ids:
                del self._span_ids[trace]
            if response_id:
                self._response_ids.discard(response_id)

    def results_recorded(self, events: Sequence[UsageEvent]) -> None:
        """Nothing to remember: a batch's results are not calls an app exports spans of."""

    def span_ids(self, trace_id: str) -> set[str]:
        """Span and parent span ids of recent gateway attempts in the trace."""
        return {span_id for span_id in self._span_ids.get(trace_id, ()) if span_id}

    def has_response(self, response_id: str | None) -> bool:
        return response_id is not None and response_id in self._response_ids
