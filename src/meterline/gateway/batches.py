"""The OpenAI Files and Batch APIs through the gateway, and the metering of batch results.

Routes (OpenAI's shapes, authenticated with meterline keys, forwarded with the provider's key):

- `POST /v1/files` takes batch input files (`purpose=batch`) only. The file is checked line by
  line before it goes upstream, as a direct call would be: each line names a configured model
  this key may call, served by an OpenAI-format provider, the same model and endpoint on every
  line, and a body valid for that endpoint; the model is rewritten to its upstream name. A bad
  line gets a 400 naming it. The file goes to the provider that serves its model.
- `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}` for the input
  files a key uploaded and the result files of its batches; `GET /v1/files` lists those.
- `POST /v1/batches` over an input file the key uploaded, attributed like any call (headers
  and the key's defaults; the attribution is remembered for the batch's results); refused
  (402 or 429, as a call would be) while a `throttle` or `block` budget it falls under is spent;
  `GET /v1/batches/{id}`, `POST /v1/batches/{id}/cancel`, and `GET /v1/batches` (the key's).

Another key's files and batches answer 404, as unknown ones do; the master key sees all.

When a batch is seen finished — a client retrieves it, or the poller (in the process that owns
the store, every `batches.poll_interval_s`) finds it so — its output and error files are
downloaded in the background and each result becomes a usage event (`batch_events`), appended
to the spool, once: the registry's lease keeps two workers from metering the same batch at
once, and deterministic event ids let the store drop what a crash made it meter twice.
Their cost and tokens are then added to the budgets they fall under (`SpendGuard.charge`), so the
next call of an overspent team is refused, and they count in `/metrics` and the exported GenAI
metrics (not as spans: the gateway did not time them).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from meterline.budgets.guard import Refused, spender_of
from meterline.config import BatchesConfig
from meterline.gateway.attribution import Attribution
from meterline.gateway.auth import Identity
from meterline.gateway.batch_events import ENDPOINT_OPERATIONS, result_events
from meterline.gateway.batch_registry import TERMINAL_STATUSES, BatchFile, BatchRecord, BatchRegistry
from meterline.gateway.metering import CallContext
from meterline.gateway.proxy import OPENAI, ClientError, Gateway, forward_headers, returned_headers
from meterline.gateway.retries import retry_after_s
from meterline.providers.base import ApiError, ProviderFamily, RequestInvalid

log = logging.getLogger("meterline.batches")

METERING_LEASE_S = 600.0
"""How long one process may take to meter a batch before another may try."""

_ATTRIBUTION_FIELDS = (
    "feature",
    "env",
    "prompt_id",
    "prompt_version",
    "session_id",
    "agent_run_id",
    "agent_step",
    "trace_id",
    "parent_span_id",
    "properties",
)

Handler = Callable[[web.Request, Identity], Awaitable[web.StreamResponse]]


class BatchGateway:
    def __init__(self, gateway: Gateway, registry: BatchRegistry, settings: BatchesConfig, poll: bool) -> None:
        self.gateway = gateway
        self.registry = registry
        self.settings = settings
        self.poll = poll
        self._metering: dict[str, asyncio.Task[None]] = {}
        self._poller: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        def handler(route: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            async def handle(request: web.Request) -> web.StreamResponse:
                try:
                    return await route(request, self.gateway.authenticate(request, OPENAI))
                except ClientError as exc:
                    return self.gateway.error_response(OPENAI, exc.error)

            return handle

        return [
            web.post("/v1/files", handler(self.upload_file)),
            web.get("/v1/files", handler(self.list_files)),
            web.get("/v1/files/{file_id}", handler(self.file_request)),
            web.get("/v1/files/{file_id}/content", handler(self.file_request)),
            web.delete("/v1/files/{file_id}", handler(self.delete_file)),
            web.post("/v1/batches", handler(self.create_batch)),
            web.get("/v1/batches", handler(self.list_batches)),
            web.get("/v1/batches/{batch_id}", handler(self.batch_request)),
            web.post("/v1/batches/{batch_id}/cancel", handler(self.batch_request)),
        ]

    async def start(self) -> None:
        if self.poll:
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever())

    async def stop(self) -> None:
        tasks = [*self._metering.values(), *([self._poller] if self._poller else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- files -------------------------------------------------------------------------------

    async def upload_file(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        form = await self._form(request)
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch":
            raise ClientError(
                ApiError(
                    400,
                    f"this gateway takes files for the Batch API only (purpose 'batch'), not {purpose!r}",
                    "unsupported_purpose",
                    param="purpose",
                )
            )
        if not isinstance(upload, web.FileField):
            raise ClientError(ApiError(400, "missing the file: send it as the multipart field 'file'", "invalid_file"))
        checked = self._checked_file(upload.file.read(), identity)
        data = aiohttp.FormData()
        for name, value in form.items():
            if name != "file" and isinstance(value, str):
                data.add_field(name, value)
        data.add_field("file", checked.content, filename=upload.filename, content_type=upload.content_type)
        status, body, headers = await self._upstream(request, checked.provider, "POST", "/files", data=data)
        file_id = _json_field(body, "id") if status < 300 else None
        if file_id is not None:
            self.registry.add_file(
                BatchFile(
                    file_id, checked.provider.name, identity.key_id, checked.model, checked.upstream, checked.endpoint
                )
            )
        return web.Response(status=status, body=body, headers=headers)

    async def list_files(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        return await self._owned_list(request, identity, "/files", self._owns_files)

    async def file_request(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        provider = self._file_provider(file_id, identity)
        path = request.path.removeprefix("/v1")
        status, body, headers = await self._upstream(request, provider, "GET", path)
        return web.Response(status=status, body=body, headers=headers)

    async def delete_file(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        file_id = request.match_info["file_id"]
        provider = self._file_provider(file_id, identity)
        status, body, headers = await self._upstream(request, provider, "DELETE", f"/files/{file_id}")
        if status < 300:
            self.registry.forget_file(file_id)
        return web.Response(status=status, body=body, headers=headers)

    # ---- batches -----------------------------------------------------------------------------

    async def create_batch(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        raw, body = await self.gateway.read_body(request)
        input_file_id = body.get("input_file_id")
        file = self.registry.file(input_file_id) if isinstance(input_file_id, str) else None
        if file is None or not _may_use(identity, file.key_id):
            raise ClientError(
                ApiError(
                    404,
                    f"no batch input file {input_file_id!r} was uploaded with this key: upload it through the gateway "
                    "(POST /v1/files with purpose 'batch') first",
                    "file_not_found",
                    param="input_file_id",
                )
            )
        if body.get("endpoint") != file.endpoint:
            raise ClientError(
                ApiError(
                    400,
                    f"the input file's requests are for {file.endpoint}, but the batch is for {body.get('endpoint')!r}",
                    "mismatched_endpoint",
                    param="endpoint",
                )
            )
        call = CallContext(
            operation=ENDPOINT_OPERATIONS[file.endpoint],
            dialect=OPENAI,
            body=body,
            identity=identity,
            attribution=self.gateway.attribute(request.headers, identity, None),
            provider=file.provider,
            requested_model=file.model,
        )
        try:  # its cost is known only when its results are metered: refused only once a budget is spent
            await self.gateway.guard.refuse_if_spent(spender_of(call), call.operation, file.model)
        except Refused as exc:
            refused = self.gateway.failed(call, exc.error, "budget_blocked", retry_after_s(exc.error.headers))
            self.gateway.recorder.finish(call)
            return refused.response
        provider = self.gateway.providers[file.provider]
        status, answer, headers = await self._upstream(request, provider, "POST", "/batches", body=raw)
        batch = _json_object(answer) if status < 300 else None
        if batch is not None and isinstance(batch.get("id"), str):
            self.registry.add_batch(
                BatchRecord(
                    batch_id=batch["id"],
                    provider=file.provider,
                    key_id=identity.key_id,
                    model=file.model,
                    upstream_model=file.upstream_model,
                    endpoint=file.endpoint,
                    attribution=_event_attribution(call),
                    status=str(batch.get("status") or "validating"),
                    output_file_id=None,
                    error_file_id=None,
                    metered=False,
                )
            )
        return web.Response(status=status, body=answer, headers=headers)

    async def list_batches(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        return await self._owned_list(request, identity, "/batches", self._owns_batches)

    async def batch_request(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        """Retrieve or cancel one of the key's batches; a finished batch is metered."""
        batch_id = request.match_info["batch_id"]
        record = self.registry.batch(batch_id)
        if record is None or not _may_use(identity, record.key_id):
            raise ClientError(ApiError(404, f"No such Batch object: {batch_id}", "batch_not_found", param="batch_id"))
        provider = self.gateway.providers[record.provider]
        status, body, headers = await self._upstream(
            request, provider, request.method, request.path.removeprefix("/v1")
        )
        batch = _json_object(body) if status < 300 else None
        if batch is not None:
            self.noticed(record, batch)
        return web.Response(status=status, body=body, headers=headers)

    # ---- metering ----------------------------------------------------------------------------

    def noticed(self, record: BatchRecord, batch: dict[str, Any]) -> None:
        """Remember what the provider says of a batch; meter its results once it is finished."""
        status = str(batch.get("status") or record.status)
        output_file_id, error_file_id = _text(batch.get("output_file_id")), _text(batch.get("error_file_id"))
        if (status, output_file_id, error_file_id) != (record.status, record.output_file_id, record.error_file_id):
            self.registry.observe(record.batch_id, status, output_file_id, error_file_id)
        if status in TERMINAL_STATUSES and not record.metered and record.batch_id not in self._metering:
            task = asyncio.get_running_loop().create_task(self.meter(record.batch_id, batch))
            self._metering[record.batch_id] = task
            task.add_done_callback(lambda _: self._metering.pop(record.batch_id, None))

    async def meter(self, batch_id: str, batch: dict[str, Any]) -> None:
        """Turn a finished batch's results into events in the spool, unless another process is at it or did it."""
        registry = self.registry
        if not registry.claim(batch_id, METERING_LEASE_S):
            return
        try:
            record = registry.batch(batch_id)
            assert record is not None, "claimed batches are registered"
            provider = self.gateway.providers[record.provider]
            lines: list[bytes] = []
            for file_id in (record.output_file_id, record.error_file_id):
                if file_id is not None:
                    lines.extend((await self._fetch(provider, f"/files/{file_id}/content")).splitlines())
            events, unreadable = await asyncio.to_thread(
                result_events, record, batch, lines, provider, self.gateway.recorder.price_table
            )
            self.gateway.recorder.record_results(events)
            registry.metered(batch_id, len(events))
            log.info("batch %s (%s): %d result(s) metered", batch_id, record.status, len(events))
            if unreadable:
                log.warning("batch %s: %d result line(s) could not be read and were not metered", batch_id, unreadable)
        except Exception as exc:  # the provider or the spool failed: a later look tries again
            registry.release(batch_id)
            if isinstance(exc, aiohttp.ClientError | TimeoutError | ProviderAnswered):
                log.warning("batch %s: results not metered yet: %s", batch_id, exc)
            else:
                log.exception("batch %s: metering its results failed", batch_id)
        else:
            await self.gateway.guard.charge(events)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll_once()
            except Exception:
                log.exception("checking unfinished batches failed; trying again in %gs", self.settings.poll_interval_s)

    async def poll_once(self) -> None:
        """Ask the provider about every batch not metered yet, and meter those that finished."""
        for record in await asyncio.to_thread(self.registry.unmetered):
            provider = self.gateway.providers.get(record.provider)
            if provider is None:  # the provider was removed from the config
                continue
            try:
                batch = _json_object(await self._fetch(provider, f"/batches/{record.batch_id}"))
            except (aiohttp.ClientError, TimeoutError, ProviderAnswered) as exc:
                log.warning("batch %s: cannot ask %s about it: %s", record.batch_id, record.provider, exc)
                continue
            if batch is not None:
                self.noticed(record, batch)
        await asyncio.gather(*self._metering.values(), return_exceptions=True)

    # ---- upstream ----------------------------------------------------------------------------

    async def _upstream(
        self,
        request: web.Request,
        provider: ProviderFamily,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        data: aiohttp.FormData | None = None,
        params: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes, dict[str, str]]:
        """Send the client's request on to `provider`; its status, body and the headers to return."""
        headers = {**forward_headers(request.headers), **provider.config.headers, **provider.auth_headers()}
        if body is not None:
            headers["content-type"] = "application/json"
        assert self.gateway.session is not None, "Gateway.start() was not awaited"
        try:
            async with asyncio.timeout(provider.config.timeout.total_s):
                async with self.gateway.session.request(
                    method,
                    provider.config.base_url + path,
                    data=body if data is None else data,
                    headers=headers,
                    params=params,
                ) as upstream:
                    answer = await upstream.read()
                    return upstream.status, answer, returned_headers(upstream.headers)
        except TimeoutError as exc:
            raise ClientError(
                ApiError(504, f"provider '{provider.name}' did not answer in time", "upstream_timeout")
            ) from exc
        except aiohttp.ClientError as exc:
            raise ClientError(
                ApiError(502, f"provider '{provider.name}' could not be reached: {exc}", "upstream_unreachable")
            ) from exc

    async def _fetch(self, provider: ProviderFamily, path: str) -> bytes:
        """What the gateway itself reads from a provider for metering (a batch, a result file's content)."""
        headers = {**provider.config.headers, **provider.auth_headers()}
        assert self.gateway.session is not None, "Gateway.start() was not awaited"
        async with asyncio.timeout(provider.config.timeout.total_s):
            async with self.gateway.session.get(provider.config.base_url + path, headers=headers) as upstream:
                content = await upstream.read()
                if upstream.status >= 400:
                    raise ProviderAnswered(f"{provider.name} answered HTTP {upstream.status} for {path}")
                return content

    # ---- checks ------------------------------------------------------------------------------

    async def _form(self, request: web.Request) -> Mapping[str, Any]:
        if not request.content_type.startswith("multipart/"):
            raise ClientError(
                ApiError(400, "upload the file as multipart/form-data with fields 'file' and 'purpose'", "invalid_file")
            )
        try:
            return await request.post()
        except web.HTTPRequestEntityTooLarge as exc:
            limit_mb = self.gateway.config.server.max_body_mb
            raise ClientError(
                ApiError(413, f"the file is larger than the gateway's limit of {limit_mb:g} MB", "body_too_large")
            ) from exc

    def _checked_file(self, content: bytes, identity: Identity) -> CheckedFile:
        """Check every request of a batch input file; the content as it goes upstream (upstream model names)."""
        checked: CheckedFile | None = None
        out: list[bytes] = []
        for number, raw in enumerate(content.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise _line_error(number, "not valid JSON") from None
            if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
                raise _line_error(number, "a request needs a string 'custom_id'")
            url, body = line.get("url"), line.get("body")
            if line.get("method") != "POST" or url not in ENDPOINT_OPERATIONS:
                raise _line_error(
                    number,
                    f"a request must POST to one of {', '.join(ENDPOINT_OPERATIONS)}, not {line.get('method')} {url}",
                )
            if not isinstance(body, dict) or not isinstance(body.get("model"), str):
                raise _line_error(number, "a request needs a 'body' object with a 'model'")
            if body.get("stream") is True:
                raise _line_error(number, "the request asks for a stream, which a batch cannot answer")
            if checked is None:
                checked = self._resolved(number, url, body, identity)
            elif (url, body["model"]) != (checked.endpoint, checked.model):
                raise _line_error(
                    number,
                    f"the request is for {body['model']} at {url}, but the file's first one is for {checked.model} "
                    f"at {checked.endpoint}; a batch file has one model and one endpoint",
                )
            try:
                OPENAI.validate(ENDPOINT_OPERATIONS[url], body)
            except RequestInvalid as exc:
                raise _line_error(number, str(exc)) from None
            if checked.upstream != checked.model:
                body["model"] = checked.upstream
                raw = orjson.dumps(line)
            out.append(raw)
        if checked is None:
            raise ClientError(ApiError(400, "the batch file holds no requests", "invalid_batch_file", param="file"))
        checked.content = b"\n".join(out) + b"\n"
        return checked

    def _resolved(self, number: int, url: str, body: dict[str, Any], identity: Identity) -> CheckedFile:
        """The provider and upstream model of a file's model, checked as a direct call's would be."""
        call = CallContext(
            operation=ENDPOINT_OPERATIONS[url], dialect=OPENAI, body=body, identity=identity, attribution=Attribution()
        )
        try:
            provider = self.gateway.resolve(call, body["model"])
        except ClientError as exc:
            raise _line_error(number, exc.error.message) from None
        return CheckedFile(provider, url, body["model"], call.upstream_model)

    # ---- ownership ---------------------------------------------------------------------------

    def _file_provider(self, file_id: str, identity: Identity) -> ProviderFamily:
        owner = self.registry.file_owner(file_id)
        if owner is None or not _may_use(identity, owner[0]) or owner[1] not in self.gateway.providers:
            raise ClientError(ApiError(404, f"No such File object: {file_id}", "file_not_found", param="id"))
        return self.gateway.providers[owner[1]]

    def _owns_files(self, identity: Identity, ids: list[str]) -> set[str]:
        return {
            file_id
            for file_id in ids
            if (owner := self.registry.file_owner(file_id)) is not None and _may_use(identity, owner[0])
        }

    def _owns_batches(self, identity: Identity, ids: list[str]) -> set[str]:
        return self.registry.owned_batch_ids(ids, None if identity.is_admin else identity.key_id)

    async def _owned_list(
        self, request: web.Request, identity: Identity, path: str, owned: Callable[[Identity, list[str]], set[str]]
    ) -> web.StreamResponse:
        """The provider's list page with only the caller's items (the cursor fields keep paging the provider's list).

        The list comes from the provider of the key's latest batch file; a key without one has none.
        """
        provider_name = self.registry.latest_provider(None if identity.is_admin else identity.key_id)
        provider = None if provider_name is None else self.gateway.providers.get(provider_name)
        if provider is None:
            return web.json_response(
                {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
            )
        status, body, headers = await self._upstream(request, provider, "GET", path, params=request.query)
        page = _json_object(body) if status < 300 else None
        if page is None or not isinstance(page.get("data"), list):
            return web.Response(status=status, body=body, headers=headers)
        items = [item for item in page["data"] if isinstance(item, dict) and isinstance(item.get("id"), str)]
        mine = owned(identity, [item["id"] for item in items])
        page["data"] = [item for item in items if item["id"] in mine]
        headers = {name: value for name, value in headers.items() if name.lower() != "content-type"}
        return web.json_response(page, status=status, headers=headers, dumps=lambda value: orjson.dumps(value).decode())


class ProviderAnswered(Exception):
    """The provider refused a request the gateway made for metering (a missing file, an expired batch)."""


@dataclass
class CheckedFile:
    """A batch input file that passed the checks: where it goes, its endpoint and model, its content to send."""

    provider: ProviderFamily
    endpoint: str
    model: str
    upstream: str
    content: bytes = b""


def _event_attribution(call: CallContext) -> dict[str, Any]:
    """The event fields a batch's results take from the call that created it."""
    attribution = {name: getattr(call.attribution, name) for name in _ATTRIBUTION_FIELDS}
    return {"team": call.team, "app": call.app, "user": call.user, **attribution}


def _may_use(identity: Identity, owner_key_id: str) -> bool:
    return identity.is_admin or identity.key_id == owner_key_id


def _line_error(number: int, problem: str) -> ClientError:
    return ClientError(ApiError(400, f"batch file line {number}: {problem}", "invalid_batch_file", param="file"))


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _json_field(body: bytes, name: str) -> str | None:
    value = (_json_object(body) or {}).get(name)
    return value if isinstance(value, str) else None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
