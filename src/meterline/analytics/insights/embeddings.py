"""Embedding leak: the same input embedded again by the same model.

Answered embeddings calls with the same `request_hash` (a hash of the input and the options that
change the vector) on the same provider and model are duplicates after the first one in the
window, whichever feature sent them. Per feature, app and model the dollars are the duplicates'
cost; deduplicating (reusing the stored vector of an unchanged input) saves all of it.
"""

from __future__ import annotations

from meterline.analytics.insights.finding import ANSWERED, GROUP_SELECT, Finding, Scan, label, money, where_of
from meterline.analytics.params import Statement

MIN_DUPLICATES = 10


def detect(scan: Scan) -> list[Finding]:
    statement = Statement()
    sequenced = f"""
        SELECT e.*, row_number() OVER (
            PARTITION BY e.provider, e.requested_model, e.request_hash ORDER BY e.started_at, e.event_id
        ) AS position
        FROM {scan.events(statement)} e
        WHERE {ANSWERED} AND e.operation = 'embeddings' AND e.request_hash IS NOT NULL
    """
    sql = f"""
        SELECT {GROUP_SELECT}, count(*) AS calls, count(DISTINCT e.request_hash) AS distinct_inputs,
            count(*) FILTER (WHERE e.position > 1) AS duplicates,
            coalesce(sum(e.cost) FILTER (WHERE e.position > 1), 0) AS duplicate_cost,
            coalesce(sum(e.input_tokens) FILTER (WHERE e.position > 1), 0)::BIGINT AS duplicate_tokens,
            max(e.position) AS most_repeats
        FROM ({sequenced}) e GROUP BY ALL
        HAVING count(*) FILTER (WHERE e.position > 1) >= {statement.bind(MIN_DUPLICATES)}
    """
    findings = []
    for row in scan.rows(sql, statement):
        usd = scan.per_month(row["duplicate_cost"])
        if usd < scan.min_usd:
            continue
        where = where_of(row)
        findings.append(
            Finding(
                detector="embedding_leak",
                title="Unchanged inputs are embedded again",
                where=where,
                summary=(
                    f"{label(where)} embedded {row['distinct_inputs']:,} distinct inputs {row['calls']:,} times; "
                    f"the {row['duplicates']:,} repeats ({row['duplicate_tokens']:,} tokens, up to "
                    f"{row['most_repeats']} times one input) cost {money(usd)} a month"
                ),
                evidence={
                    "calls": row["calls"],
                    "distinct_inputs": row["distinct_inputs"],
                    "duplicate_calls": row["duplicates"],
                    "duplicate_tokens": row["duplicate_tokens"],
                    "most_embeddings_of_one_input": row["most_repeats"],
                    "duplicate_cost_usd": row["duplicate_cost"],
                },
                usd_per_month=usd,
                saving_usd_per_month=usd,
                fix=(
                    "Deduplicate before embedding: keep vectors by a hash of the input and re-embed only changed "
                    "documents, or turn on meterline's exact response cache for the embeddings model"
                ),
            )
        )
    return findings
