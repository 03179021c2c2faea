"""The weekly (or monthly) review: one HTML report with the core views, findings and forecast, and CSV/JSON files.

Views: the insights' findings (what leaks, what it costs a month, the fix), the month-end
forecast per team with its interval, cost trend, top features, top users, cache hit rate by
feature, cost by error class. Showback: one CSV per team, app and feature with spend, volume,
tokens and unit cost; chargeback: per team and app per calendar month (from the first of the
month the period starts in), as CSV and JSON with unit economics. Every figure comes from the
same analytics endpoints the API serves, so the report agrees with it. The HTML embeds
Plotly.js from the installed `plotly` package, so it opens offline.
"""

from __future__ import annotations

import csv
import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from pathlib import Path
from typing import Any

import orjson

from meterline.analytics.call import METRICS
from meterline.analytics.chargeback import write_chargeback
from meterline.analytics.source import AnalyticsSource

PERIOD_DAYS = {"week": 7, "month": 30}
SHOWBACK_DIMENSIONS = ("team", "app", "feature")
REPORT_STEPS = 3 + len(SHOWBACK_DIMENSIONS)
"""The core views, the findings and forecast, one showback file per dimension, the chargeback files."""
SHOWBACK_COLUMNS = (*METRICS, "cost_per_request_usd")
LISTED_FINDINGS = 20


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    csvs: list[Path]
    chargeback: list[Path]


def _label(value: object) -> str:
    return "(unattributed)" if value is None else str(value)


def _figure(kind: str, x: list[Any], y: list[Any], title: str, y_title: str) -> dict[str, Any]:
    trace: dict[str, Any] = {"type": kind, "x": x, "y": y, "marker": {"color": "#3b6fd8"}}
    return {
        "data": [trace],
        "layout": {"title": {"text": title}, "yaxis": {"title": {"text": y_title}}, "margin": {"t": 50, "l": 70}},
    }


def _table(headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _money(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:,.4f}"


def _sections(source: AnalyticsSource, window: dict[str, str]) -> list[tuple[str, dict[str, Any], str]]:
    """(title, plotly figure, html table) for each of the five core views."""
    trend = source.get("spend", {**window, "granularity": "day"})["rows"]
    cache = source.get("cache", {**window, "group_by": "feature"})["rows"]
    errors = source.get("errors", window)["rows"]
    return [
        (
            "Cost trend",
            _figure(
                "scatter", [r["bucket"][:10] for r in trend], [r["cost_usd"] for r in trend], "Cost per day", "USD"
            ),
            _table(
                ["day", "cost", "requests"],
                [[r["bucket"][:10], _money(r["cost_usd"]), str(r["requests"])] for r in trend],
            ),
        ),
        _top_section(source, window, "feature", "Top features"),
        _top_section(source, window, "user", "Top users"),
        (
            "Cache hit rate by feature",
            _figure(
                "bar",
                [_label(r["feature"]) for r in cache],
                [r["hit_rate"] for r in cache],
                "Cache hit rate",
                "hit rate",
            ),
            _table(
                ["feature", "requests", "hits", "hit rate", "saved"],
                [
                    [
                        _label(r["feature"]),
                        str(r["requests"]),
                        str(r["hits"]),
                        f"{r['hit_rate']:.1%}",
                        _money(r["saved_usd"]),
                    ]
                    for r in cache
                ],
            ),
        ),
        (
            "Cost of errors by class",
            _figure(
                "bar",
                [r["error_class"] for r in errors],
                [r["cost_usd"] for r in errors],
                "Cost of failed attempts",
                "USD",
            ),
            _table(
                ["error class", "attempts", "cost"],
                [[r["error_class"], str(r["attempts"]), _money(r["cost_usd"])] for r in errors],
            ),
        ),
    ]


def _top_section(
    source: AnalyticsSource, window: dict[str, str], dimension: str, title: str
) -> tuple[str, dict[str, Any], str]:
    """The 15 costliest values of `dimension`, and the unattributed spend in the table's last row."""
    top = source.get("top", {**window, "by": dimension, "limit": "15"})
    rows = [*top["rows"], {"value": None, "requests": None, **top["unattributed"]}]
    return (
        title,
        _figure(
            "bar",
            [_label(r["value"]) for r in top["rows"]],
            [r["cost_usd"] for r in top["rows"]],
            f"Spend by {dimension}",
            "USD",
        ),
        _table(
            [dimension, "cost", "share", "requests"],
            [
                [
                    _label(r["value"]),
                    _money(r["cost_usd"]),
                    f"{r['share']:.1%}",
                    "" if r["requests"] is None else str(r["requests"]),
                ]
                for r in rows
            ],
        ),
    )


def _findings_section(source: AnalyticsSource, window: dict[str, str]) -> tuple[str, dict[str, Any], str]:
    """The insights' findings over the period, costliest first."""
    body = source.get("insights", window)
    findings = body["findings"][:LISTED_FINDINGS]
    labels = [f"{f['detector']}: {_label(f['where'].get('feature', f['where'].get('app')))}" for f in findings]
    figure = _figure("bar", labels, [f["usd_per_month"] for f in findings], "What each leak costs a month", "USD")
    table = _table(
        ["$ a month", "saving", "detector", "what", "fix"],
        [
            [
                _money(f["usd_per_month"]),
                "" if f["saving_usd_per_month"] is None else _money(f["saving_usd_per_month"]),
                f["detector"],
                f["summary"],
                f["fix"] + (f" (assumption: {f['assumptions']})" if f["assumptions"] else ""),
            ]
            for f in findings
        ],
    )
    total = (
        f"<p>{len(body['findings'])} findings costing {_money(body['total_usd_per_month'])} a month "
        f"(the period's rate over {body['month_days']} days); fixing them would save about "
        f"{_money(body['total_saving_usd_per_month'])} a month.</p>"
    )
    return "Findings: where money leaks", figure, total + table


def _forecast_section(source: AnalyticsSource, until: datetime) -> tuple[str, dict[str, Any], str]:
    """The month-end projection per team, with its interval."""
    body = source.get("forecast", {"until": until.isoformat(), "group_by": "team"})
    rows = [{"value": "all teams", **body}, *body["groups"]]
    figure = {
        "data": [
            {
                "type": "bar",
                "x": [_label(row["value"]) for row in rows],
                "y": [row["projected_month_end_usd"] for row in rows],
                "error_y": {
                    "type": "data",
                    "symmetric": False,
                    "array": [row["high_usd"] - row["projected_month_end_usd"] for row in rows],
                    "arrayminus": [row["projected_month_end_usd"] - row["low_usd"] for row in rows],
                },
                "marker": {"color": "#3b6fd8"},
            }
        ],
        "layout": {"title": {"text": f"Projected spend in {body['month']}"}, "yaxis": {"title": {"text": "USD"}}},
    }
    level = f"{body['interval_level']:.0%} interval"
    table = _table(
        ["team", "month to date", "projected month end", level],
        [
            [
                _label(row["value"]),
                _money(row["month_to_date_usd"]),
                _money(row["projected_month_end_usd"]),
                f"{_money(row['low_usd'])} to {_money(row['high_usd'])}",
            ]
            for row in rows
        ],
    )
    return f"Forecast for {body['month']}", figure, table + f"<p>Method: {html.escape(body['method'])}.</p>"


def _showback_rows(source: AnalyticsSource, window: dict[str, str], dimension: str) -> list[dict[str, Any]]:
    rows = source.get("spend", {**window, "group_by": dimension})["rows"]
    for row in rows:
        row[dimension] = _label(row[dimension])
        row["cost_per_request_usd"] = row["cost_usd"] / row["requests"] if row["requests"] else 0.0
    return rows


def _render_html(title: str, subtitle: str, sections: list[tuple[str, dict[str, Any], str]]) -> str:
    plotly_js = (files("plotly") / "package_data" / "plotly.min.js").read_text()
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1000px;color:#1d2433}"
        "h1{margin-bottom:0}p.sub{color:#5b6475}section{margin:2.5rem 0}table{border-collapse:collapse;width:100%}"
        "th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e6ec}th{background:#f4f6fa}</style>",
        f"<script>{plotly_js}</script></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='sub'>{html.escape(subtitle)}</p>",
    ]
    for index, (heading, figure, table) in enumerate(sections):
        parts.append(f"<section><h2>{html.escape(heading)}</h2><div id='chart{index}'></div>{table}")
        figure_json = orjson.dumps(figure).decode().replace("</", "<\\/")
        parts.append(f"<script>const figure{index} = {figure_json};")
        parts.append(f"Plotly.newPlot('chart{index}', figure{index}.data, figure{index}.layout, {{responsive: true}});")
        parts.append("</script></section>")
    parts.append("</body></html>")
    return "".join(parts)


