"""System-prompt tax: the same leading prompt (system instructions and tools) sent again and again without caching.

Calls are grouped by feature, app, model and `prefix_hash`; only prefixes of at least
`MIN_CACHEABLE_TOKENS` estimated tokens count (the smallest prompt OpenAI and Anthropic cache).
A call paid for its prefix in full when it read fewer cache tokens than half the prefix. Had
the prefix been cached, such a call would have read it at the cached-input price when the same
prefix (on the same provider and model) was last sent at most `CACHE_TTL_S` before (the cache
lives five minutes and each use refreshes it), and written it at the cache-write price otherwise.

Dollars: what the uncached prefixes cost (their tokens at the input price). Saving: the warm
calls' prefix tokens at (input - cached input) minus the cold calls' prefix tokens at
(cache write - input), at today's prices. OpenAI caches prompts on its own and charges no
write premium; Anthropic needs `cache_control` breakpoints.
"""

from __future__ import annotations

from meterline.analytics.cost import PRICED_MODEL
from meterline.analytics.insights.finding import ANSWERED, GROUP_SELECT, Finding, Scan, label, money, where_of
from meterline.analytics.params import Statement

MIN_CACHEABLE_TOKENS = 1024
CACHE_TTL_S = 300
MIN_UNCACHED_CALLS = 20

_SEQUENCE = f"OVER (PARTITION BY e.provider, {PRICED_MODEL}, e.prefix_hash ORDER BY e.started_at, e.event_id)"


def detect(scan: Scan) -> list[Finding]:
    statement = Statement()
    sequenced = f"""
        SELECT e.*, row_number() {_SEQUENCE} AS position, lag(epoch_us(e.started_at)) {_SEQUENCE} AS previous_us
        FROM {scan.events(statement)} e
        WHERE {ANSWERED} AND e.prefix_hash IS NOT NULL
            AND e.system_tokens >= {statement.bind(MIN_CACHEABLE_TOKENS)}
    """
    uncached = "e.cache_read_tokens * 2 < e.system_tokens"
    warm = f"e.position > 1 AND epoch_us(e.started_at) - e.previous_us <= {CACHE_TTL_S * 1_000_000}"
    sql = f"""
        SELECT {GROUP_SELECT}, e.prefix_hash AS prefix_hash, count(*) AS calls, max(e.system_tokens) AS system_tokens,
            count(*) FILTER (WHERE {uncached}) AS uncached_calls,
            coalesce(sum(e.system_tokens) FILTER (WHERE {uncached} AND {warm}), 0)::BIGINT AS warm_tokens,
            coalesce(sum(e.system_tokens) FILTER (WHERE {uncached} AND NOT ({warm})), 0)::BIGINT AS cold_tokens
        FROM ({sequenced}) e GROUP BY ALL
        HAVING count(*) FILTER (WHERE {uncached}) >= {statement.bind(MIN_UNCACHED_CALLS)}
    """
    findings = []
    for row in scan.rows(sql, statement):
        rates = scan.rates(row["provider"], row["priced_model"])
        if rates is None:
            continue
        input_rate, _, read_rate, write_rate, _ = rates.resolved
        uncached_tokens = row["warm_tokens"] + row["cold_tokens"]
        usd = scan.per_month(uncached_tokens * input_rate / 1e6)
        saving = scan.per_month(
            (row["warm_tokens"] * (input_rate - read_rate) - row["cold_tokens"] * (write_rate - input_rate)) / 1e6
        )
        if saving < scan.min_usd:
            continue
        where = where_of(row, prefix_hash=row["prefix_hash"])
        anthropic = row["provider"] == "anthropic" or row["priced_model"].startswith("claude")
        how = (
            "mark the end of the system prompt (and tools) with cache_control: {type: ephemeral}"
            if anthropic
            else "keep the static system prompt and tools first and byte-identical, with what changes per call "
            "after them, so the provider's automatic prompt caching can reuse the prefix"
        )
        findings.append(
            Finding(
                detector="system_prompt_tax",
                title="The same system prompt is paid for in full on every call",
                where=where,
                summary=(
                    f"{label(where)} sent the same {row['system_tokens']:,}-token prefix {row['calls']:,} times, "
                    f"{row['uncached_calls']:,} of them without a cache read: {money(usd)} a month; "
                    f"prompt caching would save about {money(saving)}"
                ),
                evidence={
                    "calls": row["calls"],
                    "uncached_calls": row["uncached_calls"],
                    "prefix_tokens": row["system_tokens"],
                    "warm_prefix_tokens": row["warm_tokens"],
                    "cold_prefix_tokens": row["cold_tokens"],
                    "input_usd_per_mtok": input_rate,
                    "cached_input_usd_per_mtok": read_rate,
                    "cache_write_usd_per_mtok": write_rate,
                },
                usd_per_month=usd,
                saving_usd_per_month=saving,
                fix=f"Cache the prompt prefix: {how}",
                assumptions=(
                    f"prefix tokens are estimated from the request; a cache entry is taken to live {CACHE_TTL_S} s "
                    "from its last use"
                ),
            )
        )
    return findings
