"""Forwarding to worker 0: how the other workers of `meterline serve --workers N` answer the API and dashboard.

A DuckDB file admits one process, so only worker 0 opens the store. Every worker shares the
public port and proxies LLM calls itself; a request for anything else (the JSON API, the
dashboard, sign-in) that the kernel hands to another worker is passed to worker 0 on its
internal port (127.0.0.1 only) with its method, path, headers (credentials included: worker 0
authenticates as usual) and body, and worker 0's answer is returned unchanged. While worker 0
is (re)starting, the forwarder retries for a few seconds before answering 503.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)
RETRY_FOR_S = 10.0
RETRY_EVERY_S = 0.2


class PrimaryForwarder:
    def __init__(self, primary_port: int) -> None:
        self.primary_url = f"http://127.0.0.1:{primary_port}"
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # no cookie jar: each caller's cookies (a dashboard session) pass through and none are kept for the next
        self.session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=300), cookie_jar=aiohttp.DummyCookieJar()
        )

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.close()

    def route(self) -> web.RouteDef:
        """A catch-all route; register it after the routes this worker answers itself."""
        return web.route("*", "/{path:.*}", self.forward)

    async def forward(self, request: web.Request) -> web.Response:
        assert self.session is not None, "PrimaryForwarder.start() was not awaited"
        headers = {name: value for name, value in request.headers.items() if name.lower() not in _HOP_BY_HOP}
        body = await request.read()
        deadline = asyncio.get_running_loop().time() + RETRY_FOR_S
        while True:
            try:
                async with self.session.request(
                    request.method, self.primary_url + str(request.rel_url), headers=headers, data=body,
                    allow_redirects=False,
                ) as reply:  # fmt: skip
                    content = await reply.read()
                    returned = CIMultiDict(
                        (name, value) for name, value in reply.headers.items() if name.lower() not in _HOP_BY_HOP
                    )
                    return web.Response(status=reply.status, body=content, headers=returned)
            except aiohttp.ClientConnectorError:  # not listening (yet); the request was not sent
                if asyncio.get_running_loop().time() > deadline:
                    return web.json_response(
                        {"error": {"message": "worker 0, which serves the API and dashboard, is not answering"}},
                        status=503,
                    )
                await asyncio.sleep(RETRY_EVERY_S)
