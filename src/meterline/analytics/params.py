"""The analytics parameters: parsed and checked once, into frozen values every query builds SQL from.

Every analytics endpoint takes the common parameters (`since`, `until`, `filter[<dim>]`,
`cost_basis`) as a `Window`, and some take dimensions (`group_by`, `by`) or numbers (`limit`,
`bins`). A bad value raises `BadParameter` naming the parameter and what is allowed.

User values never become SQL text: dimension names map through the `DIMENSIONS` allow-list to
column expressions, a `property.<name>` dimension reads `properties[$p]` with the name bound,
and filter values and times are bound parameters of a `Statement`. `Window.where` is the one
place a WHERE clause is built, and it is where the caller's `Scope` is applied.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa

_RELATIVE = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_FILTER = re.compile(r"^filter\[(.+)\]$")
PROPERTY_PREFIX = "property."
DEFAULT_SPAN = timedelta(days=7)
COST_BASES = ("request", "current")
COMMON_PARAMS = ("since", "until", "cost_basis")

DIMENSIONS: dict[str, str] = {
    "user": "user",
    "feature": "feature",
    "team": "team",
    "app": "app",
    "env": "env",
    "prompt_id": "prompt_id",
    "prompt_version": "prompt_version",
    "session_id": "session_id",
    "agent_run_id": "agent_run_id",
    "key_id": "key_id",
    "model": "requested_model",
    "provider": "provider",
    "operation": "operation",
    "error_class": "error_class",
    "cache_status": "cache_status",
}
"""API dimension name -> events column; `property.<name>` is the one dimension not listed."""


class BadParameter(ValueError):
    """A request parameter is malformed or not allowed; `param` names it."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class NotFound(ValueError):
    """The id in the path names nothing the caller may see."""


@dataclass(frozen=True)
class Scope:
    """The slice of data a caller may read; `team=None` is everything."""

    team: str | None = None


class Statement:
    """One SQL statement being built: user values enter it as bound `$pN` parameters, Arrow tables by name."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.tables: dict[str, pa.Table] = {}

    def bind(self, value: object) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"${name}"


@dataclass(frozen=True)
class Dimension:
    """A dimension as the API names it (`feature`, `property.tenant`), and how to read it from events `e`."""

    name: str

    def sql(self, statement: Statement) -> str:
        if self.name.startswith(PROPERTY_PREFIX):
            return f"e.properties[{statement.bind(self.name.removeprefix(PROPERTY_PREFIX))}]"
        return f'e."{DIMENSIONS[self.name]}"'


@dataclass(frozen=True)
class Window:
    """Which events a query reads (`since` inclusive, None = unbounded; `until` exclusive) and how to cost them."""

    since: datetime | None
    until: datetime
    filters: tuple[tuple[Dimension, str], ...] = ()
    cost_basis: str = "request"

    def where(self, statement: Statement, scope: Scope) -> str:
        """The WHERE condition over events `e`: the time range, every filter, and the caller's scope."""
        conditions = [f"e.started_at < {statement.bind(self.until)}"]
        if self.since is not None:
            conditions.append(f"e.started_at >= {statement.bind(self.since)}")
        for dimension, value in self.filters:
            conditions.append(f"{dimension.sql(statement)} = {statement.bind(value)}")
        if scope.team is not None:
            conditions.append(f"e.team = {statement.bind(scope.team)}")
        return " AND ".join(conditions)


@dataclass(frozen=True)
class Params:
    """An endpoint's raw parameters, checked against what it accepts."""

    values: Mapping[str, str]
    accepted: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in self.values:
            if name not in (*COMMON_PARAMS, *self.accepted) and not _FILTER.match(name):
                allowed = ", ".join((*COMMON_PARAMS, "filter[<dim>]", *self.accepted))
                raise BadParameter(name, f"unknown parameter '{name}'; allowed here: {allowed}")

    def window(self, now: datetime, default_span: timedelta | None = DEFAULT_SPAN) -> Window:
        """The common parameters; a missing `since` is `default_span` before `until` (None: unbounded)."""
        until_text = self.values.get("until")
        until = parse_time("until", until_text, now) if until_text else now
        since_text = self.values.get("since")
        if since_text:
            since: datetime | None = parse_time("since", since_text, now)
        else:
            since = None if default_span is None else until - default_span
        if since is not None and since >= until:
            raise BadParameter("since", f"'since' ({since.isoformat()}) must be before 'until' ({until.isoformat()})")
        cost_basis = self.values.get("cost_basis") or "request"
        if cost_basis not in COST_BASES:
            raise BadParameter("cost_basis", f"'cost_basis' must be one of: {', '.join(COST_BASES)}")
        filters = []
        for name, value in self.values.items():
            match = _FILTER.match(name)
            if match:
                filters.append((parse_dimension(name, match.group(1)), value))
        return Window(since, until, tuple(filters), cost_basis)

    def dimensions(self, name: str, default: str = "") -> tuple[Dimension, ...]:
        """A comma-separated list of dimensions, e.g. `group_by=feature,property.tenant`."""
        text = self.values.get(name, default)
        names = [part.strip() for part in text.split(",") if part.strip()]
        if len(set(names)) != len(names):
            raise BadParameter(name, f"'{name}' names a dimension twice")
        return tuple(parse_dimension(name, part) for part in names)

    def dimension(self, name: str, default: str) -> Dimension:
        return parse_dimension(name, self.values.get(name) or default)

    def integer(self, name: str, default: int, lowest: int, highest: int) -> int:
        text = self.values.get(name)
        if not text:
            return default
        if not text.isdigit() or not lowest <= int(text) <= highest:
            raise BadParameter(name, f"'{name}' must be a whole number from {lowest} to {highest}")
        return int(text)

    def number(self, name: str, default: float, lowest: float, highest: float) -> float:
        text = self.values.get(name)
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not lowest <= value <= highest:
            raise BadParameter(name, f"'{name}' must be a number from {lowest:g} to {highest:g}")
        return value

    def choices(self, name: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated subset of `allowed` (all of them when the parameter is not given)."""
        names = tuple(part.strip() for part in self.values.get(name, "").split(",") if part.strip())
        unknown = [part for part in names if part not in allowed]
        if unknown:
            raise BadParameter(name, f"'{name}': unknown value '{unknown[0]}'; allowed: {', '.join(allowed)}")
        return names or allowed

    def choice(self, name: str, allowed: tuple[str, ...]) -> str | None:
        value = self.values.get(name) or None
        if value is not None and value not in allowed:
            raise BadParameter(name, f"'{name}' must be one of: {', '.join(allowed)}")
        return value


def parse_dimension(param: str, name: str) -> Dimension:
    if name in DIMENSIONS or (name.startswith(PROPERTY_PREFIX) and len(name) > len(PROPERTY_PREFIX)):
        return Dimension(name)
    allowed = ", ".join([*DIMENSIONS, f"{PROPERTY_PREFIX}<name>"])
    raise BadParameter(param, f"'{param}': unknown dimension '{name}'; allowed: {allowed}")


def parse_time(param: str, value: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (UTC if no offset) or a span back from now such as `15m`, `24h`, `7d`."""
    match = _RELATIVE.match(value.strip())
    if match:
        amount, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise BadParameter(param, f"'{param}' must be an ISO-8601 time or a span like 15m, 24h, 7d") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
