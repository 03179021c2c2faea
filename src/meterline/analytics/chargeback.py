"""Chargeback (showback): spend per team and app per UTC calendar month, with unit economics.

`GET /api/v1/chargeback?group_by=team,app` answers one row per month of the window and
combination of the dimensions (unattributed spend is its own row, null), with the spend, its
share of the month, the volume, and the unit costs: per logical request, per distinct user and
per 1,000 tokens (input plus output). Months are cut by the window: pass `since` and `until` at
month boundaries for whole months (`meterline chargeback --month` does).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import orjson

from meterline.analytics.call import METRICS, Call
from meterline.analytics.params import Statement

DEFAULT_DIMENSIONS = "team,app"
COLUMNS = (
    "cost_usd",
    "share_of_month",
    "requests",
    "users",
    "input_tokens",
    "output_tokens",
    "cost_per_request_usd",
    "cost_per_user_usd",
    "cost_per_1k_tokens_usd",
    "unpriced_attempts",
)


def chargeback(call: Call) -> dict[str, Any]:
    dimensions = call.params.dimensions("group_by", DEFAULT_DIMENSIONS)
    statement = Statement()
    select = [f"{dimension.sql(statement)} AS d{index}" for index, dimension in enumerate(dimensions)]
    metrics = ", ".join(
        f"{METRICS[name]} AS {name}"
        for name in ("cost_usd", "requests", "input_tokens", "output_tokens", "unpriced_attempts")
    )
    sql = f"""
        SELECT *, cost_usd / nullif(sum(cost_usd) OVER (PARTITION BY month), 0) AS share_of_month FROM (
            SELECT year(e.started_at) * 100 + month(e.started_at) AS month, {", ".join([*select, metrics])},
                count(DISTINCT e."user") AS users
            FROM {call.events(statement)} e GROUP BY ALL
        ) ORDER BY month, cost_usd DESC, {", ".join(f"d{index} NULLS LAST" for index in range(len(dimensions)))}
    """
    rows = []
    for row in call.rows(sql, statement):
        tokens = row["input_tokens"] + row["output_tokens"]
        cost = row["cost_usd"]
        rows.append(
            {
                "month": f"{row['month'] // 100}-{row['month'] % 100:02d}",
                **{dimension.name: row[f"d{index}"] for index, dimension in enumerate(dimensions)},
                "cost_usd": cost,
                "share_of_month": row["share_of_month"] or 0.0,
                "requests": row["requests"],
                "users": row["users"],
                "input_tokens": row["input_tokens"],
                "output_tokens": row["output_tokens"],
                "cost_per_request_usd": cost / row["requests"] if row["requests"] else None,
                "cost_per_user_usd": cost / row["users"] if row["users"] else None,
                "cost_per_1k_tokens_usd": cost * 1000 / tokens if tokens else None,
                "unpriced_attempts": row["unpriced_attempts"],
            }
        )
    return {
        "group_by": [dimension.name for dimension in dimensions],
        "cost_basis": call.window.cost_basis,
        "rows": rows,
    }


def write_chargeback(body: dict[str, Any], path: Path, file_format: str) -> None:
    """Write a chargeback body as `csv` (one line per row, unattributed as empty cells) or `json` (the body)."""
    if file_format == "json":
        path.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
        return
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["month", *body["group_by"], *COLUMNS])
        writer.writeheader()
        writer.writerows(body["rows"])
