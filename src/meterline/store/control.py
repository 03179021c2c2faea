"""The control database: the small, transactional state that steers the gateway (virtual keys, budgets).

Events go to the event store; what the gateway must agree on with the CLI and with its other
worker processes on the same machine lives here, in one SQLite file (WAL mode, so readers never
wait for a writer, and `meterline keys create` works whether or not a server is running). Each
module that keeps state here declares its tables with `ControlDB.ensure` when it opens.

`changed()` tells a process cheaply (one PRAGMA) whether anything was committed since it last
asked, so caches of keys or budgets can be refreshed on the next request after a change. It
keeps one "last asked" per instance: give each cache its own `ControlDB`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class ControlDB:
    """One SQLite connection per process, serialised by a lock (calls are sub-millisecond)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
        self._connection.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        self._data_version: tuple[int, int] | None = None
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")

    def ensure(self, *statements: str) -> None:
        """Run `CREATE TABLE/INDEX IF NOT EXISTS ...` statements in one transaction."""
        with self.transaction() as connection:
            for statement in statements:
                connection.execute(statement)

    def ensure_columns(self, table: str, columns: dict[str, str]) -> None:
        """Add `columns` ({name: SQL type}) that `table`, created by an older version, lacks."""
        with self.transaction() as connection:
            present = {row["name"] for row in connection.execute(f"PRAGMA table_info({table})")}
            for name, kind in columns.items():
                if name not in present:
                    connection.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside `BEGIN IMMEDIATE ... COMMIT` (rolled back if the block raises)."""
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._connection.execute(sql, params).fetchall()

    def changed(self) -> bool:
        """Whether anything was committed since the last call (True on the first call)."""
        with self._lock:
            (data_version,) = self._connection.execute("PRAGMA data_version").fetchone()
            # data_version only moves for other connections' commits; count our own through total_changes
            version = (data_version, self._connection.total_changes)
        changed = version != self._data_version
        self._data_version = version
        return changed

    def close(self) -> None:
        with self._lock:
            self._connection.close()
