"""The price table: snapshot prices, dated changes, tiers, off-peak hours, batch and service-tier prices,
overrides, discounts and checks.

Expected costs are worked out by hand from the prices published in the bundled genai-prices
snapshot (USD per million tokens), and cross-checked against genai-prices' own calculator.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price

from meterline.config import ConfigError
from meterline.events.schema import UsageEvent
from meterline.pricing.rates import ModelRates, cost_usd
from meterline.pricing.table import PERIODS_SCHEMA, PriceTable
from meterline.pricing.variants import BATCH, pricing_variant, tier_variant

PROVIDERS = {"openai": "openai", "anthropic": "anthropic", "deepseek": "deepseek", "local": None}
SEPT = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)
SNAPSHOT = version("genai-prices")  # the installed release's price data: it names the table's version
NOV = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)  # after genai-prices' tier (12 Oct) and batch (14 Oct) prices start


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load(None, PROVIDERS)


def with_overrides(tmp_path: Path, text: str, providers: dict[str, str | None] = PROVIDERS) -> PriceTable:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    return PriceTable.load(path, providers)


def cost(
    table: PriceTable, provider: str, model: str, at: datetime = SEPT, variant: str = "", **tokens: int
) -> float | None:
    priced = table.price(provider, model, at, variant=variant, **{"input_tokens": 0, "output_tokens": 0, **tokens})
    return None if priced is None else priced.cost_usd


def test_gpt_4o_mini_dated_name_prices_cached_input_at_half(table: PriceTable) -> None:
    # 6,000 uncached x $0.15 + 4,000 cached x $0.075 + 2,000 output (reasoning included) x $0.6
    priced = table.price(
        "openai", "gpt-4o-mini-2024-07-18", SEPT, input_tokens=10_000, output_tokens=2_000, cache_read_tokens=4_000
    )
    assert priced is not None
    assert priced.cost_usd == pytest.approx((6_000 * 0.15 + 4_000 * 0.075 + 2_000 * 0.6) / 1e6)
    assert priced.price_version == f"genai-prices-{SNAPSHOT}+no-overrides"


def test_claude_sonnet_4_5_prices_reads_and_both_cache_write_ttls(table: PriceTable) -> None:
    # input 100k = 20k uncached + 50k read + 30k written (10k of them with the 1-hour TTL)
    expected = (20_000 * 3 + 50_000 * 0.3 + 20_000 * 3.75 + 10_000 * 6 + 1_000 * 15) / 1e6
    assert cost(
        table,
        "anthropic",
        "claude-sonnet-4-5-20250929",
        input_tokens=100_000,
        output_tokens=1_000,
        cache_read_tokens=50_000,
        cache_write_tokens=30_000,
        cache_write_1h_tokens=10_000,
    ) == pytest.approx(expected)


def test_long_context_tier_prices_every_token_above_200k_input(table: PriceTable) -> None:
    at_threshold = cost(table, "anthropic", "claude-sonnet-4-5", input_tokens=200_000, output_tokens=1_000)
    above = cost(table, "anthropic", "claude-sonnet-4-5", input_tokens=200_001, output_tokens=1_000)
    assert at_threshold == pytest.approx((200_000 * 3 + 1_000 * 15) / 1e6)
    assert above == pytest.approx((200_001 * 6 + 1_000 * 22.5) / 1e6)
    # cache reads and writes count toward the threshold and pay their tier rates too
    with_cache = cost(
        table,
        "anthropic",
        "claude-sonnet-4-5",
        input_tokens=250_000,
        output_tokens=2_000,
        cache_read_tokens=100_000,
        cache_write_tokens=50_000,
        cache_write_1h_tokens=20_000,
    )
    assert with_cache == pytest.approx((100_000 * 6 + 100_000 * 0.6 + 30_000 * 7.5 + 20_000 * 12 + 2_000 * 22.5) / 1e6)


def test_dated_price_change_prices_old_calls_at_the_old_price(table: PriceTable) -> None:
    # o3 went from $10/$40 to $2/$8 on 2025-06-10 (UTC)
    before = datetime(2025, 6, 9, 23, 59, tzinfo=UTC)
    after = datetime(2025, 6, 10, 0, 0, tzinfo=UTC)
    assert cost(table, "openai", "o3", before, input_tokens=1_000_000, output_tokens=1_000_000) == pytest.approx(50)
    assert cost(table, "openai", "o3", after, input_tokens=1_000_000, output_tokens=1_000_000) == pytest.approx(10)
    naive_before = datetime(2025, 6, 9, 23, 59)
    assert cost(table, "openai", "o3", naive_before, input_tokens=1_000_000) == pytest.approx(10)

    first, second = table.periods("openai", "o3")
    assert (first.effective_from, first.effective_to) == (None, after)
    assert (second.effective_from, second.effective_to) == (after, None)
    assert (first.rates.input, second.rates.input) == (10, 2)


def test_off_peak_hours_follow_genai_prices_by_utc_time_of_day(table: PriceTable) -> None:
    # deepseek-chat: standard $0.27 input from 00:30 to 16:30 UTC, off-peak $0.135 otherwise
    noon, evening = datetime(2026, 9, 1, 12, tzinfo=UTC), datetime(2026, 9, 1, 20, tzinfo=UTC)
    assert cost(table, "deepseek", "deepseek-chat", noon, input_tokens=1_000_000) == pytest.approx(0.27)
    assert cost(table, "deepseek", "deepseek-chat", evening, input_tokens=1_000_000) == pytest.approx(0.135)
    windows = {
        (p.day_seconds_from, p.day_seconds_to): p.rates.input for p in table.periods("deepseek", "deepseek-chat")
    }
    assert windows == {(0, 1_800): 0.135, (1_800, 59_400): 0.27, (59_400, 86_400): 0.135}


@pytest.mark.parametrize(
    ("provider", "model", "at"),
    [
        ("openai", "gpt-4o-mini-2024-07-18", SEPT),
        ("openai", "o3", datetime(2025, 1, 1, tzinfo=UTC)),
        ("openai", "o3", SEPT),
        ("openai", "gpt-5.6-sol", datetime(2026, 8, 20, tzinfo=UTC)),
        ("openai", "gpt-5.6-sol", SEPT),
        ("anthropic", "claude-opus-4-6", datetime(2026, 3, 12, tzinfo=UTC)),
        ("anthropic", "claude-opus-4-6", SEPT),
        ("anthropic", "claude-3-5-haiku-latest", SEPT),
        ("deepseek", "deepseek-v4-pro", datetime(2026, 8, 1, 2, tzinfo=UTC)),
        ("deepseek", "deepseek-v4-pro", datetime(2026, 8, 1, 12, tzinfo=UTC)),
        ("deepseek", "deepseek-v4-pro", datetime(2026, 9, 1, 12, tzinfo=UTC)),
    ],
)
@pytest.mark.parametrize("input_tokens", [100_000, 300_000])
def test_costs_agree_with_genai_prices_own_calculator(
    table: PriceTable, provider: str, model: str, at: datetime, input_tokens: int
) -> None:
    tokens = {
        "input_tokens": input_tokens,
        "output_tokens": 3_000,
        "cache_read_tokens": 40_000,
        "cache_write_tokens": 20_000,
        "cache_write_1h_tokens": 5_000,
    }
    theirs = calc_price(Usage(**tokens), model, provider_id=provider, genai_request_timestamp=at).total_price
    assert cost(table, provider, model, at, **tokens) == pytest.approx(float(theirs))


def test_unknown_model_and_unpriced_provider_give_none_not_zero(table: PriceTable) -> None:
    assert cost(table, "openai", "no-such-model", input_tokens=1_000) is None
    # an openai_compatible provider without pricing_provider is not guessed from hosted providers
    assert cost(table, "local", "gpt-4o-mini", input_tokens=1_000) is None
    assert table.periods("local", "gpt-4o-mini") == []


def test_a_provider_name_that_is_not_configured_is_taken_as_a_genai_prices_id(table: PriceTable) -> None:
    assert cost(table, "mistral", "mistral-small-latest", input_tokens=1_000) is not None


def test_gpu_hour_overrides_amortise_to_per_token_rates(tmp_path: Path) -> None:
    table = with_overrides(
        tmp_path,
        """
