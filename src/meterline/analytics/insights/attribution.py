"""Unattributed spend: cost with no feature, user or team, by virtual key and app, and which headers would fix it.

Per key and app, the dollars are the cost of calls missing at least one of feature, user and
team; the finding names the headers to add for each one missing. Attribution saves nothing by
itself (no saving is given): it makes the spend explainable and the other detectors precise.
"""

from __future__ import annotations

from meterline.analytics.insights.finding import Finding, Scan, money
from meterline.analytics.params import Statement

HEADERS = {
    "feature": "x-meterline-feature",
    "user": "x-meterline-user (or the body's user field: OpenAI `user`, Anthropic `metadata.user_id`)",
    "team": "x-meterline-team (or a virtual key created with --team)",
}


def detect(scan: Scan) -> list[Finding]:
    statement = Statement()
    missing = {name: f'e."{name}" IS NULL' for name in HEADERS}
    any_missing = " OR ".join(missing.values())
    per_dimension = ", ".join(
        f"coalesce(sum(e.cost) FILTER (WHERE {condition}), 0) AS no_{name}" for name, condition in missing.items()
    )
    sql = f"""
        SELECT * FROM (
            SELECT *, sum(cost) OVER () AS total FROM (
                SELECT e.key_id AS key_id, e.app AS app, count(*) FILTER (WHERE e.attempt = 1) AS requests,
                    count(*) FILTER (WHERE e.attempt = 1 AND ({any_missing})) AS unattributed_requests,
                    coalesce(sum(e.cost), 0) AS cost,
                    coalesce(sum(e.cost) FILTER (WHERE {any_missing}), 0) AS unattributed, {per_dimension}
                FROM {scan.events(statement)} e GROUP BY ALL
            )
        ) WHERE unattributed > 0 ORDER BY unattributed DESC
    """
    findings = []
    for row in scan.rows(sql, statement):
        usd = scan.per_month(row["unattributed"])
        if usd < scan.min_usd:
            continue
        absent = [name for name in HEADERS if row[f"no_{name}"] > 0]
        where = {"key_id": row["key_id"], "app": row["app"]}
        who = f"key {row['key_id']}" if row["key_id"] is not None else "calls with the master key"
        app = f" (app {row['app']})" if row["app"] is not None else " (no app)"
        share = row["unattributed"] / row["total"] if row["total"] else 0.0
        findings.append(
            Finding(
                detector="unattributed_spend",
                title="Spend nobody can be charged for",
                where=where,
                summary=(
                    f"{who}{app} spent {money(usd)} a month ({share:.1%} of all spend) on "
                    f"{row['unattributed_requests']:,} requests with no {' / '.join(absent)}"
                ),
                evidence={
                    "requests": row["requests"],
                    "unattributed_requests": row["unattributed_requests"],
                    "share_of_all_spend": share,
                    **{f"usd_per_month_without_{name}": scan.per_month(row[f"no_{name}"]) for name in HEADERS},
                },
                usd_per_month=usd,
                saving_usd_per_month=None,
                fix="Send " + "; ".join(HEADERS[name] for name in absent) + " with these calls",
            )
        )
    return findings
