"""`GET /api/v1/providers/health`: the circuit breaker of every configured provider and model.

Answers `{"breakers_enabled": bool, "data": [...]}`, one row per (provider, model) with its
state (`closed`, `open`, `half_open`), recent failures against the threshold, the window and
cool-down, when it opened, why (`cause`, while not closed) and when it lets a probe through,
and its last failure. Any key that may read data may ask (the master key or a `read:team` key).
Breakers live in each gateway process; under `serve --workers N` this shows worker 0's, which
are every worker's when `breaker.redis_url` shares their openings and closings.
"""

from __future__ import annotations

from aiohttp import web

from meterline.gateway.breaker import BreakerBoard
from meterline.web.api import caller_checked, json_response
from meterline.web.auth import WebAuth

PATH = "/api/v1/providers/health"


class ProvidersApi:
    def __init__(self, breakers: BreakerBoard, auth: WebAuth) -> None:
        self.breakers = breakers
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.health)]

    @caller_checked
    async def health(self, request: web.Request) -> web.Response:
        self.auth.reader(request)
        return json_response(self.breakers.health())
