"""The scale-out store: events in a ClickHouse table, for many gateways and billions of events.

`store: {kind: clickhouse, url, database, user, password, retention_days}`. The transport
(`clickhouse_transport`) is chosen by the URL: a server over HTTP, or chDB in process.

The table (`events` in `store.database`, created and migrated by `open`, i.e. by
`meterline store migrate` or at start-up) is a ReplacingMergeTree partitioned by month of
`started_at` and ordered by (day, team, feature, event_id), the order the common queries filter
in, with bloom-filter skip indexes on `request_id` and `agent_run_id` for the lookups by id. Spool
replays must never double count, so duplicates are kept out twice over:

- at insert, a batch is staged in a Memory table and only the event_ids not stored yet (looked
  up in the batch's time range, which the ordering key makes cheap) are copied into `events`,
  once each; this also gives `insert_events` its exact count of new rows;
- at query time every statement runs with `final = 1`, so two loaders racing on one event (the
  only way a duplicate can still land) are merged by ReplacingMergeTree's key before any sum
  sees them, even before the background merge has run. `do_not_merge_across_partitions_select_final`
  keeps FINAL cheap: a duplicate has the same `started_at`, so it is always in the same partition.

`retention_days` becomes the table's TTL (`started_at` + N days), applied by `open` whenever it
changes. Queries arrive in the query layer's DuckDB dialect and are rewritten by
`clickhouse_sql.to_clickhouse`; small Arrow tables a query reads (price periods) are uploaded
to short-lived Memory tables named `_scratch_<hex>` and dropped after the query.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from meterline.config import StoreConfig
from meterline.events.schema import COLUMN_NAMES, COLUMNS, SHAPE_COLUMNS, Column, arrow_schema, arrow_to_events
from meterline.store.base import EventPage, EventQuery, StoreUnavailable, event_filter, event_page
from meterline.store.clickhouse_sql import to_clickhouse
from meterline.store.clickhouse_transport import Transport, TransportError, transport_for
from meterline.store.duckdb import read_segments

QUERY_SETTINGS = {
    "final": 1,
    "join_use_nulls": 1,
    "do_not_merge_across_partitions_select_final": 1,
}
_SELECT_LIST = ", ".join(f'"{name}"' for name in COLUMN_NAMES)

_TYPES = {
    "string": "String",
    "int": "Int64",
    "float": "Float64",
    "bool": "Bool",
    "timestamp": "DateTime64(6, 'UTC')",
    "string_map": "Map(String, String)",
}


def _column_type(column: Column) -> str:
    base = _TYPES[column.kind]
    return f"Nullable({base})" if column.nullable and column.kind != "string_map" else base


def _arrow_column_type(data_type: pa.DataType) -> str:
    """The ClickHouse type of a column of a small Arrow table a query reads."""
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return "Nullable(String)"
    if pa.types.is_boolean(data_type):
        return "Nullable(Bool)"
    if pa.types.is_integer(data_type):
        return "Nullable(Int64)"
    if pa.types.is_floating(data_type):
        return "Nullable(Float64)"
    if pa.types.is_timestamp(data_type):
        return "Nullable(DateTime64(6, 'UTC'))"
    raise TypeError(f"a query table column of Arrow type {data_type} has no ClickHouse type here")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: Callable[[str], list[str]]
    """The statements to run, given the database name."""


def _create_events(database: str) -> list[str]:
    columns = ", ".join(f'"{column.name}" {_column_type(column)}' for column in COLUMNS)
    # one request's or one agent run's events are looked up by id, which the ordering key does not cover
    indexes = ", ".join(
        f"INDEX {name}_bloom {name} TYPE bloom_filter(0.01) GRANULARITY 4" for name in ("request_id", "agent_run_id")
    )
    return [
        f"""CREATE TABLE IF NOT EXISTS {database}.events ({columns}, {indexes})
        ENGINE = ReplacingMergeTree
        PARTITION BY toYYYYMM(started_at)
        ORDER BY (toDate(started_at), team, feature, event_id)
        SETTINGS allow_nullable_key = 1"""
    ]


def add_columns(*names: str) -> Callable[[str], list[str]]:
    """A migration adding columns of `COLUMNS` to an older events table (existing rows read as the type's default)."""
    columns = {column.name: column for column in COLUMNS}
    unknown = [name for name in names if name not in columns]
    if unknown:
        raise ValueError(f"add_columns: {unknown} are not columns of UsageEvent")
    return lambda database: [
        f'ALTER TABLE {database}.events ADD COLUMN IF NOT EXISTS "{name}" {_column_type(columns[name])}'
        for name in names
    ]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the events table", _create_events),
    Migration(
        8, "add the request shape the insights read (hashes and counts, never text)", add_columns(*SHAPE_COLUMNS)
    ),
    Migration(9, "add service_tier and batch_id (tier and batch prices)", add_columns("service_tier", "batch_id")),
)


