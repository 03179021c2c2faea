"""`GET /api/v1/notices?limit=N`: the latest notices (budget thresholds, refusals, agent guardrails), newest first.

Admin only. Each is `{"id", "at", "kind", "subject", "message", "details"}`; `limit` is 1-1000
(default 100).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from meterline.alerts.notices import NoticeBoard
from meterline.web.api import api_error, caller_checked, json_response
from meterline.web.auth import WebAuth

MAX_LIMIT = 1000


class NoticesApi:
    def __init__(self, notices: NoticeBoard, auth: WebAuth) -> None:
        self.notices = notices
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/api/v1/notices", self.list_notices)]

    @caller_checked
    async def list_notices(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        limit_text = request.query.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            return api_error(400, f"'limit' must be a whole number from 1 to {MAX_LIMIT}", "limit")
        return json_response({"data": await asyncio.to_thread(self.notices.recent, int(limit_text))})
