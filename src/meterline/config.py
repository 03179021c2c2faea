"""One typed configuration for meterline: a YAML file with ${ENV_VAR} interpolation, validated at start-up.

A bad file fails fast with `ConfigError`, whose message names the field and says how to fix it.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which field and what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


MAX_RETRIES = 10
"""The most retries any model, key or request may ask for."""


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=1, le=65535)
    master_key: str | None = Field(None, min_length=8)
    max_body_mb: float = Field(20, gt=0)
    metrics_token: str | None = Field(
        None,
        min_length=8,
        description="when set, GET /metrics needs 'Authorization: Bearer <metrics_token>' (or the master key); "
        "a scrape-only secret, so Prometheus need not hold the master key",
    )

    def metrics_tokens(self) -> tuple[str, ...]:
        """The bearer tokens `GET /metrics` accepts; none when it is open to every caller."""
        if self.metrics_token is None:
            return ()
        return tuple(token for token in (self.metrics_token, self.master_key) if token)


class StoreConfig(_Section):
    kind: str = "duckdb"
    path: Path = Path("./meterline-data/meterline.duckdb")
    spool_dir: Path = Path("./meterline-data/spool")
    control_path: Path = Field(
        Path("./meterline-data/control.sqlite"),
        description="SQLite file for virtual keys and budgets, shared by every process on the machine "
        "(default: control.sqlite beside the store file)",
    )
    flush_interval_ms: int = Field(
        1000, ge=10, description="how often the spool is loaded into the store (each load has a fixed cost)"
    )
    fsync_interval_ms: int = Field(200, ge=10, description="how often spool writes are fsynced")
    loader: Literal["embedded", "external"] = Field(
        "embedded",
        description="embedded: the gateway loads its spool into the store; external: it only writes the spool "
        "and a separate `meterline ingest` process loads it (needs a store several processes can open)",
    )
    url: str | None = Field(
        None, description="kind clickhouse: http(s)://host:port of the server, or chdb:///folder for in-process chDB"
    )
    database: str = Field("meterline", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    user: str = "default"
    password: str = ""
    retention_days: int | None = Field(None, ge=1, description="kind clickhouse: events older than this are dropped")

    @model_validator(mode="after")
    def _kind_settings(self) -> StoreConfig:
        if self.kind == "clickhouse" and not self.url:
            raise ValueError(
                "store.url is required for kind clickhouse, e.g. url: http://clickhouse:8123 "
                "(or chdb:///var/lib/meterline/chdb for the in-process engine)"
            )
        if self.kind == "duckdb" and self.retention_days is not None:
            raise ValueError("store.retention_days applies to kind clickhouse only; remove it for duckdb")
        if self.kind == "duckdb" and self.loader == "external":
            raise ValueError(
                "store.loader: external needs a store several processes can open (kind clickhouse); "
                "a DuckDB file admits one writing process"
            )
        return self


class PricingConfig(_Section):
    overrides: Path | None = None


class TimeoutConfig(_Section):
    connect_s: float = Field(10, gt=0)
    first_byte_s: float = Field(
        120, gt=0, description="from sending the request to the answer's headers and, for a stream, its first event"
    )
    idle_s: float = Field(60, gt=0, description="longest silence between two parts of a stream")
    total_s: float = Field(600, gt=0)


class ProviderConfig(_Section):
    kind: str
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = {}
    pricing_provider: str | None = Field(
        None, description="genai-prices provider id to price this provider's models by (default: from kind)"
    )
    deployments: dict[str, str] = Field(
        {},
        description="upstream model or deployment name -> the model it runs, which prices it "
        "(an Azure deployment, a self-hosted server's served-model name)",
    )
    api_version: str | None = Field(
        None,
        min_length=1,
        description="kind azure_openai: call /openai/deployments/<deployment>/...?api-version=<this> "
        "(unset: the v1 API, /openai/v1/...)",
    )
    stream_usage: Literal["request", "included"] | None = Field(
        None,
        description="OpenAI-format streams: 'request' adds stream_options.include_usage; 'included' sends the "
        "body unchanged, for servers that put usage in their last chunk themselves and reject stream_options "
        "(default: included for pricing_provider mistral, groq, together and openrouter, else request)",
    )
    timeout: TimeoutConfig = TimeoutConfig()

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class ModelConfig(_Section):
    name: str = Field(min_length=1)
    provider: str
    upstream_model: str | None = None
    retries: int | None = Field(
        None,
        ge=0,
        le=MAX_RETRIES,
        description="retries of a retryable failure on this model (default: resilience.retries)",
    )
    fallbacks: list[str] = Field([], description="configured models tried in order when this one keeps failing")
    context_window: int | None = Field(
        None, gt=0, description="maximum input tokens (default: from the price table's data, when it lists one)"
    )

    @field_validator("fallbacks")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        twice = sorted({value for value in values if values.count(value) > 1})
        if twice:
            raise ValueError(f"fallbacks lists {', '.join(twice)} more than once")
        return values

    @property
    def upstream_name(self) -> str:
        return self.upstream_model or self.name


BUDGET_SCOPES = ("key", "team", "app", "user", "feature", "model", "gateway")
BudgetPeriod = Literal["hour", "day", "week", "month"]
BudgetAction = Literal["alert", "throttle", "downgrade", "block"]


class BudgetConfig(_Section):
    """One budget: a scope, a calendar period, a limit in USD and/or tokens, and what to do when it is reached."""

    name: str = Field("", description="unique; default '<scope>:<period>', e.g. 'team:search:day'")
    scope: str = Field(description="'gateway', or '<kind>:<value>' with kind key, team, app, user, feature or model")
    period: BudgetPeriod
    limit_usd: float | None = Field(None, gt=0)
    limit_tokens: int | None = Field(None, gt=0, description="input + output tokens")
    actions: list[BudgetAction] = Field(["alert"], min_length=1)
    thresholds: list[float] = Field([80.0, 100.0], description="percentages of the limit at which `alert` notifies")
    downgrade: dict[str, str] = Field({}, description="requested model -> the cheaper model served when over budget")

    @field_validator("scope")
    @classmethod
    def _known_scope(cls, value: str) -> str:
        kind, separator, name = value.partition(":")
        if value == "gateway" or (kind in BUDGET_SCOPES and kind != "gateway" and separator and name):
            return value
        raise ValueError(
            f"scope {value!r} must be 'gateway' or '<kind>:<value>' with kind one of "
            "key, team, app, user, feature, model (e.g. team:search)"
        )

    @field_validator("thresholds")
    @classmethod
    def _percentages(cls, values: list[float]) -> list[float]:
        if any(not 0 < value <= 1000 for value in values):
            raise ValueError("thresholds are percentages of the limit, each above 0 and at most 1000")
        return sorted(set(values))

    @model_validator(mode="after")
    def _consistent(self) -> BudgetConfig:
        if self.limit_usd is None and self.limit_tokens is None:
            raise ValueError("a budget needs limit_usd, limit_tokens or both")
        if "throttle" in self.actions and "block" in self.actions:
            raise ValueError("actions: choose throttle (429 until the period resets) or block (402), not both")
        if ("downgrade" in self.actions) != bool(self.downgrade):
            raise ValueError(
                "the downgrade action needs a downgrade mapping {requested model: cheaper model}, "
                "and a downgrade mapping needs the downgrade action"
            )
        self.actions = list(dict.fromkeys(self.actions))
        self.name = self.name or f"{self.scope}:{self.period}"
        if len(self.name) > 200 or "/" in self.name or not self.name.isprintable():
            raise ValueError(f"name {self.name!r} must be at most 200 printable characters without '/'")
        return self

    @property
    def scope_kind(self) -> str:
        return self.scope.partition(":")[0]

    @property
    def scope_value(self) -> str | None:
        """What the scope names (a team, a user, ...); None for the whole gateway."""
        return self.scope.partition(":")[2] or None


class QuotasConfig(_Section):
    user_rpm: int | None = Field(None, ge=1, description="requests per minute each user may send")
    user_tpm: int | None = Field(None, ge=1, description="tokens per minute (estimated input + output) per user")


class AgentsConfig(_Section):
    """Guardrails for every agent run (requests carrying x-meterline-agent-run)."""

    max_steps: int | None = Field(None, ge=1, description="calls one run may make")
    max_cost_usd: float | None = Field(None, gt=0)
    max_duration_s: float | None = Field(None, gt=0, description="from the run's first call")
    loop_threshold: int | None = Field(
        None, ge=2, description="the same model and normalised prompt this many times in a run is a loop"
    )
    action: Literal["alert", "refuse"] = "refuse"


class BudgetsConfig(_Section):
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = Field(None, description="redis://host:port/db, needed by backend: redis")
    key_prefix: str = Field("meterline:", description="prefix of every Redis key meterline writes")
    timezone: str = Field("UTC", description="the time zone of calendar periods, e.g. Europe/Berlin")
    default_output_tokens: int = Field(
        1024, ge=1, description="output tokens assumed before a call that sets no max_tokens"
    )
    budgets: list[BudgetConfig] = []
    quotas: QuotasConfig = QuotasConfig()
    agents: AgentsConfig = AgentsConfig()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin") from None
        return value

    @property
    def declares_limits(self) -> bool:
        """Whether the file sets any budget, quota or agent guardrail."""
        agents = self.agents.model_dump(exclude={"action"})
        return bool(self.budgets) or self.quotas != QuotasConfig() or any(v is not None for v in agents.values())

    @model_validator(mode="after")
    def _redis_has_url(self) -> BudgetsConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url, e.g. redis://127.0.0.1:6379/0")
        names = [budget.name for budget in self.budgets]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"budget names must be unique; listed more than once: {', '.join(twice)}")
        return self


class WebhookConfig(_Section):
    url: str
    headers: dict[str, str] = {}

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {value!r}")
        return value


class _Rule(_Section):
    enabled: bool = True


class _RecentRule(_Rule):
    """A rule over the last few minutes rather than the last hour."""

    window_minutes: int = Field(15, ge=1, le=1440)
    min_attempts: int = Field(20, ge=1)


class FeatureAnomalyRule(_Rule):
    """Rule 1: a feature's cost in the last hour above its trailing 7-day band (mean + sigmas x sd).

    The sd is that of the history's hours (widened for their small number, as a prediction interval),
    but at least the noise of random arrivals of calls of random cost (the square root of the usual
    sum of squared call costs in an hour).
    """

    sigmas: float = Field(3.0, gt=0)
    min_usd: float = Field(0.25, ge=0, description="the excess over the baseline must be at least this (USD/hour)")
    min_ratio: float = Field(1.5, ge=1, description="and the hour must cost at least this many times the baseline")
    seasonal_after_days: int = Field(
        3, ge=1, le=7, description="compare with the same hour of earlier days once this many days of history exist"
    )


class UserRunawayRule(_Rule):
    """Rule 2: a user's cost in the last hour (or day) at `factor` times their trailing 7-day average."""

    factor: float = Field(10.0, gt=1)
    min_usd_hour: float = Field(1.0, ge=0, description="floor for the hourly check, so tiny users do not page")
    min_usd_day: float = Field(5.0, ge=0, description="floor for the daily check")


