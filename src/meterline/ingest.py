"""`meterline ingest`: a process of its own that drains spool folders into the store.

Gateways started with `store.loader: external` only append to their spool (a process's loader
with no store rotates and fsyncs its segments and hands each closed one over); this process runs
one `SpoolLoader` per spool folder, each adopting the segments no live gateway holds and loading
them in batches, with the same retry and backoff as the embedded loader. So gateways and
ingestion scale apart: many gateway replicas, one ingester per machine (or per shared volume).

Two ingesters on one folder are safe (inserts are idempotent by `event_id`) but do the work
twice. SIGTERM or SIGINT stops it after a final load of what the folders hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from pathlib import Path

from meterline.config import Config
from meterline.events.loader import SpoolLoader
from meterline.events.spool import SpoolWriter
from meterline.store.base import Store, store_for

log = logging.getLogger("meterline.ingest")


class Ingester:
    """Loaders for each spool folder into one store."""

    def __init__(self, config: Config, spool_dirs: list[Path], store: Store | None = None) -> None:
        self.store = store or store_for(config.store)
        self.spool_dirs = spool_dirs
        self.loaders = [
            SpoolLoader(
                SpoolWriter(folder),
                self.store,
                flush_interval_s=config.store.flush_interval_ms / 1000,
                fsync_interval_s=config.store.fsync_interval_ms / 1000,
            )
            for folder in spool_dirs
        ]

    @property
    def loaded_events(self) -> int:
        return sum(loader.loaded_events for loader in self.loaders)

    @property
    def pending_bytes(self) -> int:
        return sum(loader.pending_bytes for loader in self.loaders)

    async def drain_once(self) -> int:
        """Open the store, load everything the folders hold now, close; returns the events inserted."""
        await self.loaders[0].open_store()
        try:
            inserted = sum([await loader.flush() for loader in self.loaders])
        finally:
            for loader in self.loaders:
                await loader.stop()
            await self._close()
        return inserted

    async def run(self, stop: asyncio.Event, report: Callable[[str], None], report_every_s: float) -> None:
        """Load continuously until `stop` is set, then load what is left and close."""
        await self.loaders[0].open_store()
        for loader in self.loaders:
            await loader.start()
        report(f"draining {', '.join(map(str, self.spool_dirs))} into the {type(self.store).__name__}")
        last = -1
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), report_every_s)
            if self.loaded_events != last:
                last = self.loaded_events
                report(f"{last} events loaded since start; {self.pending_bytes} bytes waiting")
        for loader in self.loaders:
            await loader.stop()
        await self._close()
        report(f"stopped: {self.loaded_events} events loaded since start; {self.pending_bytes} bytes left")

    async def _close(self) -> None:
        await asyncio.to_thread(self.store.close)


async def run_until_signalled(ingester: Ingester, report: Callable[[str], None], report_every_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await ingester.run(stop, report, report_every_s)
