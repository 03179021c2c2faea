"""`meterline top`, `report` and `export` work with the server running (via its API) and without (the file)."""

from __future__ import annotations

import csv
import json

import httpx
import pyarrow.parquet as pq
import pytest

CALLS = [
    ("search", "team-a", "alice", "gpt-4o-mini"),
    ("search", "team-a", "bob", "gpt-4o-mini"),
    ("summarize", "team-b", "alice", "gpt-4o"),
    ("summarize", "team-b", "carol", "gpt-4o"),
    ("chat", "team-b", "carol", "claude-haiku-4-5"),
]


@pytest.fixture(scope="module")
def seeded(make_gateway):  # type: ignore[no-untyped-def]
    gateway = make_gateway()
    for feature, team, user, model in CALLS:
        headers = gateway.headers(
            **{"x-meterline-feature": feature, "x-meterline-team": team, "x-meterline-user": user}
        )
        if model.startswith("claude"):
            body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi there"}]}
            reply = httpx.post(gateway.url + "/v1/messages", json=body, headers=headers)
        else:
            body = {"model": model, "messages": [{"role": "user", "content": "hello world, how are you"}]}
            reply = httpx.post(gateway.url + "/v1/chat/completions", json=body, headers=headers)
        assert reply.status_code == 200
    httpx.post(
        gateway.url + "/v1/chat/completions",
        headers=gateway.headers(),
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "nobody's"}]},
    )
    gateway.events(expected=len(CALLS) + 1)
    return gateway


def top_json(gateway) -> dict:  # type: ignore[no-untyped-def]
    result = gateway.cli("top", "--by", "feature", "--since", "1d", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_top_report_export_agree_with_the_api_with_and_without_a_server(seeded, tmp_path) -> None:  # type: ignore[no-untyped-def]
    gateway = seeded
    via_server = top_json(gateway)
    api = httpx.get(gateway.url + "/api/v1/top", params={"by": "feature", "since": "1d"}, headers=gateway.headers())
    assert via_server["rows"] == api.json()["rows"]
    assert {row["value"] for row in via_server["rows"]} == {"search", "summarize", "chat"}
    assert via_server["unattributed"]["cost_usd"] > 0

    table = gateway.cli("top", "--by", "team", "--since", "1d")
    assert table.returncode == 0 and "team-b" in table.stdout and "(unattributed)" in table.stdout

    spend_by_team = httpx.get(
        gateway.url + "/api/v1/spend", params={"group_by": "team", "since": "7d"}, headers=gateway.headers()
    ).json()["rows"]
    report = gateway.cli("report", "--period", "week", "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    html = next((tmp_path / "report").glob("report-week-*.html")).read_text()
    headings = ("Findings: where money leaks", "Forecast for", "Cost trend", "Top features", "Top users",
                "Cache hit rate by feature", "Cost of errors by class")  # fmt: skip
    for heading in headings:
        assert heading in html
    assert "90% interval" in html and "team-b" in html
    assert "summarize" in html and "Plotly.newPlot" in html
    with (tmp_path / "report" / "showback-team.csv").open() as file:
        showback = {row["team"]: row for row in csv.DictReader(file)}
    for row in spend_by_team:
        name = row["team"] or "(unattributed)"
        assert float(showback[name]["cost_usd"]) == pytest.approx(row["cost_usd"])
        assert int(showback[name]["requests"]) == row["requests"]

    with (tmp_path / "report" / "chargeback.csv").open() as file:
        chargeback = {(row["team"], row["app"]): row for row in csv.DictReader(file)}
    assert {team for team, _ in chargeback} == {"team-a", "team-b", ""}  # the unattributed call: empty cells
    assert int(chargeback["team-b", ""]["users"]) == 2  # alice and carol
    assert json.loads((tmp_path / "report" / "chargeback.json").read_text())["group_by"] == ["team", "app"]

    exported = tmp_path / "events.jsonl"
    result = gateway.cli("export", "--since", "1d", "--format", "jsonl", "--out", str(exported))
    assert result.returncode == 0, result.stderr
    assert len(exported.read_text().splitlines()) == len(CALLS) + 1

    gateway.stop()  # now the CLI must open the file itself
    assert top_json(gateway)["rows"] == via_server["rows"]
    for file_format in ("csv", "parquet"):
        out = tmp_path / f"events.{file_format}"
        result = gateway.cli("export", "--since", "1d", "--format", file_format, "--out", str(out))
        assert result.returncode == 0, result.stderr
    assert pq.read_table(tmp_path / "events.parquet").num_rows == len(CALLS) + 1
    with (tmp_path / "events.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(CALLS) + 1 and {"event_id", "cost_usd", "properties"} <= set(rows[0])
    local_report = gateway.cli("report", "--period", "month", "--out", str(tmp_path / "local"))
    assert local_report.returncode == 0, local_report.stderr
    gateway.start()


def test_bad_dimension_is_a_clear_error(seeded) -> None:  # type: ignore[no-untyped-def]
    result = seeded.cli("top", "--by", "colour")
    assert result.returncode != 0
    assert "colour" in result.stderr and "feature" in result.stderr and "Traceback" not in result.stderr


def test_insights_cli_table_and_json(seeded) -> None:  # type: ignore[no-untyped-def]
    """The call with no attribution is a finding once the threshold is $0; the table and the JSON agree."""
    as_json = seeded.cli("insights", "--since", "1d", "--min-usd", "0", "--json")
    assert as_json.returncode == 0, as_json.stderr
    findings = json.loads(as_json.stdout)["findings"]
    unattributed = next(f for f in findings if f["detector"] == "unattributed_spend")
    assert unattributed["where"] == {"key_id": "master", "app": None}
    table = seeded.cli("insights", "--since", "1d", "--min-usd", "0", "--detector", "unattributed_spend")
    assert table.returncode == 0 and "unattributed_spend" in table.stdout and "x-meterline-feature" in table.stdout
    quiet = seeded.cli("insights", "--since", "1d")
    assert quiet.returncode == 0 and "no findings over $1.00 a month" in quiet.stdout
    bad = seeded.cli("insights", "--detector", "nope")
    assert bad.returncode == 1 and "unknown value 'nope'" in bad.stderr