def build_report(
    source: AnalyticsSource,
    period: str,
    out_dir: Path,
    now: datetime | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> ReportFiles:
    """Write `report-<period>-<date>.html` and `showback-<dimension>.csv` files into `out_dir`."""
    until = (now or datetime.now(UTC)).replace(microsecond=0)
    since = until - timedelta(days=PERIOD_DAYS[period])
    window = {"since": since.isoformat(), "until": until.isoformat()}
    out_dir.mkdir(parents=True, exist_ok=True)

    progress("core views")
    sections = _sections(source, window)
    progress("findings and forecast")
    sections[:0] = [_findings_section(source, window), _forecast_section(source, until)]
    totals = source.get("spend", window)["totals"]
    subtitle = (
        f"{since:%Y-%m-%d %H:%M} to {until:%Y-%m-%d %H:%M} UTC (the {PERIOD_DAYS[period]} days ending now); "
        f"total {_money(totals['cost_usd'])} over {totals['requests']} requests; data from {source.description}"
    )
    html_path = out_dir / f"report-{period}-{until:%Y-%m-%d}.html"
    html_path.write_text(_render_html(f"meterline {period}ly review", subtitle, sections))

    csv_paths = []
    for dimension in SHOWBACK_DIMENSIONS:
        progress(f"showback by {dimension}")
        path = out_dir / f"showback-{dimension}.csv"
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=[dimension, *SHOWBACK_COLUMNS], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(_showback_rows(source, window, dimension))
        csv_paths.append(path)

    progress("chargeback")
    month_start = since.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    chargeback = source.get("chargeback", {"since": month_start.isoformat(), "until": until.isoformat()})
    chargeback_paths = []
    for file_format in ("csv", "json"):
        path = out_dir / f"chargeback.{file_format}"
        write_chargeback(chargeback, path, file_format)
        chargeback_paths.append(path)
    return ReportFiles(html=html_path, csvs=csv_paths, chargeback=chargeback_paths)
