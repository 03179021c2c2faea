"""Who and what a call belongs to, read from `x-meterline-*` headers, W3C `traceparent` and the body.

Values are validated: at most `MAX_VALUE_LENGTH` printable characters; `x-meterline-agent-step`
is a non-negative integer; `traceparent` follows W3C Trace Context. A bad value raises
`AttributionError` naming the header, which the gateway turns into a 400.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

PREFIX = "x-meterline-"
PROPERTY_PREFIX = "x-meterline-property-"
MAX_VALUE_LENGTH = 256
MAX_PROPERTIES = 32

# header suffix -> attribute of `Attribution`
_FIELDS = {
    "user": "user",
    "feature": "feature",
    "team": "team",
    "app": "app",
    "env": "env",
    "prompt-id": "prompt_id",
    "prompt-version": "prompt_version",
    "session": "session_id",
    "agent-run": "agent_run_id",
}
# meterline headers that steer the gateway rather than describe the call
_CONTROL = frozenset({"agent-step", "retries", "cache"})

_PRINTABLE = re.compile(r"^[\x20-\x7e\u00a0-\uffff]+$")
_PROPERTY_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


class AttributionError(ValueError):
    def __init__(self, header: str, problem: str) -> None:
        super().__init__(f"header '{header}' {problem}")
        self.header = header


@dataclass
class Attribution:
    user: str | None = None
    feature: str | None = None
    team: str | None = None
    app: str | None = None
    env: str | None = None
    prompt_id: str | None = None
    prompt_version: str | None = None
    session_id: str | None = None
    agent_run_id: str | None = None
    agent_step: int | None = None
    trace_id: str | None = None
    parent_span_id: str | None = None
    properties: dict[str, str] = field(default_factory=dict)


def _checked_value(header: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise AttributionError(header, "is empty; omit it or give a value")
    if len(value) > MAX_VALUE_LENGTH:
        raise AttributionError(header, f"is {len(value)} characters long; the limit is {MAX_VALUE_LENGTH}")
    if not _PRINTABLE.match(value):
        raise AttributionError(header, "contains control characters")
    return value


def parse_traceparent(value: str) -> tuple[str, str]:
    """(trace_id, parent span id) from a W3C traceparent value."""
    match = _TRACEPARENT.match(value.strip())
    if not match:
        raise AttributionError("traceparent", "is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>)")
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
        raise AttributionError("traceparent", "has an invalid version or an all-zero trace or span id")
    return trace_id, span_id


def attribution_from_headers(headers: Mapping[str, str]) -> Attribution:
    """Read every attribution header; raise `AttributionError` on the first bad one."""
    attribution = Attribution()
    for raw_name, raw_value in headers.items():
        name = raw_name.lower()
        if name == "traceparent":
            attribution.trace_id, attribution.parent_span_id = parse_traceparent(raw_value)
            continue
        if not name.startswith(PREFIX):
            continue
        suffix = name[len(PREFIX) :]
        if name.startswith(PROPERTY_PREFIX):
            key = name[len(PROPERTY_PREFIX) :]
            if not _PROPERTY_NAME.match(key):
                raise AttributionError(raw_name, "has an invalid property name (use a-z, 0-9, _ . -, up to 64)")
            if len(attribution.properties) >= MAX_PROPERTIES:
                raise AttributionError(raw_name, f"exceeds the limit of {MAX_PROPERTIES} properties per request")
            attribution.properties[key] = _checked_value(raw_name, raw_value)
        elif suffix in _FIELDS:
            setattr(attribution, _FIELDS[suffix], _checked_value(raw_name, raw_value))
        elif suffix == "agent-step":
            value = _checked_value(raw_name, raw_value)
            if not value.isdigit() or len(value) > 9:
                raise AttributionError(raw_name, "must be a non-negative integer")
            attribution.agent_step = int(value)
        elif suffix not in _CONTROL:
            known = ", ".join(PREFIX + name for name in known_header_suffixes())
            raise AttributionError(raw_name, f"is not a meterline header; known headers: {known}")
    return attribution


def is_meterline_header(name: str) -> bool:
    """Headers meterline consumes; they are never forwarded upstream."""
    return name.lower().startswith(PREFIX)


def known_header_suffixes() -> list[str]:
    return sorted([*_FIELDS, *_CONTROL, "property-<name>"])


KEY_DEFAULTS = ("team", "app", "user")
"""Attribution a virtual key may carry; a call may add to it but not contradict it."""


def contradiction(attribution: Attribution, key_defaults: Mapping[str, str | None]) -> str | None:
    """The first of `KEY_DEFAULTS` the call sets to another value than its key does, or None."""
    for name in KEY_DEFAULTS:
        key_value, claimed = key_defaults.get(name), getattr(attribution, name)
        if key_value is not None and claimed is not None and claimed != key_value:
            return name
    return None