models:
  - provider: local
    model: qwen-32b
    gpu: {usd_per_hour: 2.50, input_tokens_per_hour: 20000000, output_tokens_per_hour: 2500000}
  - provider: local
    match: "llama-*"
    gpu: {usd_per_hour: 3.00, tokens_per_hour: 3000000}
""",
    )
    # $2.50 / 20M input tokens = $0.125 per million; $2.50 / 2.5M output tokens = $1 per million
    assert cost(table, "local", "qwen-32b", input_tokens=1_000_000, output_tokens=100_000) == pytest.approx(0.225)
    # $3 / 3M tokens = $1 per million, input and output alike
    assert cost(table, "local", "llama-3.1-70b", input_tokens=500_000, output_tokens=500_000) == pytest.approx(1.0)
    digest = hashlib.sha256((tmp_path / "prices.yaml").read_bytes()).hexdigest()[:8]
    assert table.version == f"genai-prices-{SNAPSHOT}+overrides-{digest}"


def test_a_later_dated_entry_corrects_a_price_from_its_date_and_exact_beats_glob(tmp_path: Path) -> None:
    table = with_overrides(
        tmp_path,
        """
models:
  - {provider: local, model: llama-3.1-70b, input_mtok: 0.4, output_mtok: 0.8}
  - {provider: local, match: "llama-*", input_mtok: 9, output_mtok: 9}
  - {provider: local, model: llama-3.1-70b, effective_from: 2026-06-01, input_mtok: 0.5, output_mtok: 1.0}