class SpendRateRule(_Rule):
    """Rule 3: gateway-wide cost in the last hour above `factor` times the trailing 7-day average for that hour."""

    factor: float = Field(2.0, gt=1)
    min_usd: float = Field(1.0, ge=0)


class CacheHitRule(_Rule):
    """Rule 5: a feature's cache hit rate in the last hour below `fraction` of its trailing 7-day rate."""

    fraction: float = Field(0.5, gt=0, lt=1)
    min_baseline_rate: float = Field(0.1, gt=0, le=1, description="features that rarely hit the cache are skipped")
    min_requests: int = Field(20, ge=1)
    sigmas: float = Field(3.0, ge=0, description="the missing hits must also exceed this many binomial sd (not noise)")


class LatencyRule(_RecentRule):
    """Rule 6: a model's p95 latency over the last `window_minutes` above `p95_ms`."""

    p95_ms: float = Field(30_000, gt=0)
    min_attempts: int = Field(5, ge=1)


class ErrorRateRule(_RecentRule):
    """Rule 7: a provider's error rate over the last `window_minutes` above `rate`."""

    rate: float = Field(0.05, gt=0, lt=1)
    min_errors: int = Field(5, ge=1, description="so that two failures out of thirty do not page")
    sigmas: float = Field(2.0, ge=0, description="errors must exceed the allowed rate by this many binomial sd")


