"""The background loader: moves events from the spool into the store, in batches, off the hot path.

Two asyncio tasks run beside the gateway. One fsyncs the spool every `fsync_interval_s` (in a
worker thread). The other, every `flush_interval_s`, rotates the spool (cheap, on the loop) and
loads the closed segments in a worker thread: up to `batch_bytes` of segments per call to the
store's native `load_segments` (Python decoding only for segments with a torn or corrupt line),
and a segment is deleted only after its events are committed. If the
store fails, the segments stay, one warning is logged, and loading is retried with backoff (up
to `MAX_BACKOFF_S`); appends never wait for any of this. Inserts are idempotent by `event_id`,
so a segment replayed after a crash double-counts nothing.

Store writes run on one thread of the lowest CPU priority (`meterline.background`), and the
store is opened from it (so a store's own worker threads inherit that priority): loading
competes with nothing the gateway does on the request path, even on a single core.

Under `meterline serve --workers N` only worker 0 owns the store. The others run a loader with
`store=None`: it rotates and fsyncs their spool segments in the shared spool folder and hands
each closed segment over (forgets it); worker 0's loader adopts segments no live process holds
and loads them, so every worker's events reach the one store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from meterline.background import run_thread_as_background
from meterline.events.schema import UsageEvent, events_to_arrow
from meterline.events.spool import SpoolWriter, read_segment
from meterline.store.base import SegmentFormatError, Store

log = logging.getLogger("meterline.loader")

T = TypeVar("T")

MAX_BACKOFF_S = 5.0
BATCH_BYTES = 64 * 1024 * 1024


class SpoolLoader:
    """Loads the spool into the store periodically, and on demand with `flush`."""

    def __init__(
        self,
        writer: SpoolWriter,
        store: Store | None,
        *,
        flush_interval_s: float,
        fsync_interval_s: float,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.writer = writer
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.fsync_interval_s = fsync_interval_s
        self.batch_bytes = batch_bytes
        self.loaded_events = 0  # rows inserted since start (replayed duplicates not counted)
        self.quarantined_lines = 0  # undecodable spool lines moved to quarantine since start
        self.last_load_at: datetime | None = None  # when events were last committed to the store
        self.last_error: str | None = None  # the most recent load failure, kept after recovery
        self.store_healthy = True
        self._failures = 0  # consecutive failed loads
        self._fsync_failing = False
        self._load_lock = threading.Lock()  # one load pass at a time, even if a cancelled one still runs
        self._tasks: list[asyncio.Task[None]] = []
        self._writer_thread = ThreadPoolExecutor(1, "meterline-store-writer", initializer=run_thread_as_background)

    @property
    def pending_bytes(self) -> int:
        return self.writer.pending_bytes

    @property
    def oldest_pending_age_s(self) -> float:
        return self.writer.oldest_pending_age_s

    async def open_store(self) -> None:
        """Open the store from the writer thread, so threads the store starts inherit its low priority."""
        if self.store is not None:
            await self._in_writer_thread(self.store.open)

    async def _in_writer_thread(self, function: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer_thread, function, *args)

    async def start(self) -> None:
        """Load what earlier processes left in the spool, then start the fsync and load loops."""
        with contextlib.suppress(Exception):  # recorded by flush; the loop retries
            await self.flush()
        self._tasks = [
            asyncio.create_task(self._fsync_loop(), name="meterline-spool-fsync"),
            asyncio.create_task(self._load_loop(), name="meterline-spool-load"),
        ]

    async def flush(self) -> int:
        """Rotate the spool and load every closed segment now; returns rows inserted, raises if the store fails."""
        if self.store is None:
            self.writer.hand_off()
            return 0
        try:
            segments = self.writer.rotate()
            inserted = await self._in_writer_thread(self._load, segments)
        except Exception as exc:
            self._record_failure(exc)
            raise
        self._record_success()
        return inserted

    async def stop(self) -> None:
        """Stop the loops, load what is left (best effort), and close the spool writer."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self.flush()
        except Exception as exc:
            log.warning("at shutdown the spool could not be loaded (%s); it is loaded at the next start", exc)
        await asyncio.to_thread(self.writer.close)
        self._writer_thread.shutdown()

    async def _load_loop(self) -> None:
        while True:
            await asyncio.sleep(self._next_delay())
            with contextlib.suppress(Exception):  # recorded by flush
                await self.flush()

    async def _fsync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval_s)
            try:
                await asyncio.to_thread(self.writer.fsync)
            except OSError as exc:
                if not self._fsync_failing:
                    log.warning("cannot fsync the spool in %s: %s", self.writer.spool_dir, exc)
                self._fsync_failing = True
            else:
                self._fsync_failing = False

    def _next_delay(self) -> float:
        if self._failures == 0:
            return self.flush_interval_s
        backoff = self.flush_interval_s * 2 ** min(self._failures, 10)
        return max(self.flush_interval_s, min(MAX_BACKOFF_S, backoff))

    def _record_failure(self, exc: Exception) -> None:
        self._failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.store_healthy:
            log.warning(
                "cannot load the spool into the store (%s); events wait in %s and loading is retried",
                self.last_error,
                self.writer.spool_dir,
            )
        self.store_healthy = False

    def _record_success(self) -> None:
        if not self.store_healthy:
            log.info("the store accepts events again after %d failed load(s)", self._failures)
        self._failures = 0
        self.store_healthy = True

    def _load(self, segments: list[Path]) -> int:
        """Load segments oldest first, in batches of at most `batch_bytes`; runs in a worker thread."""
        with self._load_lock:
            inserted = 0
            batch: list[Path] = []
            batch_bytes = 0
            for path in segments:
                try:
                    size = path.stat().st_size
                except FileNotFoundError:  # already loaded by a pass that was still running
                    self.writer.delete_segment(path)
                    continue
                if batch and batch_bytes + size > self.batch_bytes:
                    inserted += self._commit(batch)
                    batch, batch_bytes = [], 0
                batch.append(path)
                batch_bytes += size
            if batch:
                inserted += self._commit(batch)
            return inserted

    def _commit(self, segments: list[Path]) -> int:
        """Insert the events of `segments`, then delete them; read natively unless a line is torn or corrupt."""
        assert self.store is not None, "a hand-off loader loads nothing"
        try:
            inserted = self.store.load_segments(segments)
        except SegmentFormatError:
            events: list[UsageEvent] = []
            for path in segments:
                segment_events, quarantined = read_segment(path)
                events.extend(segment_events)
                self.quarantined_lines += quarantined
            inserted = self.store.insert_events(events_to_arrow(events))
        for path in segments:
            self.writer.delete_segment(path)
        self.loaded_events += inserted
        if inserted:
            self.last_load_at = datetime.now(UTC)
        return inserted
