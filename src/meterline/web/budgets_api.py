"""`/api/v1/budgets`: list budgets with their current spend, and set or delete run-time budgets (master key).

`GET` lists every budget, from the config file (`source: config`) and set at run time
(`source: api`), with its current period's start and end, spend and percent of the limit.
`POST` takes one budget as JSON (the fields of a `budgets.budgets` entry in the config) and
creates or replaces it, answering 201 with its listing; a bad field is a 400 naming it, a
config budget's name a 409. `DELETE /api/v1/budgets/{name}` removes a run-time budget. Changes
apply from the next request on, in every gateway process.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import web

from meterline.budgets.counters import CountersUnavailable
from meterline.budgets.guard import SpendGuard
from meterline.budgets.store import BudgetError, parse_budget
from meterline.web.api import api_error, caller_checked, json_response
from meterline.web.auth import WebAuth

PATH = "/api/v1/budgets"


class BudgetsApi:
    def __init__(self, guard: SpendGuard, auth: WebAuth) -> None:
        self.guard = guard
        self.auth = auth

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PATH, self.list_budgets),
            web.post(PATH, self.set_budget),
            web.delete(PATH + "/{name}", self.delete_budget),
        ]

    @caller_checked
    async def list_budgets(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        try:
            return json_response({"data": await self.guard.listing()})
        except CountersUnavailable as exc:
            return api_error(503, f"the budget counters do not answer: {exc}")

    @caller_checked
    async def set_budget(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        try:
            definition = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return api_error(400, f"request body is not valid JSON: {exc}")
        try:
            budget = parse_budget(definition)
            await asyncio.to_thread(self.guard.budget_store.put, budget)
        except BudgetError as exc:
            return api_error(exc.status, str(exc), exc.field)
        listing = await self.guard.listing()
        return json_response(next(row for row in listing if row["name"] == budget.name), status=201)

    @caller_checked
    async def delete_budget(self, request: web.Request) -> web.Response:
        self.auth.admin(request)
        name = request.match_info["name"]
        try:
            await asyncio.to_thread(self.guard.budget_store.delete, name)
        except BudgetError as exc:
            return api_error(exc.status, str(exc))
        return json_response({"deleted": name})
