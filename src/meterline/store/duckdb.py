"""The embedded default store: one DuckDB file holding the `events` table.

The table's columns come from `COLUMNS` in the event schema; numbered migrations in
`MIGRATIONS` create and evolve it and are recorded in `schema_migrations`. Migration 1 creates
the table with the columns of the release that runs it; a column added to `UsageEvent` later
gets one new entry, `Migration(<next>, "...", add_columns("<name>"))`, which adds it to older
tables and fills their rows with the field's default. Opening fails with a clear message if the
table still lacks a column after all migrations, so a forgotten migration cannot go unnoticed.

Inserts are idempotent by `event_id` without a primary-key index (an ART index over tens of
millions of events costs too much memory): a batch is deduplicated and anti-joined against the
stored events that started no earlier than the batch's first event, which DuckDB's zone maps
keep cheap because a replayed event always carries its original `started_at`.

`DuckDBStore(config, read_only=True)` opens an existing file for reading only (no migrations),
so the CLI can run analytics while no server owns the file.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pyarrow as pa
import pyarrow.compute as pc

from meterline.config import StoreConfig
from meterline.events.schema import (
    COLUMN_NAMES,
    COLUMNS,
    DUCKDB_TYPES,
    SHAPE_COLUMNS,
    UsageEvent,
    arrow_schema,
    arrow_to_events,
)
from meterline.store.base import EventPage, EventQuery, SegmentFormatError, event_filter, event_page

_COLUMN_KINDS = {column.name: column.kind for column in COLUMNS}
_SELECT_LIST = ", ".join(f'"{name}"' for name in COLUMN_NAMES)

Connection = duckdb.DuckDBPyConnection


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Connection], None]


def _column_definition(name: str) -> str:
    return f'"{name}" {DUCKDB_TYPES[_COLUMN_KINDS[name]]}'


def _create_events(cursor: Connection) -> None:
    cursor.execute(f"CREATE TABLE events ({', '.join(_column_definition(name) for name in COLUMN_NAMES)})")


def _field_default(name: str) -> object:
    field = next(field for field in msgspec.structs.fields(UsageEvent) if field.name == name)
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return None if field.default is msgspec.NODEFAULT else field.default


def add_columns(*names: str) -> Callable[[Connection], None]:
    """A migration step adding columns of `COLUMNS` to an older events table, existing rows set to the default."""
    unknown = [name for name in names if name not in _COLUMN_KINDS]
    if unknown:
        raise ValueError(f"add_columns: {unknown} are not columns of UsageEvent")

    def apply(cursor: Connection) -> None:
        for name in names:
            cursor.execute(f"ALTER TABLE events ADD COLUMN IF NOT EXISTS {_column_definition(name)}")
            default = _field_default(name)
            if default is not None:
                cursor.execute(f'UPDATE events SET "{name}" = $value WHERE "{name}" IS NULL', {"value": default})

    return apply


_READ_JSON = (
    "read_json($paths, columns = {"
    + ", ".join(f"'{column.name}': '{DUCKDB_TYPES[column.kind]}'" for column in COLUMNS)
    + "}, format = 'newline_delimited')"
)
_READ_SEGMENTS = f"CREATE OR REPLACE TEMP TABLE spool_batch AS SELECT * FROM {_READ_JSON}"


def read_segments(paths: list[Path]) -> pa.Table:
    """The events of spool segments as one Arrow table with the canonical schema, read natively by DuckDB.

    Other stores use this as their `load_segments` fast path. Raises `SegmentFormatError` for a
    torn or corrupt line (the loader then decodes those segments in Python).
    """
    with duckdb.connect() as connection:
        connection.execute("SET TimeZone = 'UTC'")
        try:
            table = connection.sql(
                f"SELECT {_SELECT_LIST} FROM {_READ_JSON}", params={"paths": [str(path) for path in paths]}
            ).to_arrow_table()
        except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
            raise SegmentFormatError(str(exc)) from exc
    return table.cast(arrow_schema())


def _insert_new(cursor: Connection, source: str, earliest: datetime, has_duplicates: bool) -> int:
    """Insert the rows of `source` whose event_id is not stored yet (checked from `earliest` on)."""
    rows = f"(SELECT DISTINCT ON (event_id) * FROM {source})" if has_duplicates else source  # dedupe costs ~40%
    (inserted,) = cursor.execute(
        f"""
        INSERT INTO events ({_SELECT_LIST})
        SELECT {_SELECT_LIST} FROM {rows}
        WHERE event_id NOT IN (SELECT event_id FROM events WHERE started_at >= $earliest)
        """,
        {"earliest": earliest},
    ).fetchone()  # type: ignore[misc]
    return inserted


def _add_served_model(cursor: Connection) -> None:
    add_columns("served_model")(cursor)
    cursor.execute("UPDATE events SET served_model = requested_model WHERE served_model IS NULL")


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "create the events table", _create_events),
    Migration(2, "add saved_usd (what a cache hit saved)", add_columns("saved_usd")),
    Migration(3, "add served_model (the model that served; differs from requested on a downgrade)", _add_served_model),
    Migration(7, "add response_id (the provider's id for its answer, gen_ai.response.id)", add_columns("response_id")),
    Migration(
        8, "add the request shape the insights read (hashes and counts, never text)", add_columns(*SHAPE_COLUMNS)
    ),
    Migration(9, "add service_tier and batch_id (tier and batch prices)", add_columns("service_tier", "batch_id")),
)


class DuckDBStore:
    """Events in one DuckDB file; safe to use from several threads (a cursor per call, one writer at a time)."""

    def __init__(self, config: StoreConfig, read_only: bool = False) -> None:
        self.path = config.path
        self.read_only = read_only
        self._connection: Connection | None = None
        self._write_lock = threading.Lock()

    def open(self) -> None:
        if self.read_only and not self.path.exists():
            raise FileNotFoundError(f"there is no meterline store file at {self.path} to read")
        if not self.read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = duckdb.connect(str(self.path), read_only=self.read_only)
        try:
            if self.read_only:
                self._check_columns()
            else:
                self._migrate()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def ping(self) -> bool:
        if self._connection is None:
            return False
        try:
            with self._cursor() as cursor:
                return cursor.execute("SELECT 1").fetchone() == (1,)
        except duckdb.Error:
            return False

    def insert_events(self, table: pa.Table) -> int:
        if table.num_rows == 0:
            return 0
        batch = table.select(list(COLUMN_NAMES)).cast(arrow_schema())
        earliest = pc.min(batch["started_at"]).as_py()
        has_duplicates = pc.count_distinct(batch["event_id"]).as_py() < batch.num_rows
        with self._write_lock, self._cursor() as cursor:
            cursor.register("batch", batch)
            return _insert_new(cursor, "batch", earliest, has_duplicates)

    def load_segments(self, paths: list[Path]) -> int:
        with self._write_lock, self._cursor() as cursor:
            try:
                cursor.execute(_READ_SEGMENTS, {"paths": [str(path) for path in paths]})
            except (duckdb.InvalidInputException, duckdb.ConversionException) as exc:
                raise SegmentFormatError(str(exc)) from exc
            try:
                earliest_us, rows, duplicates = cursor.execute(
                    "SELECT epoch_us(min(started_at)), count(*), count(*) - count(DISTINCT event_id) FROM spool_batch"
                ).fetchone()  # type: ignore[misc]
                if rows == 0:
                    return 0
                earliest = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=earliest_us)
                return _insert_new(cursor, "spool_batch", earliest, duplicates > 0)
            finally:
                cursor.execute("DROP TABLE IF EXISTS spool_batch")

    def list_events(self, query: EventQuery) -> EventPage:
        where, params = event_filter(query)
        params["limit"] = query.limit + 1
        # pick the page's rows by their sort keys first, then read all columns of just those rows
        # (late materialization: about twice as fast on a million rows as a top-N over every column)
        sql = f"""
            SELECT {_SELECT_LIST} FROM events
            WHERE rowid IN (SELECT rowid FROM events WHERE {where} ORDER BY started_at DESC, event_id DESC LIMIT $limit)
            ORDER BY started_at DESC, event_id DESC
        """
        with self._cursor() as cursor:
            rows = cursor.sql(sql, params=params).to_arrow_table()
        return event_page(arrow_to_events(rows.cast(arrow_schema())), query.limit)

    def count_events(self) -> int:
        with self._cursor() as cursor:
            (count,) = cursor.execute("SELECT count(*) FROM events").fetchone()
        return count

    def query(self, sql: str, params: Mapping[str, Any], tables: Mapping[str, pa.Table] | None = None) -> pa.Table:
        statements = duckdb.extract_statements(sql)
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise ValueError("Store.query runs exactly one SELECT statement")
        with self._cursor() as cursor:
            cursor.execute("SET TimeZone = 'UTC'")  # a setting of this cursor's connection only
            for name, table in (tables or {}).items():
                cursor.register(name, table)
            return cursor.sql(sql, params=dict(params)).to_arrow_table()

    @contextmanager
    def _cursor(self) -> Iterator[Connection]:
        if self._connection is None:
            raise RuntimeError(f"the DuckDB store {self.path} is not open")
        cursor = self._connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def _migrate(self) -> None:
        with self._write_lock, self._cursor() as cursor:
            cursor.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, description VARCHAR, applied_at TIMESTAMPTZ DEFAULT now())"
            )
            applied = {version for (version,) in cursor.execute("SELECT version FROM schema_migrations").fetchall()}
            newest_known = max(migration.version for migration in MIGRATIONS)
            if applied and max(applied) > newest_known:
                raise RuntimeError(
                    f"{self.path} was migrated to schema version {max(applied)} by a newer meterline; "
                    f"this one knows up to version {newest_known}: upgrade meterline"
                )
            for migration in sorted(MIGRATIONS, key=lambda migration: migration.version):
                if migration.version in applied:
                    continue
                cursor.execute("BEGIN TRANSACTION")
                try:
                    migration.apply(cursor)
                    cursor.execute(
                        "INSERT INTO schema_migrations (version, description) VALUES ($version, $description)",
                        {"version": migration.version, "description": migration.description},
                    )
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise
                cursor.execute("COMMIT")
        self._check_columns()

    def _check_columns(self) -> None:
        """Fail clearly when the events table lacks a column of the event schema."""
        with self._cursor() as cursor:
            stored = {name for (name,) in cursor.execute("SELECT name FROM pragma_table_info('events')").fetchall()}
        missing = [name for name in COLUMN_NAMES if name not in stored]
        if not stored:
            raise RuntimeError(f"{self.path} has no events table: is it a meterline store file?")
        if self.read_only and missing:
            raise RuntimeError(
                f"the events table in {self.path} lacks column(s) {', '.join(missing)}: it was written by an older "
                "meterline; start `meterline serve` once with this version to migrate it"
            )
        if missing:
            newest_known = max(migration.version for migration in MIGRATIONS)
            raise RuntimeError(
                f"the events table in {self.path} lacks column(s) {', '.join(missing)}: add "
                f"Migration({newest_known + 1}, ..., add_columns({', '.join(map(repr, missing))})) "
                "to MIGRATIONS in meterline/store/duckdb.py"
            )
