"""The OpenAI Files and Batch APIs: files uploaded, listed, read and deleted; batches run from them.

Files live in memory: `POST /v1/files` (multipart: `file`, `purpose`, optional
`expires_after[anchor]`/`expires_after[seconds]`), `GET /v1/files` (`purpose`, `limit`,
`after`, `order`), `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`.

`POST /v1/batches` (`input_file_id`, `endpoint`, `completion_window` "24h", `metadata`) answers
with the batch `validating`. Its input file is checked as the real API does: each line a JSON
object with a `custom_id` unique in the file, `method` "POST", `url` equal to the batch's
`endpoint`, and a `body` naming the same `model` as every other line; a bad file fails the
batch (status `failed`, `errors` naming the lines). A good one is `in_progress` until its delay
has passed (`batch_delay_s`, or `x-mock-batch-delay-s` on the create request), then each line is
answered by the route that serves its endpoint, exactly as a direct call would be (the
`x-mock-*` headers of the create request apply to every line), and the batch is `completed`
with an output file of the lines that succeeded and an error file of those that did not, one
JSON line each: `{"id": "batch_req_...", "custom_id", "response": {"status_code",
"request_id", "body"}, "error": null}`. `request_counts` count them and `usage` sums the
successful lines' usage. `POST /v1/batches/{id}/cancel` answers `cancelling`; the batch is
`cancelled` from then on, with no output. `GET /v1/batches` lists batches newest first
(`after`, `limit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from aiohttp import web

from meterline.mock_provider.delivery import JsonAnswer, json_response
from meterline.mock_provider.errors import INVALID_REQUEST, NOT_FOUND, ApiError, header_seconds
from meterline.mock_provider.openai_responses import responses
from meterline.mock_provider.openai_routes import OPENAI, chat_completions, completions, embeddings
from meterline.mock_provider.pipeline import Call, MockState, Route, make_raw_handler
from meterline.mock_provider.reply import new_id

BATCH_ROUTES: dict[str, Route] = {
    "/v1/chat/completions": chat_completions,
    "/v1/responses": responses,
    "/v1/embeddings": embeddings,
    "/v1/completions": completions,
}
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_LIST_LIMIT = 10_000
_Item = TypeVar("_Item")


@dataclass
class StoredFile:
    info: dict[str, Any]
    content: bytes


@dataclass
class BatchRun:
    info: dict[str, Any]
    headers: dict[str, str]
    task: asyncio.Task[None] | None = None


@dataclass
class FilesAndBatches:
    """The files and batches of one mock server."""

    state: MockState
    files: dict[str, StoredFile] = field(default_factory=dict)
    batches: dict[str, BatchRun] = field(default_factory=dict)

    def routes(self) -> list[web.RouteDef]:
        def handler(route: Callable[[web.Request], Any]) -> Any:
            return make_raw_handler(self.state, OPENAI, route)

        return [
            web.post("/v1/files", handler(self.upload)),
            web.get("/v1/files", handler(self.list_files)),
            web.get("/v1/files/{file_id}", handler(self.file_info)),
            web.get("/v1/files/{file_id}/content", handler(self.file_content)),
            web.delete("/v1/files/{file_id}", handler(self.delete_file)),
            web.post("/v1/batches", handler(self.create_batch)),
            web.get("/v1/batches", handler(self.list_batches)),
            web.get("/v1/batches/{batch_id}", handler(self.batch_info)),
            web.post("/v1/batches/{batch_id}/cancel", handler(self.cancel_batch)),
        ]

    async def close(self) -> None:
        tasks = [run.task for run in self.batches.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- files -------------------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.Response:
        if not request.content_type.startswith("multipart/"):
            raise ApiError(INVALID_REQUEST, "Files are uploaded as multipart/form-data with 'file' and 'purpose'.")
        form = await request.post()
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, web.FileField):
            raise ApiError(INVALID_REQUEST, "Missing required parameter: 'file'.", param="file")
        if purpose not in FILE_PURPOSES:
            raise ApiError(
                INVALID_REQUEST,
                f"Invalid value for 'purpose': {purpose!r}; supported values are: {', '.join(FILE_PURPOSES)}.",
                param="purpose",
            )
        expires_after = form.get("expires_after[seconds]")
        stored = self.store_file(upload.file.read(), upload.filename, str(purpose))
        if isinstance(expires_after, str) and expires_after.isdigit():
            stored.info["expires_at"] = stored.info["created_at"] + int(expires_after)
        return json_response(stored.info)

    def store_file(self, content: bytes, filename: str, purpose: str) -> StoredFile:
        info = {
            "id": new_id("file-"),
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        stored = self.files[info["id"]] = StoredFile(info, content)
        return stored

    async def list_files(self, request: web.Request) -> web.Response:
        purpose = request.query.get("purpose")
        listed = [stored.info for stored in self.files.values() if purpose in (None, stored.info["purpose"])]
        if request.query.get("order", "desc") == "desc":
            listed.reverse()
        return json_response(_page(listed, request.query))

    async def file_info(self, request: web.Request) -> web.Response:
        return json_response(self._file(request).info)

    async def file_content(self, request: web.Request) -> web.Response:
        return web.Response(body=self._file(request).content, content_type="application/octet-stream")

    async def delete_file(self, request: web.Request) -> web.Response:
        stored = self._file(request)
        del self.files[stored.info["id"]]
        return json_response({"id": stored.info["id"], "object": "file", "deleted": True})

    def _file(self, request: web.Request) -> StoredFile:
        return _found(self.files, request.match_info["file_id"], "File", "id")

    # ---- batches -----------------------------------------------------------------------------

    async def create_batch(self, request: web.Request) -> web.Response:
        body = await _json_object(request)
        endpoint, window, input_file_id = body.get("endpoint"), body.get("completion_window"), body.get("input_file_id")
        if endpoint not in BATCH_ROUTES:
            raise ApiError(
                INVALID_REQUEST,
                f"Invalid value for 'endpoint': {endpoint!r}; supported values are: {', '.join(BATCH_ROUTES)}.",
                param="endpoint",
            )
        if window != "24h":
            raise ApiError(INVALID_REQUEST, "Invalid value for 'completion_window': only '24h' is supported.")
        stored = self.files.get(input_file_id) if isinstance(input_file_id, str) else None
        if stored is None:
            raise ApiError(NOT_FOUND, f"No such File object: {input_file_id}", param="input_file_id")
        if stored.info["purpose"] != "batch":
            raise ApiError(
                INVALID_REQUEST, f"File {input_file_id} was not uploaded with purpose 'batch'.", param="input_file_id"
            )
        now = int(time.time())
        info: dict[str, Any] = {
            "id": new_id("batch_"),
            "object": "batch",
            "endpoint": endpoint,
            "model": None,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": "24h",
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 24 * 3600,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "usage": None,
            "metadata": body.get("metadata"),
        }
        answer = dict(info)
        headers = {name.lower(): value for name, value in request.headers.items() if name.lower().startswith("x-mock-")}
        run = self.batches[info["id"]] = BatchRun(info, headers)
        lines, errors = _requests(stored.content, endpoint)
        if errors:
            info.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
        else:
            info.update(status="in_progress", in_progress_at=now, model=lines[0][1]["body"]["model"])
            info["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
            delay = header_seconds(headers, "x-mock-batch-delay-s", self.state.settings.batch_delay_s)
            run.task = asyncio.get_running_loop().create_task(self._run(run, lines, delay))
        return json_response(answer)

    async def _run(self, run: BatchRun, lines: list[tuple[int, dict[str, Any]]], delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        endpoint = run.info["endpoint"]
        succeeded: list[bytes] = []
        failed: list[bytes] = []
        usage = _UsageSum()
        for _, line in lines:
            status, body = _answer(BATCH_ROUTES[endpoint], run.headers, line["body"], self.state)
            result = {
                "id": new_id("batch_req_"),
                "custom_id": line["custom_id"],
                "response": {"status_code": status, "request_id": new_id("req_"), "body": body},
                "error": None,
            }
            (succeeded if status < 400 else failed).append(orjson.dumps(result) + b"\n")
            if status < 400:
                usage.add(body.get("usage"))
        batch_id = run.info["id"]
        run.info.update(
            status="completed",
            finalizing_at=int(time.time()),
            completed_at=int(time.time()),
            request_counts={"total": len(lines), "completed": len(succeeded), "failed": len(failed)},
            usage=usage.as_batch_usage(),
        )
        if succeeded:
            output = self.store_file(b"".join(succeeded), f"{batch_id}_output.jsonl", "batch_output")
            run.info["output_file_id"] = output.info["id"]
        if failed:
            errors = self.store_file(b"".join(failed), f"{batch_id}_error.jsonl", "batch_output")
            run.info["error_file_id"] = errors.info["id"]

    async def list_batches(self, request: web.Request) -> web.Response:
        listed = [run.info for run in reversed(self.batches.values())]
        return json_response(_page(listed, request.query))

    async def batch_info(self, request: web.Request) -> web.Response:
        return json_response(self._batch(request).info)

    async def cancel_batch(self, request: web.Request) -> web.Response:
        run = self._batch(request)
        if run.info["status"] not in ("validating", "in_progress"):
            raise ApiError(
                INVALID_REQUEST,
                f"Cannot cancel a batch with status '{run.info['status']}'.",
                code="batch_not_cancellable",
            )
        if run.task is not None:
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        now = int(time.time())
        run.info.update(status="cancelling", cancelling_at=now)
        answer = dict(run.info)
        run.info.update(status="cancelled", cancelled_at=now)
        return json_response(answer)

    def _batch(self, request: web.Request) -> BatchRun:
        return _found(self.batches, request.match_info["batch_id"], "Batch", "batch_id")


def _found(items: Mapping[str, _Item], item_id: str, kind: str, param: str) -> _Item:
    """The item with that id, else the API's 404 for it."""
    item = items.get(item_id)
    if item is None:
        raise ApiError(NOT_FOUND, f"No such {kind} object: {item_id}", param=param)
    return item


