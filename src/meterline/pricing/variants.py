"""Price variants: the prices a call pays other than the standard one (batch processing, service tiers).

A call's variant is named the way genai-prices names the request context that selects its
`price_variants`: `processing=batch` for a result of a provider batch (an event with a
`batch_id`, or an Anthropic `service_tier` of `batch`), `service_tier=<tier>` for a call the
provider served in a tier (OpenAI `flex`, `priority`, `default`; Anthropic `standard`,
`priority`), and "" for the standard price. `meterline.analytics.cost` computes the same name in
SQL (`VARIANT_SQL`), so re-priced history pays what the gateway charged.

Where the price of a variant comes from, first match wins (see `meterline.pricing.table`): a
`variants` entry of the overrides file; genai-prices' own variant prices, when it lists the
variant for the model at the call's date and no override replaced the model's standard price;
for batch calls only, `DEFAULT_BATCH_PERCENT` of the standard price; otherwise the standard price.
"""

from __future__ import annotations

BATCH = "processing=batch"
DEFAULT_BATCH_PERCENT = 50.0
"""Batch calls pay this share of the standard rates when neither an override nor genai-prices prices them.

OpenAI's published Batch API price is 50% of the standard price (as are Anthropic's and
Google's); a `variants` entry with `processing: batch` in the overrides file replaces it.
"""

VARIANT_SQL = (
    "CASE WHEN e.batch_id IS NOT NULL OR e.service_tier = 'batch' THEN 'processing=batch' "
    "WHEN e.service_tier IS NOT NULL THEN concat('service_tier=', e.service_tier) ELSE '' END"
)
"""`pricing_variant` of the events table's row `e`, in the query layer's SQL dialect."""


def pricing_variant(service_tier: str | None, batch_id: str | None) -> str:
    """The variant a call pays: `processing=batch`, `service_tier=<tier>`, or "" (standard)."""
    if batch_id is not None or service_tier == "batch":
        return BATCH
    return "" if service_tier is None else tier_variant(service_tier)


def tier_variant(service_tier: str) -> str:
    return f"service_tier={service_tier}"


def variant_context(variant: str) -> dict[str, str]:
    """The genai-prices price context of a variant ({} for the standard price)."""
    if not variant:
        return {}
    key, _, value = variant.partition("=")
    return {key: value}


def describe_variant(variant: str) -> str:
    """A variant as people say it: "batch", "service tier flex", "standard"."""
    if variant == BATCH:
        return "batch"
    context = variant_context(variant)
    return f"service tier {context['service_tier']}" if "service_tier" in context else variant or "standard"
