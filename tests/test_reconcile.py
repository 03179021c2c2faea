"""`meterline reconcile` and `meterline chargeback` on a hand-built ledger and export files in the providers' formats.

The ledger covers 1 and 2 April 2026 (UTC). Export files are written by the tests as OpenAI's
usage dashboard "Cost data" CSV and Completions Usage API JSON, and Anthropic's Usage Report and
Cost Report JSON (and the same reports as CSV), each in its documented shape. Each model and day
is built to show one kind of gap:

    day 1  openai     gpt-4o-mini   recorded at an older price ($0.30), billed $0.21   -> prices changed
    day 1  openai     gpt-4o        on provider openai-eu (kind openai): tokens, dollars agree -> matches
    day 1  anthropic  sonnet 4      same tokens, billed 20% less                                -> price difference
    day 2  openai     gpt-4o-mini   agrees                                                      -> matches
    day 2  openai     gpt-4o        twice the tokens billed                                     -> bypassed the gateway
    day 2  openai     gpt-mystery   no price in the table, billed $0.50                         -> unpriced model
    day 2  openai     gpt-4.1-mini  metered, not on the export                                  -> not billed
    day 2  anthropic  sonnet 4      billed, never metered                                       -> bypassed the gateway
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from meterline.analytics.invoices import Billed, InvoiceError, read_invoice
from meterline.config import StoreConfig
from meterline.events.schema import UsageEvent, events_to_arrow
from meterline.store.duckdb import DuckDBStore
from tests.conftest import run_cli

DAY_1, DAY_2 = datetime(2026, 4, 1, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC)
SONNET = "claude-sonnet-4-20250514"
CONFIG = """
store: {{path: {store}}}
server: {{port: 4997}}
providers:
  openai:    {{kind: openai, base_url: http://127.0.0.1:9/v1}}
  openai-eu: {{kind: openai, base_url: http://127.0.0.1:9/v1}}
  anthropic: {{kind: anthropic, base_url: http://127.0.0.1:9}}
"""


def call(
    number: int,
    day: datetime,
    provider: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cost: float | None,
    **fields: Any,
) -> UsageEvent:
    started = day + timedelta(hours=9, minutes=number)
    return UsageEvent(
        event_id=f"e{number}",
        request_id=f"r{number}",
        started_at=started,
        ended_at=started + timedelta(seconds=2),
        duration_ms=2000,
        operation="chat",
        provider=provider,
        requested_model=model,
        status_code=200,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cost_usd=cost,
        **fields,
    )


LEDGER = [
    # gpt-4o-mini $0.15 / $0.60 per million; recorded on day 1 at an older price
    call(1, DAY_1, "openai", "gpt-4o-mini", 1_000_000, 100_000, 0.30, response_model="gpt-4o-mini-2024-07-18",
         team="search", app="web", user="alice", feature="search"),
    # gpt-4o $2.50 / $10
    call(2, DAY_1, "openai-eu", "gpt-4o", 400_000, 40_000, 1.40, team="search", app="web", user="bob"),
    # claude-sonnet-4 $3 / $15
    call(3, DAY_1, "anthropic", SONNET, 1_000_000, 100_000, 4.50, team="support", app="desk", user="carol"),
    call(4, DAY_2, "openai", "gpt-4o-mini", 1_000_000, 100_000, 0.21, team="search", app="web", user="alice"),
    call(5, DAY_2, "openai-eu", "gpt-4o", 400_000, 40_000, 1.40, team="search", app="web", user="alice"),
    call(6, DAY_2, "openai", "gpt-mystery", 100_000, 10_000, None, team="labs", app="lab"),
    call(7, DAY_2, "openai", "gpt-4.1-mini", 100_000, 10_000, 0.056, team="labs", app="lab", user="dave"),
    # a cache hit made no provider call: left out of the metered usage
    call(8, DAY_2, "openai", "gpt-4o-mini", 5_000, 500, 0.0, cache_status="hit_exact", team="search", app="web"),
]  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reconcile")
    store = DuckDBStore(StoreConfig(path=folder / "meterline.duckdb", spool_dir=folder / "spool"))
    store.open()
    store.insert_events(events_to_arrow(LEDGER))
    store.close()
    (folder / "meterline.yaml").write_text(CONFIG.format(store=folder / "meterline.duckdb"))
    return folder


def unix(day: datetime) -> int:
    return int(day.timestamp())


def openai_cost_csv(path: Path) -> Path:
    """The usage dashboard's "Cost data" export, grouped by line item, one day per row."""
    items = [
        (DAY_1, "gpt-4o-mini-2024-07-18, input", 0.15),
        (DAY_1, "gpt-4o-mini-2024-07-18, output", 0.06),
        (DAY_1, "gpt-4o-2024-08-06, input", 1.00),
        (DAY_1, "gpt-4o-2024-08-06, output", 0.40),
        (DAY_2, "gpt-4o-mini-2024-07-18, input", 0.15),
        (DAY_2, "gpt-4o-mini-2024-07-18, output", 0.06),
        (DAY_2, "gpt-4o-2024-08-06, input", 2.00),
        (DAY_2, "gpt-4o-2024-08-06, output", 0.80),
        (DAY_2, "gpt-mystery, input", 0.50),
    ]
    columns = ["start_time", "end_time", "amount_value", "amount_currency", "line_item", "project_id",
               "project_name", "organization_id", "organization_name"]  # fmt: skip
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for day, item, amount in items:
            end = day + timedelta(days=1)
            writer.writerow([unix(day), unix(end), amount, "usd", item, "proj_abc", "Default", "org-1", "Acme"])
    return path


def openai_usage_json(path: Path) -> Path:
    """Completions Usage API pages, grouped by model (input_tokens includes the cached ones)."""

    def result(model: str, tokens_in: int, tokens_out: int, requests: int) -> dict[str, Any]:
        return {
            "object": "organization.usage.completions.result",
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "input_cached_tokens": 0,
            "num_model_requests": requests,
            "project_id": None,
            "user_id": None,
            "api_key_id": None,
            "model": model,
            "batch": None,
        }

    def bucket(day: datetime, results: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "object": "bucket",
            "start_time": unix(day),
            "end_time": unix(day + timedelta(days=1)),
            "results": results,
        }

    pages = [
        {
            "object": "page",
            "data": [
                bucket(DAY_1, [result("gpt-4o-mini-2024-07-18", 1_000_000, 100_000, 1),
                               result("gpt-4o-2024-08-06", 400_000, 40_000, 1)]),
            ],
            "has_more": True,
            "next_page": "page_2",
        },
        {
            "object": "page",
            "data": [
                bucket(DAY_2, [result("gpt-4o-mini-2024-07-18", 1_000_000, 100_000, 1),
                               result("gpt-4o-2024-08-06", 800_000, 80_000, 2),
                               result("gpt-mystery", 100_000, 10_000, 1)]),
            ],
            "has_more": False,
            "next_page": None,
        },
    ]  # fmt: skip
    path.write_bytes(orjson.dumps(pages))
    return path


def anthropic_usage(day: datetime, uncached: int, output: int) -> dict[str, Any]:
    return {
        "starting_at": day.isoformat().replace("+00:00", "Z"),
        "ending_at": (day + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
        "results": [
            {
                "api_key_id": None,
                "workspace_id": None,
                "model": SONNET,
                "service_tier": "standard",
                "context_window": "0-200k",
                "uncached_input_tokens": uncached,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_1h_input_tokens": 0, "ephemeral_5m_input_tokens": 0},
                "output_tokens": output,
                "server_tool_use": {"web_search_requests": 0},
            }
        ],
    }


def anthropic_files(folder: Path) -> list[Path]:
    """Usage Report (grouped by model) and Cost Report (grouped by description: amounts in cents)."""
    usage = {
        "data": [anthropic_usage(DAY_1, 1_000_000, 100_000), anthropic_usage(DAY_2, 200_000, 20_000)],
        "has_more": False,
        "next_page": None,
    }

    def cost(day: datetime, token_type: str, cents: str) -> dict[str, Any]:
        return {
            "starting_at": day.isoformat().replace("+00:00", "Z"),
            "ending_at": (day + timedelta(days=1)).isoformat().replace("+00:00", "Z"),
            "results": [
                {
                    "currency": "USD",
                    "amount": cents,
                    "workspace_id": None,
                    "description": f"Claude Sonnet 4 Usage - {token_type}",
                    "cost_type": "tokens",
                    "context_window": "0-200k",
                    "model": SONNET,
                    "service_tier": "standard",
                    "token_type": token_type,
                }
            ],
        }

    costs = {
        "data": [
            cost(DAY_1, "uncached_input_tokens", "240.00"),  # $3 x 1M, less 20%
            cost(DAY_1, "output_tokens", "120.00"),  # $15 x 100k, less 20%
            cost(DAY_2, "uncached_input_tokens", "60.00"),
            cost(DAY_2, "output_tokens", "30.00"),
        ],
        "has_more": False,
        "next_page": None,
    }
    (folder / "anthropic-usage.json").write_bytes(orjson.dumps(usage))
    (folder / "anthropic-cost.json").write_bytes(orjson.dumps(costs))
    return [folder / "anthropic-usage.json", folder / "anthropic-cost.json"]


def reconciled(folder: Path, *files: Path) -> tuple[int, dict[str, Any]]:
    args = [arg for path in files for arg in ("--invoice", str(path))]
    result = run_cli("reconcile", *args, "--json", "--config", "meterline.yaml", cwd=folder)
    assert result.returncode in (0, 2), result.stderr
    return result.returncode, orjson.loads(result.stdout)


def test_reconcile_explains_each_gap(folder: Path, tmp_path: Path) -> None:
    files = [openai_cost_csv(tmp_path / "openai-costs.csv"), openai_usage_json(tmp_path / "openai-usage.json")]
    status, body = reconciled(folder, *files, *anthropic_files(tmp_path))
    assert status == 2  # some rows do not match
    assert (body["since"], body["until"]) == ("2026-04-01", "2026-04-03")
    rows = {(row["day"][-2:], row["model"]): row for row in body["rows"]}
    assert set(rows) == {
        ("01", "gpt-4o-mini"), ("01", "gpt-4o"), ("01", "claude-sonnet-4"),
        ("02", "gpt-4o-mini"), ("02", "gpt-4o"), ("02", "gpt-mystery"), ("02", "gpt-4.1-mini"),
        ("02", "claude-sonnet-4"),
    }  # fmt: skip

    changed = rows["01", "gpt-4o-mini"]
    assert changed["metered"]["cost_usd"] == pytest.approx(0.30)
    assert changed["metered"]["cost_usd_current"] == pytest.approx(0.21)
    assert changed["gap_usd"] == pytest.approx(-0.09)
    assert changed["explanation"].startswith("prices changed since the calls were recorded")

    assert rows["01", "gpt-4o"]["explanation"] == "matches"  # metered on openai-eu, a provider of kind openai
    assert rows["02", "gpt-4o-mini"]["explanation"] == "matches"  # the cache hit is not counted

    discount = rows["01", "claude-sonnet-4"]
    assert discount["billed"]["cost_usd"] == pytest.approx(3.60) and discount["gap_usd"] == pytest.approx(-0.90)
    assert "price change or negotiated discount" in discount["explanation"]

    bypass = rows["02", "gpt-4o"]
    assert bypass["billed"]["input_tokens"] == 800_000 and bypass["gap_usd"] == pytest.approx(1.40)
    # 440,000 tokens billed but not metered, worth 440,000 x ($1.40 / 440,000 metered tokens)
    assert bypass["explanation"].startswith("440,000 tokens (50% of the billed) never went through the gateway")
    assert "worth about $1.40" in bypass["explanation"]

    mystery = rows["02", "gpt-mystery"]
    assert mystery["metered"]["unpriced_attempts"] == 1 and mystery["gap_usd"] == pytest.approx(0.50)
    assert "have no price" in mystery["explanation"]

    assert rows["02", "gpt-4.1-mini"]["billed"] is None
    assert rows["02", "gpt-4.1-mini"]["explanation"].startswith("metered but not on the export")
    never = rows["02", "claude-sonnet-4"]
    assert never["metered"] is None and never["billed"]["cost_usd"] == pytest.approx(0.90)
    assert never["explanation"].startswith("billed but never metered")


def test_reconcile_table_and_a_matching_export(folder: Path, tmp_path: Path) -> None:
    """Day 1 of OpenAI's usage alone: gpt-4o matches, gpt-4o-mini's tokens match (no cost to compare)."""
    usage = openai_usage_json(tmp_path / "usage.json")
    pages = orjson.loads(usage.read_bytes())
    usage.write_bytes(orjson.dumps(pages[0]))
    result = run_cli("reconcile", "--invoice", str(usage), "--config", "meterline.yaml", cwd=folder)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 of 2 rows match" in result.stdout and "usage export only" in result.stdout


def test_each_format_reads_to_the_same_lines(tmp_path: Path) -> None:
    costs_api = {
        "object": "page",
        "data": [
            {
                "object": "bucket",
                "start_time": unix(DAY_1),
                "end_time": unix(DAY_2),
                "results": [
                    {
                        "object": "organization.costs.result",
                        "amount": {"value": 0.15, "currency": "usd"},
                        "line_item": "gpt-4o-mini-2024-07-18, input",
                        "project_id": "proj_abc",
                    },
                    {"object": "organization.costs.result", "amount": {"value": 0.5, "currency": "usd"}},
                ],
            }
        ],
        "has_more": False,
        "next_page": None,
    }
    (tmp_path / "costs.json").write_bytes(orjson.dumps(costs_api))
    lines = read_invoice(tmp_path / "costs.json")
    assert [(line.model, line.cost_usd) for line in lines] == [("gpt-4o-mini-2024-07-18", 0.15), (None, 0.5)]

    # Anthropic's usage report as CSV: the results' fields as columns, nested ones dotted
    with (tmp_path / "usage.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["starting_at", "ending_at", "model", "uncached_input_tokens", "cache_read_input_tokens",
                         "cache_creation.ephemeral_5m_input_tokens", "cache_creation.ephemeral_1h_input_tokens",
                         "output_tokens"])  # fmt: skip
        writer.writerow(["2026-04-01T00:00:00Z", "2026-04-02T00:00:00Z", SONNET, 1500, 200, 500, 1000, 500])
    (line,) = read_invoice(tmp_path / "usage.csv")
    assert line == Billed(
        "anthropic", DAY_1.date(), SONNET, input_tokens=3200, output_tokens=500, cache_read_tokens=200,
        cache_write_tokens=1500, sources={"usage.csv"},
    )  # fmt: skip


def test_unreadable_exports_are_named(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("date,dollars\n2026-04-01,3\n")
    with pytest.raises(InvoiceError, match="neither OpenAI's 'start_time' nor Anthropic's 'starting_at'"):
        read_invoice(tmp_path / "a.csv")
    (tmp_path / "b.json").write_text('{"data": [{"start_time": 1775001600, "results": [{"amount": {"value": 3, '
                                     '"currency": "eur"}}]}]}')  # fmt: skip
    with pytest.raises(InvoiceError, match="amounts are in eur"):
        read_invoice(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(InvoiceError, match="not valid JSON"):
        read_invoice(tmp_path / "c.json")


def test_chargeback_per_team_and_app_with_unit_costs(folder: Path) -> None:
    out = folder / "april.csv"
    result = run_cli("chargeback", "--month", "2026-04", "--out", str(out), "--config", "meterline.yaml", cwd=folder)
    assert result.returncode == 0, result.stderr
    with out.open() as file:
        rows = {(row["team"], row["app"]): row for row in csv.DictReader(file)}
    search = rows["search", "web"]
    # e1 .30 + e2 1.40 + e4 .21 + e5 1.40 (+ the $0 cache hit e8): 5 requests by alice and bob
    assert float(search["cost_usd"]) == pytest.approx(3.31)
    assert (search["month"], search["requests"], search["users"]) == ("2026-04", "5", "2")
    assert float(search["cost_per_request_usd"]) == pytest.approx(3.31 / 5)
    assert float(search["cost_per_user_usd"]) == pytest.approx(3.31 / 2)
    tokens = 1_100_000 + 440_000 + 1_100_000 + 440_000 + 5_500
    assert float(search["cost_per_1k_tokens_usd"]) == pytest.approx(3.31 * 1000 / tokens)
    assert float(search["share_of_month"]) == pytest.approx(3.31 / (3.31 + 4.50 + 0.056))
    labs = rows["labs", "lab"]
    assert (labs["users"], labs["unpriced_attempts"]) == ("1", "1")  # gpt-mystery has no user and no price

    as_json = run_cli("chargeback", "--month", "2026-04", "--format", "json", "--out", str(folder / "april.json"),
                      "--by", "team", "--config", "meterline.yaml", cwd=folder)  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    body = orjson.loads((folder / "april.json").read_bytes())
    assert body["group_by"] == ["team"]
    assert {row["team"]: row["requests"] for row in body["rows"]} == {"search": 5, "support": 1, "labs": 2}
    bad = run_cli("chargeback", "--month", "April", "--config", "meterline.yaml", cwd=folder)
    assert bad.returncode == 1 and "--month must be YYYY-MM" in bad.stderr