class RetryRule(_Rule):
    """Rule 8: a feature's attempts per logical request in the last hour above `attempts_per_request`."""

    attempts_per_request: float = Field(1.5, gt=1)
    min_requests: int = Field(5, ge=1, description="few calls suffice: a normal hour rarely retries half of them")


class PromptBloatRule(_Rule):
    """Rule 9: a feature's cost per request `factor` times its trailing week while requests stayed within `flat`."""

    factor: float = Field(2.0, gt=1)
    flat: float = Field(1.5, gt=1, description="requests within [1/flat, flat] x the usual count for the hour")
    min_requests: int = Field(20, ge=1)
    min_usd: float = Field(0.1, ge=0, description="the extra cost in the hour must be at least this")


class DivergenceRule(_Rule):
    """Rule 10: a feature's latency and cost per request moving apart by `factor` (queueing / payload growth)."""

    factor: float = Field(2.0, gt=1, description="how much faster one must grow than the other")
    min_change: float = Field(1.5, gt=1, description="the faster one must have grown at least this much")
    min_requests: int = Field(30, ge=1, description="an hour's median latency over fewer calls is mostly noise")


class AlertRulesConfig(_Section):
    feature_anomaly: FeatureAnomalyRule = FeatureAnomalyRule()
    user_runaway: UserRunawayRule = UserRunawayRule()
    spend_rate: SpendRateRule = SpendRateRule()
    cache_hit_rate: CacheHitRule = CacheHitRule()
    latency_p95: LatencyRule = LatencyRule()
    error_rate: ErrorRateRule = ErrorRateRule()
    retry_amplification: RetryRule = RetryRule()
    prompt_bloat: PromptBloatRule = PromptBloatRule()
    latency_cost_divergence: DivergenceRule = DivergenceRule()


