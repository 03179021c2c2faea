"""Budgets set at run time (`meterline budgets set`, `POST /api/v1/budgets`), kept in the control database.

Budgets in the config file are read-only here: a run-time budget may not take a config budget's
name, and deleting one is refused with a pointer to the config. Every gateway process sees a
change on its next request (`changed`), whether it came from the CLI, the API or another worker.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from meterline.budgets.rules import PeriodClock, budget_problem, budget_row, period_spend
from meterline.config import BudgetConfig, Config
from meterline.providers.base import ProviderFamily
from meterline.store.control import ControlDB
from meterline.store.duckdb import DuckDBStore

_TABLE = """CREATE TABLE IF NOT EXISTS budgets (
    name TEXT PRIMARY KEY,
    definition TEXT NOT NULL,
    updated_at TEXT NOT NULL
)"""


class BudgetError(ValueError):
    """A budget cannot be set or deleted; `status` is the HTTP status that says why, `field` the bad field."""

    def __init__(self, message: str, status: int = 400, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def parse_budget(definition: object) -> BudgetConfig:
    """A budget from its JSON form; `BudgetError` naming the first bad field."""
    try:
        return BudgetConfig.model_validate(definition)
    except ValidationError as exc:  # raised outside, so the error does not keep pydantic's frames alive
        problem = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    field = ".".join(str(part) for part in problem["loc"]) or None
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        message = "unknown field"
    raise BudgetError(f"{field}: {message}" if field else message, field=field)


class BudgetStore:
    def __init__(self, control: ControlDB, config: Config, providers: Mapping[str, ProviderFamily]) -> None:
        self.control = control
        self.config = config
        self.providers = providers
        self._config_names = {budget.name for budget in config.budgets.budgets}
        control.ensure(_TABLE)

    def list(self) -> list[tuple[BudgetConfig, str]]:
        """Every budget with where it comes from: `config` (the file; its names win) or `api` (set at run time)."""
        rows = self.control.rows("SELECT definition FROM budgets ORDER BY name")
        stored = [BudgetConfig.model_validate_json(row["definition"]) for row in rows]
        return [(budget, "config") for budget in self.config.budgets.budgets] + [
            (budget, "api") for budget in stored if budget.name not in self._config_names
        ]

    def put(self, budget: BudgetConfig) -> None:
        """Create or replace the budget of this name."""
        if budget.name in self._config_names:
            raise BudgetError(
                f"budget '{budget.name}' is defined in the config file; change it there, or pick another name",
                status=409,
                field="name",
            )
        problem = budget_problem(budget, self.config, self.providers)
        if problem is not None:
            raise BudgetError(problem, field=problem.partition(":")[0])
        with self.control.transaction() as connection:
            connection.execute(
                "INSERT INTO budgets (name, definition, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET definition = excluded.definition, updated_at = excluded.updated_at",
                (budget.name, budget.model_dump_json(), datetime.now(UTC).isoformat()),
            )

    def delete(self, name: str) -> None:
        if name in self._config_names:
            raise BudgetError(f"budget '{name}' is defined in the config file; remove it there", status=409)
        with self.control.transaction() as connection:
            deleted = connection.execute("DELETE FROM budgets WHERE name = ?", (name,)).rowcount
        if not deleted:
            raise BudgetError(f"there is no budget named '{name}' set through the CLI or API", status=404)

    def changed(self) -> bool:
        return self.control.changed()


def offline_listing(budget_store: BudgetStore) -> list[dict[str, Any]]:
    """The rows of `GET /api/v1/budgets` without a server: spend from the store file (read-only), if there is one."""
    config = budget_store.config
    clock = PeriodClock(config.budgets.timezone)
    now = time.time()
    sourced = budget_store.list()
    spend = {budget.name: (0.0, 0) for budget, _ in sourced}
    if config.store.path.exists():
        store = DuckDBStore(config.store, read_only=True)
        store.open()
        try:
            for budget, _ in sourced:
                since = datetime.fromtimestamp(clock.bounds(budget.period, now)[0], UTC)
                usd, tokens, _requests = period_spend(store, budget, since)
                spend[budget.name] = (usd, tokens)
        finally:
            store.close()
    return [budget_row(budget, source, clock, now, *spend[budget.name]) for budget, source in sourced]
