"""Splits a byte stream of server-sent events into whole events, as they arrive.

Line endings are normalised to `\\n` so events are found by the blank line that ends them;
each event keeps its bytes so it can be forwarded unchanged.
"""

from __future__ import annotations

from meterline.providers.base import SSEEvent


class SSESplitter:
    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add received bytes; return the events now complete."""
        self._buffer += chunk.replace(b"\r\n", b"\n")
        events = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return events
            raw, self._buffer = self._buffer[: end + 2], self._buffer[end + 2 :]
            event = parse_event(raw)
            if event is not None:
                events.append(event)

    @property
    def leftover(self) -> bytes:
        """Bytes of an event that never completed (a cut-off stream)."""
        return self._buffer


def parse_event(raw: bytes) -> SSEEvent | None:
    """Parse one event's fields; comment-only events (keep-alives) come back with empty data."""
    name: str | None = None
    data_lines: list[str] = []
    for line in raw.decode("utf-8", errors="replace").split("\n"):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data_lines.append(value)
    if name is None and not data_lines:
        return SSEEvent(raw=raw, event=None, data="") if raw.strip() else None
    return SSEEvent(raw=raw, event=name, data="\n".join(data_lines))
