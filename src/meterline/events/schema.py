"""The usage event: one per upstream attempt, the single schema used by gateway, spool and stores.

Everything that records, stores or reads events derives its shape from `UsageEvent` here:
the spool encodes it as JSON lines, the stores build their tables from `COLUMNS`, and the
Arrow schema used for batch inserts comes from `arrow_schema()`.
"""

from __future__ import annotations

import itertools
import os
import random
import types
import typing
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import msgspec
import pyarrow as pa

Operation = Literal["chat", "completion", "embeddings", "responses", "messages", "generate_content"]

ERROR_CLASSES = (
    "none",
    "rate_limit",
    "timeout",
    "context_length",
    "content_filter",
    "auth",
    "bad_request",
    "not_found",
    "server_error",
    "network",
    "invalid_response",
    "budget_blocked",
    "circuit_open",
    "client_cancelled",
)

USAGE_SOURCES = ("provider", "estimated")


class UsageEvent(msgspec.Struct, kw_only=True, omit_defaults=False):
    """One upstream attempt, with its tokens, timings, outcome, price and attribution.

    Token counts are normalised across providers: `input_tokens` includes cache reads and
    writes, `output_tokens` includes reasoning; the cache and reasoning counts are subsets,
    and `cache_write_1h_tokens` is the part of `cache_write_tokens` written with a 1-hour TTL.
    """

    event_id: str
    request_id: str
    attempt: int = 1
    trace_id: str | None = None
    span_id: str | None = None
    parent_span_id: str | None = None
    started_at: datetime
    ended_at: datetime
    duration_ms: float
    ttft_ms: float | None = None
    operation: str
    streaming: bool = False
    provider: str
    requested_model: str
    served_model: str | None = None
    """The configured model that served the attempt: `requested_model` unless a budget downgraded it."""
    upstream_model: str | None = None
    response_model: str | None = None
    response_id: str | None = None
    """The provider's id for its answer (OpenAI `chatcmpl-...`, Anthropic `msg_...`); `gen_ai.response.id` in OTel."""
    status_code: int
    error_class: str = "none"
    error_message: str | None = None
    finish_reason: str | None = None
    service_tier: str | None = None
    """The provider's service tier for the call (OpenAI `default`/`flex`/`priority`, Anthropic `standard`/`priority`):
    what the response reported, else what the request asked for; prices may differ by tier."""
    batch_id: str | None = None
    """For a result of a provider batch (OpenAI Batch API): the batch's id; such calls pay batch prices."""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    usage_source: str = "provider"
    usage_estimator: str | None = None
    cost_usd: float | None = None
    price_version: str | None = None
    cache_status: str = "none"
    saved_usd: float | None = None
    key_id: str | None = None
    team: str | None = None
    app: str | None = None
    user: str | None = None
    feature: str | None = None
    env: str | None = None
    prompt_id: str | None = None
    prompt_version: str | None = None
    session_id: str | None = None
    agent_run_id: str | None = None
    agent_step: int | None = None
    properties: dict[str, str] = {}
    source: str = "gateway"
    retry_after_s: float | None = None
    """The wait the provider asked for before a retry (`retry-after-ms`/`retry-after`) on a failed attempt."""
    request_hash: str | None = None
    """A hash of everything in the request body that decides the answer (not the text: the hash only).

    Equal for a client's resend of the same call and for the same input embedded again; the
    attempts of one logical request share it. None for events from before it was recorded and
    ingested spans."""
    prefix_hash: str | None = None
    """A hash of the request's leading, usually static part: system instructions and tool definitions.
    None when the request has none."""
    system_tokens: int | None = None
    """Estimated tokens of that leading part (what provider prompt caching could serve from cache)."""
    max_tokens: int | None = None
    """The output-token cap the client set (`max_tokens`, `max_completion_tokens`, `max_output_tokens`)."""
    n_messages: int | None = None
    """Messages in a chat, input items of a responses or embeddings call, prompts of a completion."""
    tools_count: int | None = None
    """Tool (function) definitions sent with the request."""

    @property
    def priced_model(self) -> str:
        """The model name prices are looked up by: what answered, else what was sent upstream."""
        return self.response_model or self.upstream_model or self.requested_model