class ClickHouseStore:
    """Events in ClickHouse; every method may be called from several threads."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.database = config.database
        self.retention_days = config.retention_days
        self._transport: Transport | None = None
        self._write_lock = threading.Lock()  # one staged insert at a time from this process
        self._opening = threading.RLock()
        self._retry_open = False  # open() found ClickHouse down: the next use tries again

    @property
    def description(self) -> str:
        return self._transport.description if self._transport else f"ClickHouse at {self.config.url}"

    def open(self) -> None:
        """Connect, create or migrate the schema, and make the TTL match `retention_days`.

        Raises `StoreUnavailable` if ClickHouse does not answer; every later call then tries to
        open again first (and raises the same while it is still down).
        """
        with self._opening:
            try:
                self._transport = transport_for(self.config)
            except StoreUnavailable:
                self._retry_open = True
                raise
            self._retry_open = False
            with self._closed_on_error():
                self._migrate()
                self._apply_retention()
                self._check_columns()

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()

    def ping(self) -> bool:
        """Whether ClickHouse answers (false while it is down or the store is closed)."""
        transport = self._transport
        try:
            return transport is not None and transport.query_arrow("SELECT 1 AS one")["one"][0].as_py() == 1
        except TransportError:
            return False

    @contextmanager
    def _closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.close()
            raise

    def insert_events(self, table: pa.Table) -> int:
        if table.num_rows == 0:
            return 0
        batch = table.select(list(COLUMN_NAMES)).cast(arrow_schema())
        earliest = pc.min(batch["started_at"]).as_py()
        latest = pc.max(batch["started_at"]).as_py()
        transport = self._open_transport()
        staging = f"{self.database}._scratch_{uuid.uuid4().hex}"
        with self._write_lock:
            transport.command(f"CREATE TABLE {staging} AS {self.database}.events ENGINE = Memory")
            try:
                transport.insert_arrow(staging, batch)
                new_rows = (
                    f"FROM {staging} WHERE event_id NOT IN (SELECT event_id FROM {self.database}.events "
                    f"WHERE started_at >= {_time(earliest)} AND started_at <= {_time(latest)})"
                )
                counted = transport.query_arrow(f"SELECT uniqExact(event_id) AS new_rows {new_rows}")
                transport.command(
                    f"INSERT INTO {self.database}.events SELECT * {new_rows} ORDER BY started_at LIMIT 1 BY event_id"
                )
            finally:
                transport.command(f"DROP TABLE IF EXISTS {staging}")
        return int(counted["new_rows"][0].as_py())

    def load_segments(self, paths: list[Path]) -> int:
        return self.insert_events(read_segments(paths))

    def list_events(self, query: EventQuery) -> EventPage:
        where, params = event_filter(query)
        rows = self.query(
            f"SELECT {_SELECT_LIST} FROM events WHERE {where} "
            f"ORDER BY started_at DESC, event_id DESC LIMIT {query.limit + 1}",
            params,
        )
        return event_page(arrow_to_events(rows.cast(arrow_schema())), query.limit)

    def count_events(self) -> int:
        return int(self.query("SELECT count(*) AS events FROM events", {})["events"][0].as_py())

    def query(self, sql: str, params: Mapping[str, Any], tables: Mapping[str, pa.Table] | None = None) -> pa.Table:
        transport = self._open_transport()
        with self._scratch_tables(transport, tables or {}) as names:
            statement = to_clickhouse(sql, params, {"events": f"{self.database}.events", **names})
            return transport.query_arrow(statement, QUERY_SETTINGS)

    @contextmanager
    def _scratch_tables(self, transport: Transport, tables: Mapping[str, pa.Table]) -> Iterator[dict[str, str]]:
        """Upload the small tables a query reads to Memory tables; yields name -> qualified name."""
        names: dict[str, str] = {}
        try:
            for name, table in tables.items():
                scratch = f"{self.database}._scratch_{uuid.uuid4().hex}"
                columns = ", ".join(f'"{field.name}" {_arrow_column_type(field.type)}' for field in table.schema)
                transport.command(f"CREATE TABLE {scratch} ({columns}) ENGINE = Memory")
                names[name] = scratch
                transport.insert_arrow(scratch, table)
            yield names
        finally:
            for scratch in names.values():
                transport.command(f"DROP TABLE IF EXISTS {scratch}")

    def _open_transport(self) -> Transport:
        transport = self._transport
        if transport is None:
            with self._opening:
                if self._transport is None:
                    if not self._retry_open:
                        raise RuntimeError(f"the ClickHouse store at {self.config.url} is not open")
                    self.open()
                transport = self._transport
        assert transport is not None
        return transport

    def _migrate(self) -> None:
        transport = self._open_transport()
        transport.command(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        transport.command(
            f"CREATE TABLE IF NOT EXISTS {self.database}.schema_migrations "
            "(version UInt32, description String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = ReplacingMergeTree ORDER BY version"
        )
        applied = set(
            transport.query_arrow(f"SELECT version FROM {self.database}.schema_migrations")["version"].to_pylist()
        )
        newest_known = max(migration.version for migration in MIGRATIONS)
        if applied and max(applied) > newest_known:
            raise RuntimeError(
                f"the ClickHouse database {self.database} was migrated to schema version {max(applied)} by a newer "
                f"meterline; this one knows up to version {newest_known}: upgrade meterline"
            )
        for migration in MIGRATIONS:
            if migration.version in applied:
                continue
            for statement in migration.statements(self.database):
                transport.command(statement)
            transport.insert_arrow(
                f"{self.database}.schema_migrations",
                pa.table(
                    {"version": pa.array([migration.version], pa.uint32()), "description": [migration.description]}
                ),
            )

    def _apply_retention(self) -> None:
        """Make the table's TTL match `retention_days` (no TTL when it is not set)."""
        transport = self._open_transport()
        definition = transport.query_arrow(
            "SELECT create_table_query AS ddl FROM system.tables "
            f"WHERE database = '{self.database}' AND name = 'events'"
        )["ddl"][0].as_py()
        has_ttl = " TTL " in definition
        if self.retention_days is None:
            if has_ttl:
                transport.command(f"ALTER TABLE {self.database}.events REMOVE TTL")
            return
        wanted = f"toIntervalDay({self.retention_days})"
        if not has_ttl or wanted not in definition:
            transport.command(f"ALTER TABLE {self.database}.events MODIFY TTL toDateTime(started_at) + {wanted}")

    def _check_columns(self) -> None:
        """Fail clearly when the events table lacks a column of the event schema."""
        stored = set(
            self._open_transport()
            .query_arrow(f"SELECT name FROM system.columns WHERE database = '{self.database}' AND table = 'events'")[
                "name"
            ]
            .to_pylist()
        )
        missing = [name for name in COLUMN_NAMES if name not in stored]
        if missing:
            newest_known = max(migration.version for migration in MIGRATIONS)
            raise RuntimeError(
                f"the ClickHouse events table in {self.database} lacks column(s) {', '.join(missing)}: add "
                f"Migration({newest_known + 1}, ...) with ALTER TABLE events ADD COLUMN to MIGRATIONS in "
                "meterline/store/clickhouse.py"
            )


def _time(value: Any) -> str:
    return f"toDateTime64('{value.strftime('%Y-%m-%d %H:%M:%S.%f')}', 6, 'UTC')"
