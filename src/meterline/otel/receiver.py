"""`POST /v1/traces`: the OTLP/HTTP trace receiver that turns apps' GenAI spans into events.

A request needs a meterline key (`Authorization: Bearer <key>`, the master key or a virtual key),
a protobuf or JSON body (`Content-Type: application/x-protobuf` or `application/json`, gzip
allowed) of at most `otel.ingest.max_body_mb` after decompression, and fits the key's span
rate (a token bucket of `burst_spans` refilled at `spans_per_s`); otherwise it gets 401, 415,
413 or 429 (with `Retry-After`), and a body that is not an OTLP export gets 400 saying what is
wrong. Errors are `google.rpc.Status` messages in the request's encoding, as OTLP/HTTP asks.

Decoding and mapping (tens of microseconds of Python per span) run in a process of their own,
so a burst of spans never holds the GIL the gateway's event loop needs; the store half of the
duplicate check runs in a worker thread, and the gateway's latest attempts, not yet in the
store, are checked in memory (`RecentGatewayCalls`; under `serve --workers N` another worker's
calls are found once worker 0 has loaded them, a loader interval later). New events are
appended to the spool before the answer, exactly as gateway events are.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import orjson
from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from meterline.config import OtelIngestConfig
from meterline.events.spool import SpoolWriter
from meterline.gateway.auth import Authenticator, Identity, api_key_from_headers
from meterline.otel.ingest import (
    JSON_TYPE,
    PROTOBUF_TYPES,
    MalformedPayload,
    MappedExport,
    MapperSpec,
    found_in_store,
    map_in_process,
    recent_duplicates,
    start_ingest_process,
)
from meterline.otel.prometheus import GatewayMetrics
from meterline.otel.recent import RecentGatewayCalls
from meterline.store.base import Store

_CONTEXT = multiprocessing.get_context("spawn")
_GRPC_CODES = {400: code_pb2.INVALID_ARGUMENT, 401: code_pb2.UNAUTHENTICATED, 413: code_pb2.INVALID_ARGUMENT,
               415: code_pb2.INVALID_ARGUMENT, 429: code_pb2.RESOURCE_EXHAUSTED}  # fmt: skip


@dataclass
class _Bucket:
    tokens: float
    updated: float


class SpanRateLimiter:
    """Per-key token buckets of spans: `burst` at once, refilled at `rate` per second."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.buckets: dict[str, _Bucket] = {}

    def _bucket(self, key: str) -> _Bucket:
        now = self.clock()
        bucket = self.buckets.setdefault(key, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def exhausted(self, key: str) -> bool:
        """Whether the key has no span left to send now (checked before its body is read)."""
        return self._bucket(key).tokens < 1

    def wait_s(self, key: str, spans: int) -> float:
        """0 if `spans` may pass now (and takes them), else how many seconds until they could."""
        bucket = self._bucket(key)
        needed = min(spans, self.burst)
        if bucket.tokens >= needed:
            bucket.tokens -= needed
            return 0.0
        return (needed - bucket.tokens) / self.rate


class IngestError(Exception):
    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class TraceReceiver:
    def __init__(
        self,
        config: OtelIngestConfig,
        authenticator: Authenticator,
        mapper: MapperSpec,
        spool: SpoolWriter,
        store: Store,
        metrics: GatewayMetrics,
        recent: RecentGatewayCalls,
        limiter: SpanRateLimiter | None = None,
    ) -> None:
        self.config = config
        self.authenticator = authenticator
        self.mapper = mapper
        self.spool = spool
        self.store = store
        self.metrics = metrics
        self.recent = recent
        self.limiter = limiter or SpanRateLimiter(config.spans_per_s, config.burst_spans)
        self.max_bytes = int(config.max_body_mb * 1024 * 1024)
        self.pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        """Start the ingest process and wait until its price table is loaded."""
        self.pool = ProcessPoolExecutor(
            1, mp_context=_CONTEXT, initializer=start_ingest_process, initargs=(self.mapper,)
        )
        await asyncio.wrap_future(self.pool.submit(int))

    async def stop(self) -> None:
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown, True, cancel_futures=True)

    def route(self) -> web.RouteDef:
        return web.post("/v1/traces", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        try:
            stored, duplicate, not_genai = await self.ingest(request)
        except IngestError as exc:
            self.metrics.ingest_answered(exc.status)
            return _error(exc, content_type)
        self.metrics.spans_ingested("stored", stored)
        self.metrics.spans_ingested("duplicate", duplicate)
        self.metrics.spans_ingested("not_genai", not_genai)
        self.metrics.ingest_answered(200)
        reply = ExportTraceServiceResponse()
        if content_type == JSON_TYPE:
            return web.Response(body=json_format.MessageToJson(reply).encode(), content_type=JSON_TYPE)
        return web.Response(body=reply.SerializeToString(), content_type="application/x-protobuf")

    async def ingest(self, request: web.Request) -> tuple[int, int, int]:
        """Store the export's new GenAI spans as events; (stored, duplicates, other spans)."""
        identity = self.authenticate(request)
        if request.content_type not in PROTOBUF_TYPES and request.content_type != JSON_TYPE:
            raise IngestError(
                415,
                f"Content-Type {request.content_type or '(none)'} is not accepted: send OTLP as "
                "application/x-protobuf or application/json",
            )
        key = identity.key_id or "master"
        if self.limiter.exhausted(key):
            raise self.too_many(key, 1)
        body = await self.read_body(request)
        mapped, spans = await self.decode(body, request.content_type, identity)
        wait_s = self.limiter.wait_s(key, spans)
        if wait_s > 0:
            raise self.too_many(key, spans, wait_s)
        repeated = recent_duplicates(mapped.spans, self.recent)
        unknown = [span for span in mapped.spans if span.event.event_id not in repeated]
        try:
            repeated |= await asyncio.to_thread(found_in_store, self.store, unknown)
        except Exception as exc:  # without the store, duplicates of gateway events cannot be told apart
            raise IngestError(503, f"the event store is unavailable ({exc}); the exporter should retry") from exc
        fresh = [span.event for span in mapped.spans if span.event.event_id not in repeated]
        try:
            for event in fresh:
                self.spool.append(event)
        except OSError as exc:
            raise IngestError(503, f"the spool cannot take events ({exc}); retry later") from exc
        return len(fresh), len(mapped.spans) - len(fresh), mapped.not_genai

    def authenticate(self, request: web.Request) -> Identity:
        api_key = api_key_from_headers(request.headers)
        if api_key is None:
            raise IngestError(401, "missing meterline key: send 'Authorization: Bearer <key>'")
        identity = self.authenticator.authenticate(api_key)
        if identity is None:
            raise IngestError(401, "invalid meterline key")
        return identity

    def too_many(self, key: str, spans: int, wait_s: float | None = None) -> IngestError:
        wait = wait_s if wait_s is not None else (1 - self.limiter.buckets[key].tokens) / self.limiter.rate
        return IngestError(
            429,
            f"this key sent more spans than otel.ingest allows ({self.config.spans_per_s:g}/s, bursts of "
            f"{self.config.burst_spans}); retry after {math.ceil(wait)} s",
            retry_after_s=wait,
        )

    async def read_body(self, request: web.Request) -> bytes:
        too_large = IngestError(
            413,
            f"the body is larger than otel.ingest.max_body_mb ({self.config.max_body_mb:g} MB); send smaller batches",
        )
        if request.content_length is not None and request.content_length > self.max_bytes:
            raise too_large
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > self.max_bytes:
                raise too_large
            chunks.append(chunk)
        return b"".join(chunks)

    async def decode(self, body: bytes, content_type: str, identity: Identity) -> tuple[MappedExport, int]:
        """The export's GenAI spans as events, and its span count, from the ingest process."""
        assert self.pool is not None, "TraceReceiver.start() was not awaited"
        try:
            return await asyncio.wrap_future(self.pool.submit(map_in_process, body, content_type, identity))
        except MalformedPayload as exc:
            raise IngestError(400, str(exc)) from exc
        except BrokenProcessPool as exc:  # the ingest process died (killed, out of memory): start another
            await self.stop()
            await self.start()
            raise IngestError(503, "the ingest process stopped and was restarted; retry") from exc


def _error(error: IngestError, content_type: str) -> web.Response:
    status = status_pb2.Status(code=_GRPC_CODES.get(error.status, code_pb2.UNAVAILABLE), message=str(error))
    headers = {}
    if error.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if content_type == JSON_TYPE or content_type not in PROTOBUF_TYPES:
        body = orjson.dumps({"code": status.code, "message": status.message})
        return web.Response(status=error.status, body=body, content_type=JSON_TYPE, headers=headers)
    return web.Response(
        status=error.status, body=status.SerializeToString(), content_type="application/x-protobuf", headers=headers
    )
