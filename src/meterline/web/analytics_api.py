"""The analytics endpoints of the JSON API (docs/api.md): spend, top, latency, forecast and the rest.

Every route answers with the body `Analytics.run` returns for the path after /api/v1/, for the
caller's scope. Queries run in a worker thread so the event loop keeps serving the gateway;
a bad parameter is a 400 naming it, an unknown id a 404.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from meterline.analytics.params import BadParameter, NotFound
from meterline.analytics.queries import ENDPOINTS, Analytics
from meterline.web.api import api_error, caller_checked
from meterline.web.auth import WebAuth

PREFIX = "/api/v1/"


class AnalyticsApi:
    def __init__(self, analytics: Analytics, auth: WebAuth) -> None:
        self.analytics = analytics
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PREFIX + pattern, self.answer) for pattern in ENDPOINTS]

    @caller_checked
    async def answer(self, request: web.Request) -> web.Response:
        _, scope = self.auth.reader(request)
        endpoint = request.path.removeprefix(PREFIX)
        try:
            body = await asyncio.to_thread(self.analytics.run, endpoint, dict(request.query), scope)
        except BadParameter as exc:
            return api_error(400, str(exc), exc.param)
        except NotFound as exc:
            return api_error(404, str(exc))
        return web.Response(body=orjson.dumps(body), content_type="application/json")
