"""Provider billing and usage exports, read into one shape: what the provider billed per model and UTC day.

Formats (told apart by their content, not their file name):

- OpenAI Costs API (`GET /v1/organization/costs`, JSON): pages of daily buckets whose results
  carry `amount.value` in USD and, grouped by line item, `line_item` such as
  `"gpt-4o-2024-08-06, input"` (the model is the part before the comma; without line items the
  day's cost has no model);
- OpenAI cost export (CSV from the usage dashboard, "Cost data"): `start_time` (Unix seconds),
  `amount_value`, `amount_currency`, `line_item`, project and organization columns;
- OpenAI Completions Usage API (`GET /v1/organization/usage/completions`, JSON, grouped by
  model) and its CSV export ("Activity data"), the same fields as columns: `input_tokens`
  (cached included), `input_cached_tokens`, `output_tokens`, `num_model_requests`, `model`;
- Anthropic Messages Usage Report (`GET /v1/organizations/usage_report/messages`, JSON, daily
  buckets grouped by model): `uncached_input_tokens`, `cache_read_input_tokens`,
  `cache_creation.ephemeral_5m_input_tokens` / `ephemeral_1h_input_tokens`, `output_tokens`;
- Anthropic Cost Report (`GET /v1/organizations/cost_report`, JSON, grouped by description):
  `amount` in cents as a decimal string, `currency`, `model`;
- either Anthropic report as CSV with the results' fields as columns (nested ones as
  `cache_creation.ephemeral_5m_input_tokens`) and the bucket's `starting_at`.

Input tokens are counted as meterline counts them: cache reads and writes included.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson


class InvoiceError(ValueError):
    """The file is not an export meterline can read; the message says what was expected."""


@dataclass
class Billed:
    """What one provider billed for one model (None: the export does not say) on one UTC day."""

    provider: str
    day: date
    model: str | None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    requests: int | None = None
    cost_usd: float | None = None
    sources: set[str] = field(default_factory=set)

    def add(self, other: Billed) -> None:
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "requests",
            "cost_usd",
        ):
            value = getattr(other, name)
            if value is not None:
                setattr(self, name, (getattr(self, name) or 0) + value)
        self.sources |= other.sources


def read_invoices(paths: Iterable[Path]) -> list[Billed]:
    """Every file's lines, merged per (provider, day, model)."""
    merged: dict[tuple[str, date, str | None], Billed] = {}
    for path in paths:
        for line in read_invoice(path):
            key = (line.provider, line.day, line.model)
            if key in merged:
                merged[key].add(line)
            else:
                merged[key] = line
    return sorted(merged.values(), key=lambda line: (line.provider, line.day, line.model or ""))


def read_invoice(path: Path) -> list[Billed]:
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise InvoiceError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        lines = list(_parse(content))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, InvoiceError):
            raise InvoiceError(f"{path}: {exc}") from exc
        raise InvoiceError(f"{path}: a row does not have the fields its format needs ({exc!r})") from exc
    for line in lines:
        line.sources.add(path.name)
    return lines


def _parse(content: bytes) -> Iterator[Billed]:
    try:
        text = content.decode("utf-8-sig").strip()
    except UnicodeDecodeError as exc:
        raise InvoiceError("the file is not UTF-8 text (a JSON or CSV export)") from exc
    if text.startswith("{") or text.startswith("["):
        try:
            body = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvoiceError(f"the file starts like JSON but is not valid JSON: {exc}") from exc
        yield from _from_json(body)
    else:
        yield from _from_csv(list(csv.DictReader(io.StringIO(text))))


def _from_json(body: Any) -> Iterator[Billed]:
    pages = body if isinstance(body, list) else [body]
    for page in pages:
        buckets = page.get("data") if isinstance(page, dict) else None
        if not isinstance(buckets, list):
            raise InvoiceError("expected an export body with a 'data' list of daily buckets (OpenAI or Anthropic)")
        for bucket in buckets:
            if "start_time" in bucket:  # OpenAI: Unix seconds
                day = datetime.fromtimestamp(bucket["start_time"], UTC).date()
                for result in bucket["results"]:
                    yield _openai(day, result)
            else:  # Anthropic: RFC 3339
                day = _day(bucket["starting_at"])
                for result in bucket["results"]:
                    yield _anthropic(day, result)


def _from_csv(rows: list[dict[str, str]]) -> Iterator[Billed]:
    if not rows:
        raise InvoiceError("the CSV file has no rows")
    columns = set(rows[0])
    if "start_time" in columns:
        for row in rows:
            yield _openai(datetime.fromtimestamp(int(float(row["start_time"])), UTC).date(), _unflatten(row))
    elif "starting_at" in columns:
        for row in rows:
            yield _anthropic(_day(row["starting_at"]), _unflatten(row))
    else:
        raise InvoiceError(
            "the CSV has neither OpenAI's 'start_time' nor Anthropic's 'starting_at' column: "
            f"its columns are {', '.join(sorted(columns))}"
        )


def _openai(day: date, result: Mapping[str, Any]) -> Billed:
    if "amount" in result or "amount_value" in result:
        amount = result.get("amount")
        value = amount["value"] if isinstance(amount, Mapping) else result["amount_value"]
        currency = amount.get("currency", "usd") if isinstance(amount, Mapping) else result.get("amount_currency")
        _check_usd(currency)
        item = result.get("line_item") or None
        model = item.split(",", 1)[0].strip() if item else None
        return Billed("openai", day, model, cost_usd=float(value))
    cached = _int(result.get("input_cached_tokens"))
    return Billed(
        "openai",
        day,
        result.get("model") or None,
        input_tokens=_int(result["input_tokens"]),
        output_tokens=_int(result["output_tokens"]),
        cache_read_tokens=cached,
        requests=_int(result.get("num_model_requests")),
    )


def _anthropic(day: date, result: Mapping[str, Any]) -> Billed:
    if "amount" in result:
        _check_usd(result.get("currency"))
        return Billed("anthropic", day, result.get("model") or None, cost_usd=float(result["amount"]) / 100)
    creation = result.get("cache_creation") or {}
    writes = _int(creation.get("ephemeral_5m_input_tokens")) + _int(creation.get("ephemeral_1h_input_tokens"))
    reads = _int(result.get("cache_read_input_tokens"))
    return Billed(
        "anthropic",
        day,
        result.get("model") or None,
        input_tokens=_int(result["uncached_input_tokens"]) + reads + writes,
        output_tokens=_int(result["output_tokens"]),
        cache_read_tokens=reads,
        cache_write_tokens=writes,
    )


def _unflatten(row: Mapping[str, str]) -> dict[str, Any]:
    """A CSV row with `a.b` columns as nested dicts and empty cells as None."""
    nested: dict[str, Any] = {}
    for name, value in row.items():
        target = nested
        *parents, leaf = name.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = value if value != "" else None
    return nested


def _int(value: Any) -> int:
    return 0 if value in (None, "") else int(float(value))


def _day(text: str) -> date:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC).date()


def _check_usd(currency: Any) -> None:
    if currency is not None and str(currency).lower() != "usd":
        raise InvoiceError(f"amounts are in {currency}; meterline reconciles USD only")
