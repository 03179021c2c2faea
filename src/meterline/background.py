"""CPU priority for background work that shares cores with the gateway's event loop.

Loading the store and exporting OTLP are background work: they may lag, the request path may
not. On Linux their threads are moved to the `SCHED_IDLE` policy: such a thread runs only on
CPU time no normal thread wants, and a request-path thread that wakes up takes the core from it
at once. The lowest niceness alone does not give that: the kernel lets a niced thread finish
its time slice before a woken thread runs, a millisecond or more of added latency on a shared
core. Threads started afterwards (a store's worker threads, the OTel SDK's) inherit the policy.
Elsewhere a background process gets the lowest niceness and a background thread keeps its own.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

LOWEST_NICENESS = 19
_THREADS = Path("/proc/self/task")


def run_thread_as_background() -> None:
    """Give the calling thread the lowest CPU priority there is (Linux only)."""
    if hasattr(os, "SCHED_IDLE"):
        _make_idle(0)  # 0: the calling thread


def run_process_as_background() -> None:
    """Give every thread of this process (those libraries started on import included) the lowest CPU priority."""
    if not (hasattr(os, "SCHED_IDLE") and _THREADS.is_dir()):
        os.nice(LOWEST_NICENESS - os.nice(0))
        return
    for thread in _THREADS.iterdir():
        with contextlib.suppress(ProcessLookupError):  # the thread has ended since
            _make_idle(int(thread.name))


def _make_idle(thread_id: int) -> None:
    os.sched_setscheduler(thread_id, os.SCHED_IDLE, os.sched_param(0))
