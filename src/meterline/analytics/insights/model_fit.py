"""Model mismatch: a feature paying for a large model to do a small model's job (short, classification-like answers).

Per feature, app and model, over answered chat-style calls: the calls are classification-like
when there are at least `MIN_CALLS`, 90% of the answers are at most `MAX_P90_OUTPUT_TOKENS`
tokens and at most `MAX_DISTINCT_LENGTHS` distinct answer lengths occur (answer text is not
stored, so few distinct lengths stands in for few distinct answers).

The cheaper model is the cheapest one of the same provider that is configured on the gateway or
already used for chat-style calls in the window, that has an output price (not an embedding
model), and that would cost at most `MAX_PRICE_SHARE` of the current model for the same tokens.
Dollars: the feature's tokens on its model at today's prices; saving: that minus the same tokens
on the cheaper model. Quality is not measured here: try the cheaper model on a sample first.
"""

from __future__ import annotations

from meterline.analytics.cost import PRICED_MODEL
from meterline.analytics.insights.finding import (
    ANSWERED,
    CHAT_CALLS,
    GROUP_SELECT,
    TOKEN_SUMS,
    Finding,
    Scan,
    label,
    money,
    token_cost,
    token_counts,
    where_of,
)
from meterline.analytics.params import Statement

MIN_CALLS = 50
MAX_P90_OUTPUT_TOKENS = 32
MAX_DISTINCT_LENGTHS = 8
MAX_PRICE_SHARE = 0.5


def detect(scan: Scan) -> list[Finding]:
    statement = Statement()
    sql = f"""
        SELECT {GROUP_SELECT}, count(*) AS calls, {TOKEN_SUMS},
            quantile_cont(e.output_tokens, 0.9) AS p90_output, median(e.output_tokens) AS median_output,
            count(DISTINCT e.output_tokens) AS distinct_lengths
        FROM {scan.events(statement)} e WHERE {ANSWERED} AND {CHAT_CALLS}
        GROUP BY ALL
        HAVING count(*) >= {statement.bind(MIN_CALLS)}
            AND quantile_cont(e.output_tokens, 0.9) <= {statement.bind(MAX_P90_OUTPUT_TOKENS)}
            AND count(DISTINCT e.output_tokens) <= {statement.bind(MAX_DISTINCT_LENGTHS)}
    """
    rows = scan.rows(sql, statement)
    if not rows:
        return []
    candidates = _candidates(scan)
    findings = []
    for row in rows:
        rates = scan.rates(row["provider"], row["priced_model"])
        if rates is None:
            continue
        tokens = token_counts(row)
        current = token_cost(rates.resolved, tokens)
        others = candidates.get(row["provider"], set()) - {row["priced_model"], row["model"]}
        cheapest = _cheapest(scan, row["provider"], others, tokens)
        if cheapest is None or cheapest[1] > MAX_PRICE_SHARE * current:
            continue
        model, cheaper = cheapest
        usd, saving = scan.per_month(current), scan.per_month(current - cheaper)
        if saving < scan.min_usd:
            continue
        where = where_of(row)
        findings.append(
            Finding(
                detector="model_mismatch",
                title="A large model does a small model's job",
                where=where,
                summary=(
                    f"{label(where)} answers {row['calls']:,} calls in at most {row['p90_output']:.0f} tokens "
                    f"(90th percentile) with {row['distinct_lengths']} distinct lengths: classification-like work "
                    f"costing {money(usd)} a month; {model} would cost {money(scan.per_month(cheaper))}"
                ),
                evidence={
                    "calls": row["calls"],
                    "median_output_tokens": row["median_output"],
                    "p90_output_tokens": row["p90_output"],
                    "distinct_output_lengths": row["distinct_lengths"],
                    "cheaper_model": model,
                    "cost_on_cheaper_model_usd_per_month": scan.per_month(cheaper),
                },
                usd_per_month=usd,
                saving_usd_per_month=saving,
                fix=f"Route this feature to {model} (same provider), after checking its answers on a sample",
                assumptions="quality is not measured here: the saving assumes the cheaper model answers as well",
            )
        )
    return findings


def _candidates(scan: Scan) -> dict[str, set[str]]:
    """Models each provider could route to: the configured ones and those used for chat-style calls in the window."""
    statement = Statement()
    events = scan.events(statement)
    sql = f"SELECT DISTINCT e.provider AS provider, {PRICED_MODEL} AS model FROM {events} e WHERE {CHAT_CALLS}"
    candidates: dict[str, set[str]] = {}
    for row in scan.rows(sql, statement):
        candidates.setdefault(row["provider"], set()).add(row["model"])
    for model in scan.call.models:
        candidates.setdefault(model.provider, set()).add(model.upstream_name)
    return candidates


def _cheapest(scan: Scan, provider: str, models: set[str], tokens: tuple[int, ...]) -> tuple[str, float] | None:
    """The model of `provider` that would cost least for `tokens` (one with an output price), and that cost."""
    priced: list[tuple[float, str]] = []
    for model in sorted(models):
        rates = scan.rates(provider, model)
        if rates is not None and rates.output > 0:
            priced.append((token_cost(rates.resolved, tokens), model))
    if not priced:
        return None
    cost, model = min(priced)
    return model, cost