""",
    )
    may, june = datetime(2026, 5, 31, 23, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    assert cost(table, "local", "llama-3.1-70b", may, input_tokens=1_000_000, output_tokens=1_000_000) == 1.2
    assert cost(table, "local", "llama-3.1-70b", june, input_tokens=1_000_000, output_tokens=1_000_000) == 1.5
    assert cost(table, "local", "llama-3.2-1b", may, input_tokens=1_000_000) == 9
    assert [p.source for p in table.periods("local", "llama-3.1-70b")] == ["override models[0]", "override models[2]"]


def test_an_override_replaces_the_snapshot_price_from_its_date(tmp_path: Path) -> None:
    table = with_overrides(
        tmp_path,
        """
models:
  - provider: openai
    model: gpt-4o-mini
    effective_from: 2026-10-01
    input_mtok: 0.1
    output_mtok: 0.4
    cache_read_mtok: 0.05
""",
        {"openai-eu": "openai"},  # overrides for the genai-prices id apply to every provider priced by it
    )
    september = cost(table, "openai-eu", "gpt-4o-mini-2024-07-18", SEPT, input_tokens=1_000_000)
    october = cost(
        table, "openai-eu", "gpt-4o-mini-2024-07-18", datetime(2026, 10, 2, tzinfo=UTC), input_tokens=1_000_000
    )
    assert (september, october) == (pytest.approx(0.15), pytest.approx(0.1))


def test_a_discount_applies_from_its_date_to_matching_models_only(tmp_path: Path) -> None:
    table = with_overrides(
        tmp_path,
        """
discounts:
  - provider: openai
    models: ["gpt-4o*"]
    percent: 15
    effective_from: 2026-06-01
  - provider: openai
    percent: 0
    effective_from: 2026-10-01
""",
    )
    may, june = datetime(2026, 5, 31, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)
    assert cost(table, "openai", "gpt-4o", may, input_tokens=1_000_000, output_tokens=1_000_000) == pytest.approx(12.5)
    assert cost(table, "openai", "gpt-4o", june, input_tokens=1_000_000, output_tokens=1_000_000) == pytest.approx(
        12.5 * 0.85
    )
    assert cost(table, "openai", "gpt-4o-mini", june, cache_read_tokens=1_000_000, input_tokens=1_000_000) == (
        pytest.approx(0.075 * 0.85)
    )
    assert cost(table, "openai", "gpt-4.1", june, input_tokens=1_000_000) == pytest.approx(2)
    assert table.periods("openai", "gpt-4o")[1].source == "genai-prices openai/gpt-4o + discount 15% (discounts[0])"
    # a later entry supersedes the discount from its date: percent 0 ends it
    october = datetime(2026, 10, 1, tzinfo=UTC)
    assert cost(table, "openai", "gpt-4o", october, input_tokens=1_000_000) == pytest.approx(2.5)


def test_check_reports_unpriced_models_and_overrides_for_unknown_providers(tmp_path: Path) -> None:
    table = with_overrides(
        tmp_path,
        """