class AlertsConfig(_Section):
    webhooks: list[WebhookConfig] = Field([], description="each notice is POSTed to each of these as JSON")
    slack_webhooks: list[WebhookConfig] = Field([], description="Slack-compatible incoming webhooks")
    log: bool = Field(True, description="write each notice to the server log (logger meterline.alerts)")
    evaluate: bool = Field(True, description="run the alert rules in `meterline serve`")
    interval_s: float = Field(60, ge=1, description="how often the server evaluates the rules")
    cooldown_minutes: float = Field(15, ge=0, description="an alert resolves after its condition was clear this long")
    dashboard_url: str | None = Field(None, description="base URL of alert links (default: the server's address)")
    delivery_attempts: int = Field(5, ge=1, le=20, description="tries per notice and notifier")
    delivery_backoff_s: float = Field(2.0, gt=0, description="first retry delay; doubles each try")
    rules: AlertRulesConfig = AlertRulesConfig()


class BackoffConfig(_Section):
    """Exponential backoff with full jitter: retry n waits a random time up to min(max_s, initial_s * 2^(n-1))."""

    initial_s: float = Field(0.5, gt=0)
    max_s: float = Field(8, gt=0)


class BreakerConfig(_Section):
    """A circuit breaker per provider and model: `failures` within `window_s` open it for `cooldown_s`."""

    failures: int | None = Field(
        None, ge=1, description="retryable failures within window_s that open the breaker (unset: no breaker)"
    )
    window_s: float = Field(60, gt=0)
    cooldown_s: float = Field(30, gt=0, description="how long an open breaker skips its model before one probe")
    redis_url: str | None = Field(
        None, description="redis://host:port/db to share breakers' openings and closings between workers and replicas"
    )
    key_prefix: str = Field("meterline:breaker:", description="prefix of the Redis keys and channel breakers use")


class ResilienceConfig(_Section):
    """Retries, the deadline of one request and circuit breakers (a model may set its own `retries`)."""

    retries: int = Field(0, ge=0, le=MAX_RETRIES, description="retries of a retryable failure per model")
    backoff: BackoffConfig = BackoffConfig()
    deadline_s: float = Field(600, gt=0, description="all attempts and waits of one request together")
    breaker: BreakerConfig = BreakerConfig()


class BatchesConfig(_Section):
    """Provider batches (the OpenAI Batch API) passed through the gateway; their results are metered when done."""

    poll_interval_s: float = Field(
        60, gt=0, description="how often batches not yet metered are checked with their provider"
    )


