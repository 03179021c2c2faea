"""The durable spool: usage events appended as JSON lines to segment files on local disk.

The gateway appends each event with one `os.write` to the active segment before the client's
response completes, so a killed process loses nothing it answered for; `fsync` runs in the
background. The loader periodically calls `rotate`, which closes the active segment and returns
every closed segment waiting to be loaded (oldest first, including ones left by earlier
processes); a segment is deleted with `delete_segment` only once its events are in the store.

Segments are named `seg-<20-digit ns timestamp>-<pid>.jsonl`, so names sort by creation. A
writer holds an exclusive `flock` on its active segment: a segment that is still locked belongs
to another live process and is left alone, while the kernel releases the lock of a killed one.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

import msgspec

from meterline.events.schema import UsageEvent, decode_event, encode_event

log = logging.getLogger("meterline.spool")

SEGMENT_GLOB = "seg-*.jsonl"
QUARANTINE_DIR = "quarantine"


def read_segment(path: Path) -> tuple[list[UsageEvent], int]:
    """The events of one segment, and how many undecodable lines were moved to quarantine.

    A final line without a newline is the torn write of a killed process and is ignored. A
    complete line that does not decode is written to `quarantine/<segment name>` beside the
    segment and logged, so the loader never crashes on it and nothing vanishes unseen.
    """
    *lines, torn_tail = path.read_bytes().split(b"\n")
    if torn_tail:
        log.info("ignoring a torn final line of %d bytes in %s", len(torn_tail), path)
    events: list[UsageEvent] = []
    bad_lines: list[bytes] = []
    for line in lines:
        if not line:
            continue
        try:
            events.append(decode_event(line))
        except msgspec.DecodeError:  # also covers msgspec.ValidationError
            bad_lines.append(line)
    if bad_lines:
        quarantine = path.parent / QUARANTINE_DIR / path.name
        quarantine.parent.mkdir(exist_ok=True)
        with quarantine.open("wb") as file:  # rewritten whole, so reading a segment twice is harmless
            file.write(b"".join(line + b"\n" for line in bad_lines))
            file.flush()
            os.fsync(file.fileno())
        log.warning("moved %d undecodable line(s) from %s to %s", len(bad_lines), path, quarantine)
    return events, len(bad_lines)


def _created_ns(path: Path) -> int:
    """The creation time encoded in a segment's name, in nanoseconds since the epoch."""
    return int(path.name.split("-")[1])


class SpoolWriter:
    """Appends events to the active segment; tracks closed segments until they are loaded.

    `append` and `rotate` run on the event loop's thread; `fsync` and `delete_segment` run in
    worker threads. `fsync` never runs on a file descriptor that `rotate` has closed: rotation
    only sets the old descriptor aside, and `fsync` syncs and closes it.
    """

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # guards _fd/_path swaps, _retired and _closed
        self._fsync_lock = threading.Lock()  # one fsync/close at a time
        self._fd: int | None
        self._closed: dict[Path, int] = {}  # closed segments not yet loaded → size in bytes
        self._retired: list[int] = []  # descriptors of closed segments awaiting fsync and close
        self._last_created_ns = 0
        self._dir_unsynced = False
        self._unsynced = False
        self._write_failed = False
        self._path, self._fd = self._open_segment()
        self._active_bytes = 0
        self._scan()

    @property
    def active_path(self) -> Path:
        return self._path

    def append(self, event: UsageEvent) -> None:
        """Hand one event to the OS with a single write; raises OSError if the disk refuses it."""
        line = encode_event(event)
        if self._fd is None:
            raise OSError(errno.EBADF, f"the spool writer for {self.spool_dir} is closed")
        try:
            written = os.write(self._fd, line)
        except OSError:
            self._write_failed = True
            raise
        if written != len(line):  # disk full mid-line: cut the fragment off so the next line starts clean
            self._write_failed = True
            os.ftruncate(self._fd, self._active_bytes)
            raise OSError(errno.ENOSPC, f"short write to spool segment {self._path} ({written} of {len(line)} bytes)")
        self._write_failed = False
        self._active_bytes += written
        self._unsynced = True

    def rotate(self) -> list[Path]:
        """Close the active segment if it holds anything; return all closed segments, oldest first."""
        if self._active_bytes:
            new_path, new_fd = self._open_segment()
            with self._lock:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                self._retired.append(self._fd)
                self._closed[self._path] = self._active_bytes
                self._path, self._fd = new_path, new_fd
                self._active_bytes = 0
        self._scan()
        with self._lock:
            return sorted(self._closed, key=lambda path: path.name)

    def hand_off(self) -> None:
        """Close the active segment if it holds anything and leave every closed one to another process's loader."""
        self.rotate()
        with self._lock:
            self._closed.clear()

    def delete_segment(self, path: Path) -> None:
        """Remove a closed segment whose events are committed to the store."""
        path.unlink(missing_ok=True)
        with self._lock:
            self._closed.pop(path, None)

    def fsync(self) -> None:
        """Make written events durable: the active segment (if written to), closed ones, new names."""
        with self._fsync_lock:
            with self._lock:
                retired, self._retired = self._retired, []
                active_fd = self._fd if self._unsynced else None
                self._unsynced = False  # cleared before the fsync, so a racing append is synced next time
                sync_dir, self._dir_unsynced = self._dir_unsynced, False
            to_sync = retired if active_fd is None else [*retired, active_fd]
            try:
                for fd in to_sync:
                    os.fsync(fd)
                if sync_dir:
                    dir_fd = os.open(self.spool_dir, os.O_RDONLY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
            finally:
                for fd in retired:
                    os.close(fd)

    def close(self) -> None:
        """Sync and close every descriptor; an empty active segment is removed."""
        with self._lock:
            if self._fd is None:
                return
            self._retired.append(self._fd)  # closed by fsync, never under a concurrent fsync's feet
            if self._active_bytes:
                self._closed[self._path] = self._active_bytes
            else:
                self._path.unlink(missing_ok=True)
            self._fd = None
            self._active_bytes = 0
        self.fsync()

    @property
    def pending_bytes(self) -> int:
        """Bytes written to the spool and not yet loaded into the store."""
        with self._lock:
            return sum(self._closed.values()) + self._active_bytes

    @property
    def oldest_pending_age_s(self) -> float:
        """Age of the oldest segment holding unloaded events (0 when nothing is pending)."""
        with self._lock:
            pending = list(self._closed)
            if self._active_bytes:
                pending.append(self._path)
        if not pending:
            return 0.0
        oldest_ns = min(_created_ns(path) for path in pending)
        return max(0.0, (time.time_ns() - oldest_ns) / 1e9)

    def writable(self) -> bool:
        """Whether appends can succeed: an open segment, no failed write since, a writable folder."""
        return self._fd is not None and not self._write_failed and os.access(self.spool_dir, os.W_OK)

    def _open_segment(self) -> tuple[Path, int]:
        created_ns = max(time.time_ns(), self._last_created_ns + 1)
        self._last_created_ns = created_ns
        path = self.spool_dir / f"seg-{created_ns:020d}-{os.getpid()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._dir_unsynced = True
        return path, fd

    def _scan(self) -> None:
        """Adopt segments in the folder that no live process holds (left by earlier processes)."""
        for path in self.spool_dir.glob(SEGMENT_GLOB):
            if path == self._path or path in self._closed or _held_by_live_writer(path):
                continue
            try:
                size = path.stat().st_size
            except FileNotFoundError:  # loaded and deleted by someone else meanwhile
                continue
            with self._lock:
                self._closed[path] = size


def _held_by_live_writer(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True  # gone: nothing to adopt
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