models:
  - {provider: locl, model: qwen-32b, input_mtok: 1, output_mtok: 1}
""",
        {**PROVIDERS, "openrouter": "openrouter"},
    )
    report = table.check([("openai", "gpt-4o-mini"), ("local", "qwen-32b"), ("openrouter", "qwen/qwen3-coder-flash")])
    assert not report.ok
    assert report.unpriced == [("local", "qwen-32b"), ("openrouter", "qwen/qwen3-coder-flash")]
    assert any("models[0]" in problem and "'locl'" in problem for problem in report.problems)
    assert any("long-context tiers at [32000, 128000]" in problem for problem in report.problems)
    assert PriceTable.load(None, PROVIDERS).check([("openai", "gpt-4o-mini")]).ok


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n"
            "  - {provider: local, model: a, input_mtok: 1, output_mtok: 1}\n"
            "  - {provider: local, model: qwen-32b, input_mtok: 1}",
            "models[1] (local/qwen-32b): input_mtok and output_mtok are required",
        ),
        (
            "models:\n"
            "  - {provider: local, model: q, gpu: {usd_per_hour: 2, tokens_per_hour: 5, output_tokens_per_hour: 5}}",
            "models[0] (local/q).gpu: give either tokens_per_hour",
        ),
        (
            "models:\n"
            "  - {provider: local, model: q, input_mtok: 1, output_mtok: 1, tier_threshold: 9, tier_input_mtok: 2}",
            "models[0] (local/q): tier_threshold needs tier_input_mtok and tier_output_mtok",
        ),
        (
            "models:\n  - {provider: local, model: q, match: 'q*', input_mtok: 1, output_mtok: 1}",
            "models[0] (local/q): give exactly one of model",
        ),
        (
            "models:\n  - {provider: local, model: q, input_mtok: -1, output_mtok: 1}",
            "models[0] (local/q).input_mtok: Input should be greater than or equal to 0",
        ),
        (
            "models:\n  - {provider: local, model: q, input_mtk: 1, output_mtok: 1}",
            "models[0] (local/q).input_mtk: unknown field",
        ),
        (
            "discounts:\n  - {provider: openai, percent: 150}",
            "discounts[0] (openai).percent: Input should be less than or equal to 100",
        ),
        ("models: [", "not valid YAML"),
    ],
)
def test_malformed_overrides_raise_config_error_naming_the_entry(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        with_overrides(tmp_path, text)
    assert expected in str(error.value)
    assert str(tmp_path / "prices.yaml") in str(error.value)


def test_unknown_pricing_provider_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"providers\.gateway\.pricing_provider: 'opnai'"):
        PriceTable.load(None, {"gateway": "opnai"})


def test_periods_arrow_rows_carry_resolved_rates_and_tiers(table: PriceTable) -> None:
    periods = table.periods_arrow(
        [("openai", "o3", ""), ("anthropic", "claude-sonnet-4-5", ""), ("local", "nothing", "")]
    )
    assert periods.schema == PERIODS_SCHEMA
    rows = periods.to_pylist()
    assert [(row["model"], row["input_mtok"], row["cache_write_mtok"]) for row in rows] == [
        ("o3", 10, 10),
        ("o3", 2, 2),
        ("claude-sonnet-4-5", 3, 3.75),
    ]
    sonnet = rows[2]
    assert (sonnet["tier_threshold"], sonnet["tier_input_mtok"], sonnet["tier_cache_write_1h_mtok"]) == (200_000, 6, 12)
    assert rows[0]["tier_threshold"] is None and rows[0]["effective_to"] == datetime(2025, 6, 10, tzinfo=UTC)


def test_describe_shows_each_period_kind_and_source(table: PriceTable) -> None:
    text = table.describe("openai", "o3")
    assert "until 2025-06-10  [genai-prices openai/o3]" in text
    assert "from 2025-06-10  [genai-prices openai/o3]" in text
    assert "cache read      $0.5" in text
    assert "service tier flex calls:" in text and "[genai-prices openai/o3 (service_tier=flex)]" in text
    assert "batch calls:" in text
    assert "above 200,000 input tokens" in table.describe(None, "claude-sonnet-4-5")
    assert "no configured provider has a price" in table.describe(None, "mistral-small-latest")


def test_cost_usd_falls_back_to_input_rates_for_cache_kinds() -> None:
    rates = ModelRates(input=2, output=8)
    assert cost_usd(
        rates,
        input_tokens=1_000,
        output_tokens=10,
        cache_read_tokens=300,
        cache_write_tokens=200,
        cache_write_1h_tokens=100,
    ) == pytest.approx((1_000 * 2 + 10 * 8) / 1e6)
    with pytest.raises(ValueError, match="tier_cache_read"):
        ModelRates(input=1, output=1, cache_read=0.1, tier_threshold=10, tier_input=2, tier_output=2)


def test_batch_and_tier_calls_pay_genai_prices_variant_prices(table: PriceTable) -> None:
    tokens = {"input_tokens": 10_000, "output_tokens": 2_000, "cache_read_tokens": 4_000}
    # gpt-5-mini flex: 6,000 uncached x $0.125 + 4,000 cached x $0.0125 + 2,000 output x $1
    flex = cost(table, "openai", "gpt-5-mini", NOV, tier_variant("flex"), **tokens)
    assert flex == pytest.approx((6_000 * 0.125 + 4_000 * 0.0125 + 2_000 * 1.0) / 1e6)
    # gpt-4o-mini batch: $0.075 input and $0.30 output; genai-prices lists no cached batch rate, so the standard $0.075
    batch = cost(table, "openai", "gpt-4o-mini", NOV, BATCH, **tokens)
    assert batch == pytest.approx((6_000 * 0.075 + 4_000 * 0.075 + 2_000 * 0.3) / 1e6)
    for variant, context in ((tier_variant("flex"), {"service_tier": "flex"}), (BATCH, {"processing": "batch"})):
        for model in ("gpt-5-mini", "gpt-4o-mini", "o3"):
            theirs = calc_price(
                Usage(**tokens), model, provider_id="openai", genai_request_timestamp=NOV, price_context=context
            )
            assert cost(table, "openai", model, NOV, variant, **tokens) == pytest.approx(float(theirs.total_price))
    # a tier genai-prices has no price for (Anthropic's Priority Tier is negotiated) pays the standard price
    assert cost(table, "anthropic", "claude-haiku-4-5", NOV, tier_variant("priority"), **tokens) == cost(
        table, "anthropic", "claude-haiku-4-5", NOV, **tokens
    )


def test_batch_calls_before_genai_prices_lists_batch_prices_pay_half_the_standard_price(table: PriceTable) -> None:
    # 6,000 uncached x $0.075 + 4,000 cached x $0.0375 + 2,000 output x $0.30: half of every standard rate
    tokens = {"input_tokens": 10_000, "output_tokens": 2_000, "cache_read_tokens": 4_000}
    assert cost(table, "openai", "gpt-4o-mini", SEPT, BATCH, **tokens) == pytest.approx(
        (6_000 * 0.075 + 4_000 * 0.0375 + 2_000 * 0.3) / 1e6
    )
    (before, after) = table.periods("openai", "gpt-4o-mini", BATCH)
    assert before.source == "genai-prices openai/gpt-4o-mini (meterline's default batch price, 50% of standard)"
    assert after.source == "genai-prices openai/gpt-4o-mini (processing=batch)"


def test_an_event_pays_the_price_of_its_tier_or_batch(table: PriceTable) -> None:
    def event(**fields: object) -> UsageEvent:
        return UsageEvent(
            event_id="e",
            request_id="r",
            started_at=NOV,
            ended_at=NOV,
            duration_ms=0,
            operation="chat",
            provider="openai",
            requested_model="gpt-4o-mini",
            status_code=200,
            input_tokens=1_000_000,
            **fields,  # type: ignore[arg-type]
        )

    assert table.price_event(event()).cost_usd == pytest.approx(0.15)  # type: ignore[union-attr]
    assert table.price_event(event(service_tier="default")).cost_usd == pytest.approx(0.15)  # type: ignore[union-attr]
    assert table.price_event(event(service_tier="priority")).cost_usd == pytest.approx(0.25)  # type: ignore[union-attr]
    batch = event(batch_id="batch_1", service_tier="default")
    assert table.price_event(batch).cost_usd == pytest.approx(0.075)  # type: ignore[union-attr]
    assert (pricing_variant("default", "batch_1"), pricing_variant("batch", None)) == (BATCH, BATCH)


def test_variant_overrides_beat_genai_prices_and_a_model_override_keeps_only_overrides(tmp_path: Path) -> None:
    table = with_overrides(
        tmp_path,
        """
