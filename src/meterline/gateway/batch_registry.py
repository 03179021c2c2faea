"""What the gateway remembers of provider batches: whose files and batches they are, and which are metered.

A batch's results arrive long after the request that created it, possibly in another worker
process or after a restart, so the gateway keeps, in the control database, each batch input
file it accepted (the key that uploaded it, the model it names, its endpoint) and each batch
it created (its key, that call's attribution, its status and result files, and when its
results were metered). Metering a batch is claimed with a lease, so of several workers that
notice the same finished batch one meters it; a worker that dies mid-way lets the lease run out
and the batch is metered again later, which the event store absorbs (batch events have
deterministic ids).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from meterline.store.control import ControlDB

_TABLES = (
    """CREATE TABLE IF NOT EXISTS batch_files (
        file_id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        upstream_model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        created_at TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS batches (
        batch_id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        upstream_model TEXT NOT NULL,
        endpoint TEXT NOT NULL,
        attribution TEXT NOT NULL,
        status TEXT NOT NULL,
        output_file_id TEXT,
        error_file_id TEXT,
        created_at TEXT NOT NULL,
        metered_at TEXT,
        metered_events INTEGER,
        lease_until REAL
    )""",
    "CREATE INDEX IF NOT EXISTS batches_unmetered ON batches (metered_at)",
    "CREATE INDEX IF NOT EXISTS batches_output_file ON batches (output_file_id)",
    "CREATE INDEX IF NOT EXISTS batches_error_file ON batches (error_file_id)",
)

TERMINAL_STATUSES = frozenset({"completed", "failed", "expired", "cancelled"})
"""Batch statuses after which nothing changes: its results, if any, can be metered."""


@dataclass(frozen=True)
class BatchFile:
    """A batch input file uploaded through the gateway."""

    file_id: str
    provider: str
    key_id: str
    model: str
    """The configured model the file's requests name (the file names its upstream model)."""
    upstream_model: str
    endpoint: str


@dataclass(frozen=True)
class BatchRecord:
    """A batch created through the gateway."""

    batch_id: str
    provider: str
    key_id: str
    model: str
    upstream_model: str
    endpoint: str
    attribution: dict[str, Any]
    """The event fields the creating call attributed (team, app, user, feature, ..., properties)."""
    status: str
    output_file_id: str | None
    error_file_id: str | None
    metered: bool


class BatchRegistry:
    def __init__(self, db: ControlDB) -> None:
        self.db = db
        db.ensure(*_TABLES)

    def add_file(self, file: BatchFile) -> None:
        with self.db.transaction() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO batch_files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (file.file_id, file.provider, file.key_id, file.model, file.upstream_model, file.endpoint, _now()),
            )

    def file(self, file_id: str) -> BatchFile | None:
        rows = self.db.rows(
            "SELECT file_id, provider, key_id, model, upstream_model, endpoint FROM batch_files WHERE file_id = ?",
            (file_id,),
        )
        return BatchFile(*rows[0]) if rows else None

    def latest_provider(self, key_id: str | None) -> str | None:
        """The provider of the latest batch file `key_id` uploaded (None: any key's); None when there is none."""
        where, params = ("WHERE key_id = ?", (key_id,)) if key_id is not None else ("", ())
        rows = self.db.rows(f"SELECT provider FROM batch_files {where} ORDER BY created_at DESC LIMIT 1", params)
        return rows[0]["provider"] if rows else None

    def forget_file(self, file_id: str) -> None:
        with self.db.transaction() as connection:
            connection.execute("DELETE FROM batch_files WHERE file_id = ?", (file_id,))

    def file_owner(self, file_id: str) -> tuple[str, str] | None:
        """(key id, provider) of an input file, or of the batch whose result file it is; None if unknown."""
        rows = self.db.rows(
            """SELECT key_id, provider FROM batch_files WHERE file_id = ?1
            UNION ALL SELECT key_id, provider FROM batches WHERE output_file_id = ?1 OR error_file_id = ?1
            LIMIT 1""",
            (file_id,),
        )
        return (rows[0]["key_id"], rows[0]["provider"]) if rows else None

    def add_batch(self, record: BatchRecord) -> None:
        with self.db.transaction() as connection:
            connection.execute(
                """INSERT OR IGNORE INTO batches (batch_id, provider, key_id, model, upstream_model, endpoint,
                    attribution, status, output_file_id, error_file_id, created_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    record.batch_id,
                    record.provider,
                    record.key_id,
                    record.model,
                    record.upstream_model,
                    record.endpoint,
                    orjson.dumps(record.attribution).decode(),
                    record.status,
                    record.output_file_id,
                    record.error_file_id,
                    _now(),
                ),
            )

    def batch(self, batch_id: str) -> BatchRecord | None:
        rows = self.db.rows(f"SELECT {_RECORD_COLUMNS} FROM batches WHERE batch_id = ?", (batch_id,))
        return _record(rows[0]) if rows else None

    def owned_batch_ids(self, batch_ids: list[str], key_id: str | None) -> set[str]:
        """Which of `batch_ids` were created through the gateway (by `key_id`; None: by any key)."""
        if not batch_ids:
            return set()
        marks = ", ".join("?" * len(batch_ids))
        sql = f"SELECT batch_id FROM batches WHERE batch_id IN ({marks})"
        params: list[str] = list(batch_ids)
        if key_id is not None:
            sql += " AND key_id = ?"
            params.append(key_id)
        return {row["batch_id"] for row in self.db.rows(sql, params)}

    def observe(self, batch_id: str, status: str, output_file_id: str | None, error_file_id: str | None) -> None:
        """Remember what the provider last said of a batch."""
        with self.db.transaction() as connection:
            connection.execute(
                "UPDATE batches SET status = ?, output_file_id = ?, error_file_id = ? WHERE batch_id = ?",
                (status, output_file_id, error_file_id, batch_id),
            )

    def unmetered(self) -> list[BatchRecord]:
        """Batches whose results have not been metered yet, oldest first."""
        rows = self.db.rows(f"SELECT {_RECORD_COLUMNS} FROM batches WHERE metered_at IS NULL ORDER BY created_at")
        return [_record(row) for row in rows]

    def claim(self, batch_id: str, lease_s: float) -> bool:
        """Take the right to meter an unmetered batch for `lease_s` seconds; False if metered or claimed."""
        now = time.time()
        with self.db.transaction() as connection:
            cursor = connection.execute(
                """UPDATE batches SET lease_until = ? WHERE batch_id = ? AND metered_at IS NULL
                AND (lease_until IS NULL OR lease_until < ?)""",
                (now + lease_s, batch_id, now),
            )
            return cursor.rowcount == 1

    def release(self, batch_id: str) -> None:
        """Give a claim back unmetered (metering failed; a later look tries again)."""
        with self.db.transaction() as connection:
            connection.execute("UPDATE batches SET lease_until = NULL WHERE batch_id = ?", (batch_id,))

    def metered(self, batch_id: str, events: int) -> None:
        with self.db.transaction() as connection:
            connection.execute(
                "UPDATE batches SET metered_at = ?, metered_events = ?, lease_until = NULL WHERE batch_id = ?",
                (_now(), events, batch_id),
            )


_RECORD_COLUMNS = (
    "batch_id, provider, key_id, model, upstream_model, endpoint, attribution, status, output_file_id, "
    "error_file_id, metered_at"
)


def _record(row: Any) -> BatchRecord:
    return BatchRecord(
        batch_id=row["batch_id"],
        provider=row["provider"],
        key_id=row["key_id"],
        model=row["model"],
        upstream_model=row["upstream_model"],
        endpoint=row["endpoint"],
        attribution=orjson.loads(row["attribution"]),
        status=row["status"],
        output_file_id=row["output_file_id"],
        error_file_id=row["error_file_id"],
        metered=row["metered_at"] is not None,
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()