class OtelExportConfig(_Section):
    """OTLP/HTTP (protobuf) export of a span per gateway attempt and GenAI metrics; needs the `otel` extra."""

    enabled: bool = False
    endpoint: str = Field(
        "http://127.0.0.1:4318", description="the collector's base URL; /v1/traces and /v1/metrics are appended"
    )
    traces_endpoint: str | None = Field(None, description="full URL for spans (default: <endpoint>/v1/traces)")
    metrics_endpoint: str | None = Field(None, description="full URL for metrics (default: <endpoint>/v1/metrics)")
    headers: dict[str, str] = Field({}, description="sent with every export, e.g. an API key of the backend")
    sample_ratio: float = Field(1.0, ge=0, le=1, description="share of traces whose spans are exported")
    metrics: bool = Field(True, description="export GenAI metrics (always complete, never sampled)")
    metrics_interval_s: float = Field(60, gt=0, description="how often metrics are exported")
    batch_delay_ms: int = Field(2000, ge=10, description="longest a finished span waits before it is sent")
    service_name: str = Field("meterline", min_length=1, description="resource attribute service.name")
    timeout_s: float = Field(10, gt=0)
    max_queue: int = Field(20000, ge=100, description="finished calls waiting for export; more are dropped")
    capture_content: bool = Field(
        False, description="also export prompts and responses (gen_ai.input/output.messages), unredacted"
    )

    @field_validator("endpoint", "traces_endpoint", "metrics_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {value!r}")
        return value.rstrip("/") if value is not None else None

    @property
    def traces_url(self) -> str:
        return self.traces_endpoint or f"{self.endpoint}/v1/traces"

    @property
    def metrics_url(self) -> str:
        return self.metrics_endpoint or f"{self.endpoint}/v1/metrics"


class OtelIngestConfig(_Section):
    """`POST /v1/traces`: OTLP/HTTP spans from instrumented apps become events; needs the `otel` extra."""

    enabled: bool = False
    max_body_mb: float = Field(5, gt=0, description="largest accepted request body (after decompression)")
    spans_per_s: float = Field(2000, gt=0, description="sustained spans per second per key; more get 429")
    burst_spans: int = Field(20000, ge=1, description="spans a key may send at once before the rate applies")
    feature_attributes: list[str] = Field(
        [], description="span or resource attributes read as the feature, after meterline.feature"
    )


class OtelConfig(_Section):
    export: OtelExportConfig = OtelExportConfig()
    ingest: OtelIngestConfig = OtelIngestConfig()


class CacheRuleConfig(_Section):
    """Settings for the calls of one model and/or feature; the first rule that matches a call applies."""

    model: str | None = Field(None, description="a configured model name; unset: every model")
    feature: str | None = Field(None, description="a feature (x-meterline-feature); unset: every feature")
    enabled: bool = Field(True, description="false: never cached, even when x-meterline-cache: on")
    ttl_s: float | None = Field(None, gt=0, description="how long their answers are served from cache")
    semantic: bool | None = Field(None, description="true: also look up similar prompts (semantic cache)")

    @model_validator(mode="after")
    def _names_something(self) -> CacheRuleConfig:
        if self.model is None and self.feature is None:
            raise ValueError("a cache rule needs model, feature or both (use the cache section itself for every call)")
        return self


class SemanticCacheConfig(_Section):
    """The semantic cache: the last user message is embedded through the gateway and matched by similarity."""

    embedding_model: str | None = Field(None, description="a configured embeddings model; needed for semantic lookups")
    dimensions: int | None = Field(None, ge=1, description="asked of the embeddings model (unset: its default)")
    threshold: float = Field(0.95, gt=0, le=1, description="the cosine similarity a cached prompt needs to be served")
    max_entries: int = Field(100_000, ge=1, description="prompts kept in the vector index of each process")