models:
  - {provider: openai, model: gpt-4.1, input_mtok: 1.0, output_mtok: 4.0}
variants:
  - {provider: openai, processing: batch, models: ["gpt-5*"], percent_of_standard: 40}
  - {provider: openai, service_tier: flex, models: ["gpt-5-mini"], input_mtok: 0.1, output_mtok: 0.8,
     effective_from: 2026-11-01}
  - {provider: anthropic, service_tier: priority, percent_of_standard: 125}
discounts:
  - {provider: openai, models: ["gpt-5-mini"], percent: 10}
""",
    )
    million = {"input_tokens": 1_000_000}
    # 40% of gpt-5-mini's $0.25, then the 10% discount
    assert cost(table, "openai", "gpt-5-mini", NOV, BATCH, **million) == pytest.approx(0.25 * 0.4 * 0.9)
    # the flex override from 1 November; before it genai-prices' flex price ($0.125); the discount on top of both
    assert cost(table, "openai", "gpt-5-mini", NOV, tier_variant("flex"), **million) == pytest.approx(0.1 * 0.9)
    october = datetime(2026, 10, 20, tzinfo=UTC)
    assert cost(table, "openai", "gpt-5-mini", october, tier_variant("flex"), **million) == pytest.approx(0.125 * 0.9)
    # gpt-4.1's standard price is overridden: genai-prices' batch and priority prices no longer apply to it
    assert cost(table, "openai", "gpt-4.1", NOV, BATCH, **million) == pytest.approx(0.5)
    assert cost(table, "openai", "gpt-4.1", NOV, tier_variant("priority"), **million) == pytest.approx(1.0)
    assert cost(table, "anthropic", "claude-haiku-4-5", NOV, tier_variant("priority"), **million) == pytest.approx(1.25)
    text = table.describe("openai", "gpt-5-mini")
    assert "at 40% (variants[0]) + discount 10% (discounts[0])" in text
    assert "[override variants[1] + discount 10% (discounts[0])]" in text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "variants:\n  - {provider: openai, percent_of_standard: 50}",
            "variants[0] (openai): give exactly one of processing: batch or service_tier",
        ),
        (
            "variants:\n  - {provider: openai, processing: batch}",
            "variants[0] (openai/batch): give either percent_of_standard or input_mtok and output_mtok",
        ),
        (
            "variants:\n  - {provider: openai, service_tier: flex, percent_of_standard: 50, input_mtok: 1}",
            "variants[0] (openai/flex): give either percent_of_standard or input_mtok and output_mtok",
        ),
        (
            "variants:\n  - {provider: openai, processing: online, percent_of_standard: 50}",
            "variants[0] (openai/online).processing: Input should be 'batch'",
        ),
    ],
)
def test_malformed_variant_overrides_name_the_entry(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        with_overrides(tmp_path, text)
    assert expected in str(error.value)
