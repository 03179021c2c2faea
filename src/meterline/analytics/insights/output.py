"""Output bloat: no `max_tokens` and long answers on a feature whose answers are usually short.

Per feature, app and model, over answered chat-style calls: the cap a feature could set is
`CAP_FACTOR` times its median answer, and at least `MIN_CAP_TOKENS`. Calls that set no
`max_tokens` and answered longer than that cap are long; with at least `MIN_LONG_CALLS` of them
making at least `MIN_LONG_SHARE` of the calls, the finding's dollars are their tokens beyond the
cap at the model's output price today, which a `max_tokens` at the cap would save (those answers
would be cut there).
"""

from __future__ import annotations

import math

from meterline.analytics.insights.finding import (
    ANSWERED,
    CHAT_CALLS,
    GROUP_SELECT,
    Finding,
    Scan,
    label,
    money,
    where_of,
)
from meterline.analytics.params import Statement

CAP_FACTOR = 4
MIN_CAP_TOKENS = 64
MIN_LONG_CALLS = 10
MIN_LONG_SHARE = 0.01


def detect(scan: Scan) -> list[Finding]:
    statement = Statement()
    answered = f"SELECT * FROM {scan.events(statement)} e WHERE {ANSWERED} AND {CHAT_CALLS}"
    keys = [f"coalesce(e.{column}, '')" for column in ("feature", "app", "provider", "requested_model")]
    medians = f"""
        SELECT {", ".join(f"{key} AS k{index}" for index, key in enumerate(keys))},
            median(e.output_tokens) AS median_output
        FROM ({answered}) e GROUP BY ALL
    """
    matched = " AND ".join(f"m.k{index} = {key}" for index, key in enumerate(keys))
    capped = f"""
        SELECT e.*, m.median_output AS median_output,
            greatest({CAP_FACTOR} * m.median_output, {MIN_CAP_TOKENS}) AS cap
        FROM ({answered}) e JOIN ({medians}) m ON {matched}
    """
    long = "e.max_tokens IS NULL AND e.output_tokens > e.cap"
    sql = f"""
        SELECT {GROUP_SELECT}, count(*) AS calls, max(e.median_output) AS median_output, max(e.cap) AS cap,
            count(*) FILTER (WHERE e.max_tokens IS NULL) AS uncapped_calls,
            count(*) FILTER (WHERE {long}) AS long_calls,
            coalesce(sum(e.output_tokens - e.cap) FILTER (WHERE {long}), 0)::BIGINT AS excess_tokens,
            max(e.output_tokens) AS longest
        FROM ({capped}) e GROUP BY ALL
        HAVING count(*) FILTER (WHERE {long}) >= {statement.bind(MIN_LONG_CALLS)}
            AND count(*) FILTER (WHERE {long}) >= {statement.bind(MIN_LONG_SHARE)} * count(*)
    """
    findings = []
    for row in scan.rows(sql, statement):
        rates = scan.rates(row["provider"], row["priced_model"])
        if rates is None:
            continue
        usd = scan.per_month(row["excess_tokens"] * rates.resolved[1] / 1e6)
        if usd < scan.min_usd:
            continue
        cap = math.ceil(row["cap"])
        where = where_of(row)
        findings.append(
            Finding(
                detector="output_bloat",
                title="Long answers with no max_tokens",
                where=where,
                summary=(
                    f"{label(where)} usually answers in {row['median_output']:,.0f} tokens, but {row['long_calls']:,} "
                    f"calls without max_tokens ran past {cap:,} (up to {row['longest']:,}): the tokens beyond that "
                    f"cost {money(usd)} a month"
                ),
                evidence={
                    "calls": row["calls"],
                    "calls_without_max_tokens": row["uncapped_calls"],
                    "median_output_tokens": row["median_output"],
                    "suggested_max_tokens": cap,
                    "long_calls": row["long_calls"],
                    "tokens_beyond_cap": row["excess_tokens"],
                    "longest_output_tokens": row["longest"],
                    "output_usd_per_mtok": rates.resolved[1],
                },
                usd_per_month=usd,
                saving_usd_per_month=usd,
                fix=f"Set max_tokens to about {cap:,} on this feature's calls (and say so in the prompt)",
                assumptions="answers longer than the cap would be cut there: check none of them needs the length",
            )
        )
    return findings