class CacheConfig(_Section):
    """The exact (and optional semantic) response cache in front of the providers."""

    enabled: bool = False
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str | None = Field(None, description="redis://host:port/db, needed by backend: redis")
    key_prefix: str = Field("meterline:cache:", description="prefix of every Redis key the cache writes")
    max_size_mb: float = Field(256, gt=0, description="the in-process cache's size bound (backend: memory)")
    ttl_s: float = Field(3600, gt=0, description="how long an answer is served from cache, unless a rule says")
    scope: Literal["key", "team", "shared"] = Field(
        "team", description="who shares cached answers: a virtual key, a team, or every caller"
    )
    default: Literal["on", "off"] = Field("on", description="off: only calls sending x-meterline-cache: on are cached")
    key_headers: list[str] = Field(
        ["anthropic-version", "anthropic-beta", "openai-beta"],
        description="request headers that change the answer, so they are part of the cache key",
    )
    max_temperature: float | None = Field(
        0.0, ge=0, description="calls sampling hotter than this are not cached unless asked (null: any temperature)"
    )
    rules: list[CacheRuleConfig] = []
    semantic: SemanticCacheConfig = SemanticCacheConfig()

    @field_validator("default", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        """YAML reads an unquoted on/off as a boolean."""
        return ("on" if value else "off") if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _redis_has_url(self) -> CacheConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend redis needs redis_url, e.g. redis://127.0.0.1:6379/0")
        if any(rule.semantic for rule in self.rules) and self.semantic.embedding_model is None:
            raise ValueError("a rule turns the semantic cache on, which needs semantic.embedding_model")
        return self


class Config(_Section):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    pricing: PricingConfig = PricingConfig()
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []
    budgets: BudgetsConfig = BudgetsConfig()
    alerts: AlertsConfig = AlertsConfig()
    resilience: ResilienceConfig = ResilienceConfig()
    cache: CacheConfig = CacheConfig()
    otel: OtelConfig = OtelConfig()
    batches: BatchesConfig = BatchesConfig()

    @model_validator(mode="after")
    def _models_name_known_providers(self) -> Config:
        seen: set[str] = set()
        for index, model in enumerate(self.models):
            if model.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none configured"
                raise ValueError(
                    f"models[{index}] ({model.name!r}) uses provider {model.provider!r}, "
                    f"which is not under 'providers' (configured: {known})"
                )
            if model.name in seen:
                raise ValueError(f"models[{index}]: the name {model.name!r} is listed twice; names must be unique")
            seen.add(model.name)
        for index, model in enumerate(self.models):
            for fallback in model.fallbacks:
                if fallback == model.name:
                    raise ValueError(f"models[{index}] ({model.name!r}): fallbacks lists the model itself")
                if fallback not in seen:
                    raise ValueError(
                        f"models[{index}] ({model.name!r}): fallback {fallback!r} is not a configured model "
                        f"(configured: {', '.join(m.name for m in self.models)})"
                    )
        return self

    @model_validator(mode="after")
    def _budgets_name_known_models(self) -> Config:
        for index, budget in enumerate(self.budgets.budgets):
            problem = self.budget_problem(budget)
            if problem:
                raise ValueError(f"budgets.budgets[{index}] ({budget.name!r}): {problem}")
        return self

    @model_validator(mode="after")
    def _cache_names_known_models(self) -> Config:
        cache = self.cache
        named = [(f"rules[{index}].model", rule.model) for index, rule in enumerate(cache.rules)]
        named.append(("semantic.embedding_model", cache.semantic.embedding_model))
        for where, model in named:
            if model is not None and self.model(model) is None:
                known = ", ".join(m.name for m in self.models) or "none"
                raise ValueError(f"cache.{where}: {model!r} is not a configured model (configured: {known})")
        return self

    def model(self, name: str) -> ModelConfig | None:
        return self._models_by_name.get(name)

    @functools.cached_property
    def _models_by_name(self) -> dict[str, ModelConfig]:
        """The models by name, looked up on every call (a config is not changed once loaded)."""
        return {model.name: model for model in self.models}

    def budget_problem(self, budget: BudgetConfig) -> str | None:
        """Why `budget` does not fit this config (it names a model that is not configured), or None."""
        named = [("scope", budget.scope_value)] if budget.scope_kind == "model" else []
        named += [("downgrade", name) for pair in budget.downgrade.items() for name in pair]
        for field_name, model in named:
            if model is not None and self.model(model) is None:
                known = ", ".join(m.name for m in self.models) or "none"
                return f"{field_name}: {model!r} is not a configured model (configured: {known})"
        return None

    def resolve_paths(self, base: Path) -> Config:
        """Make relative store and pricing paths relative to the config file's folder."""
        self.store.path = _under(base, self.store.path)
        self.store.spool_dir = _under(base, self.store.spool_dir)
        if "control_path" not in self.store.model_fields_set:
            self.store.control_path = self.store.path.parent / "control.sqlite"
        self.store.control_path = _under(base, self.store.control_path)
        if self.pricing.overrides is not None:
            self.pricing.overrides = _under(base, self.pricing.overrides)
        return self


def _under(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


def interpolate_env(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace ${VAR} and ${VAR:-default} with environment values; an unset VAR without default is an error."""
    env = os.environ if environ is None else environ
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    result = _ENV_REFERENCE.sub(substitute, text)
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise ConfigError(
            f"the config refers to environment variable(s) {names}, which are not set: "
            f"export them, or write ${{NAME:-default}} to give a default"
        )
    return result


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against the documented config shape"
        lines.append(f"  {where}: {message}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(text: str, base: Path, environ: dict[str, str] | None = None) -> Config:
    try:
        raw = yaml.safe_load(interpolate_env(text, environ)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"the config is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping with sections server, store, providers, models")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    return config.resolve_paths(base)


def load_config(path: Path | str) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return parse_config(text, path.parent.resolve())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
