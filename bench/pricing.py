"""How long `PriceTable.price` takes per call once a model's prices are resolved (the gateway's hot path).

Run: .venv/bin/python bench/pricing.py
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from meterline.pricing.table import PriceTable

CALLS = 100_000
REPEATS = 5
CASES = [
    ("openai", "gpt-4o-mini-2024-07-18", "one period"),
    ("anthropic", "claude-sonnet-4-5", "one period, long-context tier"),
    ("openai", "o3", "two dated periods"),
    ("deepseek", "deepseek-v4-pro", "dated periods split by time of day"),
]


def main() -> None:
    table = PriceTable.load(None, {"openai": "openai", "anthropic": "anthropic", "deepseek": "deepseek"})
    at = datetime(2026, 9, 1, 12, 30, tzinfo=UTC)
    for provider, model, _ in CASES:  # resolve and cache each model, and warm the interpreter up
        _seconds_per_call(table, provider, model, at)
    for provider, model, shape in CASES:
        best = min(_seconds_per_call(table, provider, model, at) for _ in range(REPEATS))
        print(f"{provider}/{model} ({shape}): {best * 1e6:.2f} µs per price() call (best of {REPEATS})")


def _seconds_per_call(table: PriceTable, provider: str, model: str, at: datetime) -> float:
    start = time.perf_counter()
    for _ in range(CALLS):
        table.price(
            provider,
            model,
            at,
            input_tokens=12_000,
            output_tokens=800,
            cache_read_tokens=8_000,
            cache_write_tokens=1_000,
            cache_write_1h_tokens=200,
        )
    return (time.perf_counter() - start) / CALLS


if __name__ == "__main__":
    main()
