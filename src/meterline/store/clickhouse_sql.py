"""The one place the SQL dialects differ: DuckDB statements of the query layer, rewritten for ClickHouse.

The analytics (`meterline.analytics`) write their SELECTs once, in DuckDB's dialect, with
`$name` parameters. The ClickHouse store hands each statement to `to_clickhouse`, which
transpiles it with sqlglot and then applies the overrides where a faithful translation needs
more than syntax (each is checked against DuckDB's answer by tests/test_store_clickhouse.py):

- `epoch_us(t)` -> `toUnixTimestamp64Micro(t)`, and `a // b` -> `intDiv(a, b)` (sqlglot would
  divide in floating point and cast back);
- `quantile_cont(x, [levels])`, `quantile_cont(x, level)` and `median(x)` -> ClickHouse's
  `quantile(s)ExactInclusive`, the same linear interpolation (its plain `quantile` and `median`
  are approximate); ClickHouse answers NaN for a group with no value where DuckDB answers NULL,
  so NaNs become NULLs; a FILTER on them moves into the argument (`CASE WHEN c THEN x END`);
- `map[key]` -> NULL when the key is absent (ClickHouse would answer the empty string);
- `$name` parameters -> literals of the bound values, rendered by sqlglot (quoted and escaped,
  never pasted as text); times as `DateTime64(6, 'UTC')`, lists as array literals;
- table names -> `database.name` (the events table, and the small Arrow tables a statement
  reads, which the store uploads as temporary tables under the names given).

What a query must not see twice is the store's business: it runs every statement with
`final = 1` and `join_use_nulls = 1` (see `clickhouse`).

Parsing and transpiling happen once per distinct statement text (cached); binding values
copies the cached tree.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlglot
from sqlglot import exp

_MAP_COLUMNS = frozenset({"properties"})


def _override(node: exp.Expression) -> exp.Expression:
    """One node rewritten for ClickHouse (its children are rewritten first, see `_translated`)."""
    if isinstance(node, exp.Anonymous) and node.name.lower() == "epoch_us":
        return exp.Anonymous(this="toUnixTimestamp64Micro", expressions=node.expressions)
    if isinstance(node, exp.IntDiv):
        return exp.Anonymous(this="intDiv", expressions=[node.this, node.expression])
    if isinstance(node, exp.PercentileCont) and isinstance(node.expression, exp.Array):
        quantiles = exp.ParameterizedAgg(
            this="quantilesExactInclusive", expressions=node.expression.expressions, params=[node.this]
        )
        value = exp.to_identifier("v")
        return exp.Anonymous(
            this="arrayMap", expressions=[exp.Lambda(this=_no_nan(value), expressions=[value.copy()]), quantiles]
        )
    if isinstance(node, exp.PercentileCont | exp.Median):
        level = node.expression if isinstance(node, exp.PercentileCont) else exp.Literal.number(0.5)
        return _no_nan(exp.ParameterizedAgg(this="quantileExactInclusive", expressions=[level], params=[node.this]))
    if isinstance(node, exp.Bracket) and isinstance(node.this, exp.Column) and node.this.name in _MAP_COLUMNS:
        (key,) = node.expressions
        return exp.If(
            this=exp.Anonymous(this="mapContains", expressions=[node.this.copy(), key.copy()]),
            true=exp.Bracket(this=node.this.copy(), expressions=[key.copy()]),
            false=exp.Null(),
        )
    return node


def _no_nan(value: exp.Expression) -> exp.Expression:
    """`value`, or NULL where it is NaN (ClickHouse's quantile of no values; DuckDB answers NULL)."""
    return exp.If(this=exp.Anonymous(this="isNaN", expressions=[value]), true=exp.Null(), false=value.copy())


def _filter_into_argument(node: exp.Expression) -> exp.Expression:
    """`median(x) FILTER (WHERE c)` -> `median(CASE WHEN c THEN x END)`: the same (quantiles skip NULLs), and a
    form ClickHouse's parametric quantile functions take."""
    if isinstance(node, exp.Filter) and isinstance(node.this, exp.Median | exp.PercentileCont):
        quantile = node.this.copy()
        condition = node.expression.this.copy()
        quantile.set("this", exp.If(this=condition, true=quantile.this, false=exp.Null()))
        return quantile
    return node


def _bottom_up(tree: exp.Expression) -> exp.Expression:
    """`tree` with `_override` applied to every node, children before their parents."""
    for node in list(tree.walk(bfs=False))[::-1]:  # a pre-order walk reversed visits children first
        replacement = _override(node)
        if replacement is not node:
            if node is tree:
                return replacement
            node.replace(replacement)
    return tree


@functools.lru_cache(maxsize=512)
def _translated(sql: str) -> exp.Expression:
    """The statement parsed as DuckDB with the overrides applied; placeholders and table names still open."""
    statements = sqlglot.parse(sql, read="duckdb")
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        raise ValueError("Store.query runs exactly one SELECT statement")
    return _bottom_up(statements[0].transform(_filter_into_argument))


def _literal(value: Any) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, int):
        return exp.Literal.number(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"a query parameter is {value}; only finite numbers can be bound")
        return exp.Literal.number(repr(value))
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a time bound to a query must carry a timezone")
        text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        return exp.Anonymous(
            this="toDateTime64",
            expressions=[exp.Literal.string(text), exp.Literal.number(6), exp.Literal.string("UTC")],
        )
    if isinstance(value, str):
        return exp.Literal.string(value)
    if isinstance(value, list | tuple):
        return exp.Array(expressions=[_literal(item) for item in value])
    raise TypeError(f"cannot bind a {type(value).__name__} to a ClickHouse query")


def to_clickhouse(sql: str, params: Mapping[str, Any], tables: Mapping[str, str]) -> str:
    """`sql` (DuckDB dialect, `$name` parameters) as ClickHouse SQL with `params` bound and tables renamed.

    `tables` maps a table name the statement reads to the qualified name to read instead; a
    table not in it is an error (a statement may read only what the store knows).
    """
    tree = _translated(sql).copy()
    cte_names = {cte.alias for cte in tree.find_all(exp.CTE)}

    def bind(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder):
            if node.name not in params:
                raise ValueError(f"the query uses ${node.name} but no value was bound for it")
            return _literal(params[node.name])
        if isinstance(node, exp.Table) and not node.args.get("db") and node.name not in cte_names:
            if node.name not in tables:
                known = ", ".join(sorted(tables))
                raise ValueError(f"the query reads table {node.name!r}; the ClickHouse store knows: {known}")
            database, name = tables[node.name].split(".", 1)
            return exp.Table(this=exp.to_identifier(name), db=exp.to_identifier(database), alias=node.args.get("alias"))
        return node

    return tree.transform(bind).sql("clickhouse")
