"""`/api/v1/alerts`: list alerts, evaluate the rules once, silence and acknowledge (master key or admin session).

- `GET /api/v1/alerts?state=firing|resolved&limit=N`: alerts newest first, each with its figures,
  its silence (if one is in force) and its notification deliveries.
- `GET /api/v1/alerts/check?at=TIME`: the rules' findings at `at` (default now), a dry run that
  changes no state and sends nothing (what `meterline alerts check` prints).
- `POST /api/v1/alerts/{id}/silence` with `{"for": "2h", "note": "..."}`: no notifications for the
  alert's key (this alert, and the same condition firing again) until then.
- `POST /api/v1/alerts/{id}/acknowledge` with the same body: records who took the alert and
  silences it for the period (default 24h).
- `DELETE /api/v1/alerts/{id}/silence`: notifications resume.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import datetime, timedelta

import orjson
from aiohttp import web

from meterline.alerts.engine import Detector
from meterline.alerts.state import STATES, AlertNotFound, AlertStore
from meterline.analytics.params import BadParameter, parse_time
from meterline.web.api import api_error, caller_checked, json_response
from meterline.web.auth import WebAuth

PATH = "/api/v1/alerts"
MAX_LIMIT = 1000
MAX_SILENCE = timedelta(days=90)
DEFAULT_SILENCE = "24h"
_SPAN = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_span(text: str) -> timedelta:
    """A silence's length such as `30m`, `2h`, `7d`, `1w` (1 minute to 90 days); ValueError otherwise."""
    match = _SPAN.match(text.strip())
    span = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))}) if match else timedelta(0)
    if not timedelta(minutes=1) <= span <= MAX_SILENCE:
        raise ValueError("'for' must be a span from 1m to 90d, such as 30m, 2h or 7d")
    return span


class AlertsApi:
    def __init__(self, alerts: AlertStore, detector: Detector, auth: WebAuth, clock: Callable[[], datetime]) -> None:
        self.alerts = alerts
        self.detector = detector
        self.auth = auth
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PATH, self.list_alerts),
            web.get(PATH + "/check", self.check),
            web.post(PATH + "/{id:\\d+}/silence", self.silence),
            web.post(PATH + "/{id:\\d+}/acknowledge", self.acknowledge),
            web.delete(PATH + "/{id:\\d+}/silence", self.unsilence),
        ]

    @caller_checked
    async def list_alerts(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        state = request.query.get("state") or None
        if state is not None and state not in STATES:
            return api_error(400, f"'state' must be one of: {', '.join(STATES)}", "state")
        limit_text = request.query.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            return api_error(400, f"'limit' must be a whole number from 1 to {MAX_LIMIT}", "limit")
        rows = await asyncio.to_thread(self.alerts.listing, self.clock(), state, int(limit_text))
        return json_response({"data": rows})

    @caller_checked
    async def check(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        try:
            at = parse_time("at", request.query["at"]) if request.query.get("at") else self.clock()
        except BadParameter as exc:
            return api_error(400, str(exc), exc.param)
        findings = await asyncio.to_thread(self.detector.findings, at)
        return json_response({"at": at.isoformat(), "data": [finding.as_json() for finding in findings]})

    async def _silence(self, request: web.Request, acknowledge: bool) -> web.Response:
        identity = self.auth.admin(request)
        body = await request.read()
        try:
            fields = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as exc:
            return api_error(400, f"request body is not valid JSON: {exc}")
        if not isinstance(fields, dict):
            return api_error(400, 'the body must be a JSON object such as {"for": "2h", "note": "on it"}')
        try:
            span = parse_span(str(fields.get("for") or DEFAULT_SILENCE))
        except ValueError as exc:
            return api_error(400, str(exc), "for")
        now = self.clock()
        note = str(fields.get("note") or "")[:500]
        who = identity.name or identity.key_id
        try:
            alert = await asyncio.to_thread(
                self.alerts.silence, int(request.match_info["id"]), now + span, who, note, acknowledge, now
            )
        except AlertNotFound as exc:
            return api_error(404, str(exc))
        return json_response(alert)

    @caller_checked
    async def silence(self, request: web.Request) -> web.Response:
        return await self._silence(request, acknowledge=False)

    @caller_checked
    async def acknowledge(self, request: web.Request) -> web.Response:
        return await self._silence(request, acknowledge=True)

    @caller_checked
    async def unsilence(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        try:
            alert = await asyncio.to_thread(self.alerts.unsilence, int(request.match_info["id"]))
        except AlertNotFound as exc:
            return api_error(404, str(exc))
        return json_response(alert)
