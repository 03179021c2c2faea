"""Retry amplifier: attempts per logical request, the cost of failed attempts, and retries without backoff.

A retry is an attempt that started at most `RESEND_WINDOW_S` after a failed send of the same
request ended (same `request_hash` from the same key; `request_id` for events without a hash).
That covers the gateway's own retries and fallbacks (attempts of one `request_id` share the
hash) and clients that resend a failed call as a new request. A logical request is an attempt
that is not a retry. A retry came without backoff when it started sooner after the latest such
failure ended than the provider asked for (`retry_after_s` of that failed attempt). Only the few
failed attempts are matched against the others, so this stays cheap on large windows.

Per feature, app and model the finding's dollars are the cost of the failed attempts: a failure
that had already streamed tokens is billed, and its retry pays for the same work again. It is
reported for a group with at least `MIN_RETRIES` retries whose failed attempts cost at least
`min_usd` a month (rate limits and refusals cost nothing, so they alone make no finding). The
saving assumes those failed attempts' spend is avoided (deadlines long enough for streams to
finish, no blind retry of billed work).
"""

from __future__ import annotations

from typing import Any

from meterline.analytics.insights.finding import GROUP_SELECT, Finding, Scan, label, money, where_of
from meterline.analytics.params import Statement

RESEND_WINDOW_S = 300
MIN_RETRIES = 10

_SAME_REQUEST = "coalesce(e.key_id, '') AS request_key, coalesce(e.request_hash, e.request_id) AS request_hash"


def detect(scan: Scan) -> list[Finding]:
    statement = Statement()
    events = scan.events(statement)
    failed = f"""
        SELECT {_SAME_REQUEST}, epoch_us(e.started_at) AS started_us, epoch_us(e.ended_at) AS ended_us, e.retry_after_s
        FROM {events} e WHERE e.error_class <> 'none' AND NOT e.cache_status LIKE 'hit%'
    """
    # each attempt that followed a failed send of its request, with the latest such failure's end and Retry-After
    retried = f"""
        SELECT e.event_id, e.feature, e.app, e.provider, e.requested_model, e.attempt,
            epoch_us(e.started_at) AS started_us, max(f.ended_us) AS previous_end_us,
            arg_max(f.retry_after_s, f.ended_us) AS previous_retry_after_s
        FROM (SELECT e.*, {_SAME_REQUEST} FROM {events} e WHERE NOT e.cache_status LIKE 'hit%') e
        JOIN ({failed}) f ON f.request_key = e.request_key AND f.request_hash = e.request_hash
        WHERE f.started_us < epoch_us(e.started_at)
            AND epoch_us(e.started_at) - f.ended_us <= {RESEND_WINDOW_S * 1_000_000}
        GROUP BY ALL
    """
    retries = f"""
        SELECT r.feature AS feature, r.app AS app, r.provider AS provider, r.requested_model AS model,
            count(*) AS retries, count(*) FILTER (WHERE r.attempt = 1) AS client_resends,
            count(*) FILTER (
                WHERE r.started_us - r.previous_end_us < r.previous_retry_after_s * 1000000
            ) AS without_backoff
        FROM ({retried}) r GROUP BY ALL HAVING count(*) >= {MIN_RETRIES}
    """
    retried_groups = {_group(row): row for row in scan.rows(retries, statement)}
    if not retried_groups:
        return []
    totals = Statement()
    sql = f"""
        SELECT {GROUP_SELECT}, count(*) AS attempts, count(*) FILTER (WHERE e.error_class <> 'none') AS failed,
            coalesce(sum(e.cost) FILTER (WHERE e.error_class <> 'none'), 0) AS failed_cost,
            count(*) FILTER (WHERE e.error_class <> 'none' AND e.cost > 0) AS billed_failures
        FROM {scan.events(totals)} e WHERE NOT e.cache_status LIKE 'hit%' GROUP BY ALL
    """
    groups = [{**row, **retried_groups[_group(row)]} for row in scan.rows(sql, totals) if _group(row) in retried_groups]
    findings = []
    for row in groups:
        requests = row["attempts"] - row["retries"]
        amplification = row["attempts"] / requests if requests else float(row["attempts"])
        usd = scan.per_month(row["failed_cost"])
        if usd < scan.min_usd:
            continue
        where = where_of(row)
        backoff = (
            f"; {row['without_backoff']:,} retries came sooner than the provider's Retry-After asked"
            if row["without_backoff"]
            else ""
        )
        findings.append(
            Finding(
                detector="retry_amplifier",
                title="Retries multiply calls",
                where=where,
                summary=(
                    f"{label(where)} makes {amplification:.2f} attempts per logical request "
                    f"({row['retries']:,} retries, {row['client_resends']:,} of them resent by the client); "
                    f"{row['failed']:,} failed attempts cost {money(usd)} a month{backoff}"
                ),
                evidence={
                    "requests": requests,
                    "attempts": row["attempts"],
                    "amplification": amplification,
                    "retries": row["retries"],
                    "client_resends": row["client_resends"],
                    "retries_without_backoff": row["without_backoff"],
                    "failed_attempts": row["failed"],
                    "billed_failed_attempts": row["billed_failures"],
                    "failed_cost_usd": row["failed_cost"],
                },
                usd_per_month=usd,
                saving_usd_per_month=usd,
                fix=(
                    "Let the gateway retry (resilience.retries with backoff, honouring Retry-After) instead of "
                    "resending from the client, cap retries with x-meterline-retries, and give streams a deadline "
                    "(providers.<name>.timeout) long enough to finish, so billed work is not thrown away and redone"
                ),
                assumptions="the saving assumes the failed attempts' spend is avoided, not moved to other attempts",
            )
        )
    return findings


def _group(row: dict[str, Any]) -> tuple[Any, ...]:
    return row["feature"], row["app"], row["provider"], row["model"]