class _UsageSum:
    """The batch's `usage`: the successful lines' usage summed (chat and Responses field names alike)."""

    def __init__(self) -> None:
        self.input = self.cached = self.output = self.reasoning = 0

    def add(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        details = usage.get("input_tokens_details") or usage.get("prompt_tokens_details") or {}
        output_details = usage.get("output_tokens_details") or usage.get("completion_tokens_details") or {}
        self.input += usage.get("input_tokens", usage.get("prompt_tokens", 0))
        self.output += usage.get("output_tokens", usage.get("completion_tokens", 0))
        self.cached += details.get("cached_tokens", 0)
        self.reasoning += output_details.get("reasoning_tokens", 0)

    def as_batch_usage(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input,
            "input_tokens_details": {"cached_tokens": self.cached},
            "output_tokens": self.output,
            "output_tokens_details": {"reasoning_tokens": self.reasoning},
            "total_tokens": self.input + self.output,
        }


def _requests(content: bytes, endpoint: str) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """The input file's requests as (line number, request), and the batch errors it has (empty when valid)."""
    lines: list[tuple[int, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    models: set[str] = set()

    def error(number: int, code: str, message: str, param: str | None = None) -> None:
        errors.append({"code": code, "line": number, "message": message, "param": param})

    for number, text in enumerate(content.decode("utf-8", errors="replace").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            line = orjson.loads(text)
        except orjson.JSONDecodeError:
            error(number, "invalid_json_line", "This line is not parseable as valid JSON.")
            continue
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
            error(number, "missing_required_parameter", "Missing required parameter: 'custom_id'.", "custom_id")
        elif line["custom_id"] in seen:
            error(number, "duplicate_custom_id", f"The custom_id '{line['custom_id']}' is used more than once.")
        elif line.get("method") != "POST":
            error(number, "invalid_method", "Only the POST method is supported.", "method")
        elif line.get("url") != endpoint:
            error(number, "mismatched_endpoint", f"The url must be the batch's endpoint '{endpoint}'.", "url")
        elif not isinstance(line.get("body"), dict) or not isinstance(line["body"].get("model"), str):
            error(number, "missing_required_parameter", "Missing required parameter: 'body.model'.", "body.model")
        else:
            seen.add(line["custom_id"])
            models.add(line["body"]["model"])
            lines.append((number, line))
    if len(models) > 1:
        error(0, "mismatched_model", f"The file names more than one model ({', '.join(sorted(models))}).", "body.model")
    if not lines and not errors:
        error(0, "empty_file", "The input file contains no requests.")
    return lines, errors


def _answer(route: Route, headers: Mapping[str, str], body: dict[str, Any], state: MockState) -> tuple[int, Any]:
    """The status and JSON body a direct call with `body` would get (streaming is refused in a batch)."""
    try:
        if body.get("stream"):
            raise ApiError(INVALID_REQUEST, "Streaming is not supported in batches.", param="stream")
        answer = route(Call(headers, body, state.settings))
    except ApiError as error:
        response = OPENAI.render_error(error)
        assert isinstance(response.body, bytes)
        return response.status, orjson.loads(response.body)
    assert isinstance(answer, JsonAnswer)
    return 200, answer.body


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise ApiError(INVALID_REQUEST, f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise ApiError(INVALID_REQUEST, "The request body must be a JSON object.")
    return body


def _page(items: list[dict[str, Any]], query: Mapping[str, str]) -> dict[str, Any]:
    """A cursor page of `items` (already in list order): those after `after`, at most `limit`."""
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit_text = query.get("limit", "20")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIST_LIMIT:
        raise ApiError(INVALID_REQUEST, f"limit must be an integer from 1 to {MAX_LIST_LIMIT}.", param="limit")
    page = items[: int(limit_text)]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > len(page),
    }
