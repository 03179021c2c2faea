"""Export off the gateway's process: finished calls go through a pipe to an exporter process.

Building and encoding spans and recording metrics with the OTel SDK costs a few hundred
microseconds of CPU per call, and in a thread it would compete with the event loop for the GIL.
So `ExportPipeline`, the gateway's `CallObserver`, only puts each finished call (or a finished
batch's results, together) on a bounded queue (a full queue drops the call from export and
counts it; its event is in the spool regardless). A sender thread, waking every 50 ms, takes
calls off the queue in batches, reduces each to its events, request parameters and (only with
`capture_content`) its prompt and answer, encodes the batch as JSON and writes it to a pipe. A
child process (`run_exporter`) decodes the batches and hands every call to `OtlpExporter`. It
runs as background work (`meterline.background`): on a busy host it yields the CPU to the
processes that serve requests and catches up when they idle.

On shutdown the sender sends what is queued and an empty batch; the child then flushes the SDK
and exits. A child whose parent died sees the pipe close and exits the same way. The child
ignores SIGINT, so Ctrl-C in a terminal stops the gateway, which then stops the child in order.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from meterline.background import run_process_as_background
from meterline.config import OtelExportConfig
from meterline.events.schema import UsageEvent
from meterline.gateway.metering import CallContext
from meterline.otel.content import content_attributes
from meterline.otel.spans import request_parameters

log = logging.getLogger("meterline.otel.pipeline")

BATCH_CALLS = 512
SEND_INTERVAL_S = 0.05
STOP_TIMEOUT_S = 60.0
_STOP = object()
_CONTEXT = multiprocessing.get_context("spawn")

Batch = list[tuple[list[UsageEvent], dict[str, Any], dict[str, str]]]
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Batch)


class ExportPipeline:
    """The gateway side: a `CallObserver` feeding the exporter process."""

    def __init__(
        self, config: OtelExportConfig, provider_urls: Mapping[str, str], provider_systems: Mapping[str, str]
    ) -> None:
        """See `OtlpExporter` for `provider_urls` and `provider_systems`."""
        self.config = config
        self.provider_urls = dict(provider_urls)
        self.provider_systems = dict(provider_systems)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=config.max_queue)
        self.sent = 0
        self.dropped = 0
        self._connection: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._sender = threading.Thread(target=self._send_loop, name="meterline-otlp-sender", daemon=True)

    def start(self) -> None:
        receiving, sending = _CONTEXT.Pipe(duplex=False)
        self._process = _CONTEXT.Process(
            target=run_exporter,
            args=(self.config, self.provider_urls, self.provider_systems, receiving),
            name="meterline-otlp-exporter",
            daemon=True,
        )
        self._process.start()
        receiving.close()
        self._connection = sending
        self._sender.start()

    def call_finished(self, call: CallContext) -> None:
        try:
            self.queue.put_nowait((call.events, call.body, call.output_text))
        except queue.Full:
            self.dropped += 1

    def results_recorded(self, events: Sequence[UsageEvent]) -> None:
        """A finished batch's results travel as one item; the exporter records their metrics only."""
        if events:
            try:
                self.queue.put_nowait((list(events), {}, None))
            except queue.Full:
                self.dropped += 1

    def stop(self) -> None:
        """Send what is queued, let the exporter flush, and wait for it (blocking; call off the loop)."""
        if self._sender.is_alive():
            self.queue.put(_STOP)
            self._sender.join()
        if self._process is not None:
            self._process.join(STOP_TIMEOUT_S)
            if self._process.is_alive():
                log.warning("the OTLP exporter process did not finish in %.0f s; stopping it", STOP_TIMEOUT_S)
                self._process.terminate()

    def gauges(self) -> Iterator[Metric]:
        """The export pipeline for `/metrics`: calls waiting, sent to the exporter, dropped."""
        yield GaugeMetricFamily("meterline_otlp_export_queue", "Finished calls waiting for export.", self.queue.qsize())
        yield CounterMetricFamily("meterline_otlp_export_calls", "Calls sent to the OTLP exporter.", self.sent)
        yield CounterMetricFamily(
            "meterline_otlp_export_dropped_calls", "Calls not exported because the queue was full.", self.dropped
        )

    def _send_loop(self) -> None:
        """Every `SEND_INTERVAL_S`, send what the queue holds, in batches of up to `BATCH_CALLS`.

        The thread sleeps rather than waiting on the queue, so a finished call never wakes it: a
        wake-up per call would cost the gateway's core a thread switch and a GIL hand-off each time.
        """
        assert self._connection is not None
        stopping = False
        while not stopping:
            time.sleep(SEND_INTERVAL_S)
            batch: Batch = []
            while not stopping:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                events, body, output_text = item
                content = (
                    content_attributes(body, output_text, events[-1].finish_reason)
                    if self.config.capture_content
                    else {}
                )
                batch.append((events, request_parameters(body), content))
                if len(batch) == BATCH_CALLS:
                    self._send_batch(batch)
                    batch = []
            if batch:
                self._send_batch(batch)
        self._send(b"")
        self._connection.close()

    def _send_batch(self, batch: Batch) -> None:
        if self._send(_encoder.encode(batch)):
            self.sent += len(batch)
        else:
            self.dropped += len(batch)

    def _send(self, payload: bytes) -> bool:
        assert self._connection is not None
        try:
            self._connection.send_bytes(payload)
        except OSError as exc:  # the exporter process is gone
            log.warning("cannot hand calls to the OTLP exporter process: %s", exc)
            return False
        return True


def run_exporter(
    config: OtelExportConfig,
    provider_urls: Mapping[str, str],
    provider_systems: Mapping[str, str],
    connection: Connection,
) -> None:
    """The exporter process: export every call it is sent until an empty batch or the pipe closes."""
    from meterline.otel.export import OtlpExporter

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run_process_as_background()
    exporter = OtlpExporter(config, provider_urls, provider_systems=provider_systems)
    with contextlib.suppress(EOFError, OSError):
        while payload := connection.recv_bytes():
            for events, parameters, content in _decoder.decode(payload):
                try:
                    exporter.export(events, parameters, content)
                except Exception:
                    log.exception("could not export a call to OTLP")
    exporter.shutdown()