class _IdSource:
    """Unique ids without a system call each: a random 64-bit prefix per process, then a counter.

    Event and request ids are made on every request; `uuid4()` reads the OS's random source each
    time. The prefix is drawn again in a forked child so worker processes never share ids.
    """

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def new_id(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_ids = _IdSource()
os.register_at_fork(after_in_child=_ids.reseed)


def new_id() -> str:
    """A 32-hex-digit id unique across processes and restarts (event ids, request ids)."""
    return _ids.new_id()


def new_span_id() -> str:
    """A random non-zero 64-bit W3C span id as 16 hex digits."""
    return f"{random.getrandbits(64) or 1:016x}"


@dataclass(frozen=True)
class Column:
    """One stored column: its name and logical type (one of the keys of `_ARROW_TYPES`)."""

    name: str
    kind: str
    nullable: bool


_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "string_map": pa.map_(pa.string(), pa.string()),
}


DUCKDB_TYPES: dict[str, str] = {
    "string": "VARCHAR",
    "int": "BIGINT",
    "float": "DOUBLE",
    "bool": "BOOLEAN",
    "timestamp": "TIMESTAMPTZ",
    "string_map": "MAP(VARCHAR, VARCHAR)",
}


def _column_kind(annotation: object) -> tuple[str, bool]:
    """Map a field annotation of `UsageEvent` to (logical kind, nullable)."""
    members = set(typing.get_args(annotation)) if isinstance(annotation, types.UnionType) else {annotation}
    nullable = type(None) in members
    members.discard(type(None))
    (base,) = members
    kinds: dict[object, str] = {
        str: "string",
        int: "int",
        float: "float",
        bool: "bool",
        datetime: "timestamp",
        dict[str, str]: "string_map",
    }
    if base not in kinds:
        raise TypeError(f"UsageEvent field type {annotation!r} has no stored column kind")
    return kinds[base], nullable


COLUMNS: tuple[Column, ...] = tuple(
    Column(field.name, *_column_kind(field.type)) for field in msgspec.structs.fields(UsageEvent)
)
COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)
SHAPE_COLUMNS = (
    "retry_after_s",
    "request_hash",
    "prefix_hash",
    "system_tokens",
    "max_tokens",
    "n_messages",
    "tools_count",
)
"""The columns added by schema migration 8: what the insights detectors read about a request's shape."""


def arrow_schema() -> pa.Schema:
    return pa.schema([pa.field(c.name, _ARROW_TYPES[c.kind], nullable=c.nullable) for c in COLUMNS])


def events_to_arrow(events: list[UsageEvent]) -> pa.Table:
    """Turn events into one Arrow table with the canonical schema, column by column."""
    schema = arrow_schema()
    arrays = []
    for column, field in zip(COLUMNS, schema, strict=True):
        values = [getattr(event, column.name) for event in events]
        if column.kind == "string_map":
            values = [list(value.items()) for value in values]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def arrow_to_events(table: pa.Table) -> list[UsageEvent]:
    """The inverse of `events_to_arrow`, for stores that hand rows back."""
    rows = table.to_pylist()
    for row in rows:
        props = row.get("properties")
        row["properties"] = dict(props) if props else {}
    return [UsageEvent(**row) for row in rows]


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(UsageEvent)


def encode_event(event: UsageEvent) -> bytes:
    """One event as a JSON line (with trailing newline), the spool's record format."""
    return _encoder.encode(event) + b"\n"


def decode_event(line: bytes) -> UsageEvent:
    return _decoder.decode(line)


def columns_to_arrow(columns: dict[str, list[object]], rows: int) -> pa.Table:
    """An Arrow table with the canonical schema from some columns' values; the others get the field defaults.

    For bulk writers (the simulator, tests) that build columns rather than `UsageEvent`s. `properties`
    values are dicts.
    """
    unknown = set(columns) - set(COLUMN_NAMES)
    if unknown:
        raise ValueError(f"not event columns: {', '.join(sorted(unknown))}")
    fields = msgspec.structs.fields(UsageEvent)
    defaults = {
        f.name: f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default for f in fields
    }
    schema = arrow_schema()
    arrays = []
    for column, field in zip(COLUMNS, schema, strict=True):
        values = columns.get(column.name)
        if values is None:
            default = defaults[column.name]
            if default is msgspec.NODEFAULT:
                raise ValueError(f"column {column.name} has no default and was not given")
            values = [default] * rows
        if column.kind == "string_map":
            values = [list(value.items()) for value in values]  # type: ignore[attr-defined]
        arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=schema)
