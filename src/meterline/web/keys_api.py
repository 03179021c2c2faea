"""`/api/v1/keys`: create, list and revoke virtual keys with the master key.

`POST /api/v1/keys` takes a JSON object with the fields of `KeySpec` (`name` required) and
answers 201 with the key's record and, once only, the key itself in `key`. `GET` lists every
key (never the key, only its first characters) with its status; `DELETE /api/v1/keys/{id or
name}` revokes one, effective on the next request.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import msgspec
from aiohttp import web

from meterline.gateway.keys import KeySpec, KeyStore, KeyStoreError
from meterline.web.api import api_error, caller_checked, json_response
from meterline.web.auth import WebAuth

PATH = "/api/v1/keys"


class KeysApi:
    def __init__(self, keys: KeyStore, auth: WebAuth) -> None:
        self.keys = keys
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(PATH, self.create),
            web.get(PATH, self.list_keys),
            web.delete(PATH + "/{key}", self.revoke),
        ]

    @caller_checked
    async def create(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        try:
            spec = msgspec.json.decode(await request.read(), type=KeySpec)
        except msgspec.ValidationError as exc:
            return api_error(400, f"invalid key request: {exc}", _field_of(exc))
        except msgspec.DecodeError as exc:
            return api_error(400, f"request body is not valid JSON: {exc}")
        try:
            key, record = await asyncio.to_thread(self.keys.create, spec)
        except KeyStoreError as exc:
            return api_error(400, str(exc), exc.field)
        return json_response({**record.listing(datetime.now(UTC)), "key": key}, status=201)

    @caller_checked
    async def list_keys(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        now = datetime.now(UTC)
        records = await asyncio.to_thread(self.keys.records)
        return json_response({"data": [record.listing(now) for record in records]})

    @caller_checked
    async def revoke(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        try:
            record = await asyncio.to_thread(self.keys.revoke, request.match_info["key"])
        except KeyStoreError as exc:
            return api_error(404, str(exc))
        return json_response(record.listing(datetime.now(UTC)))


def _field_of(error: msgspec.ValidationError) -> str | None:
    """The field a msgspec error names (`... - at `$.team``, `required field `name``), if any."""
    for marker in ("at `$.", "field `"):
        _, found, rest = str(error).partition(marker)
        if found:
            return rest.split("`", 1)[0].split("[", 1)[0]
    return None
