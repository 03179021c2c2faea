"""Every OpenTelemetry attribute name meterline writes or reads, in one table (DESIGN.md decision 7).

Each entry maps a `UsageEvent` field to its spellings: the first is what meterline exports (the
names the current OTel semantic-conventions release publishes for GenAI, i.e. what
`OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental` selects, or a `meterline.*` name where
the conventions have none), the rest are the other spellings ingest accepts, in order of
preference: older `gen_ai.*` names, OpenLLMetry's `llm.*` and `traceloop.*`, OpenLIT's, and
general attributes such as `user.id`. On ingest a span attribute wins over a resource attribute
of the same name, and an earlier spelling over a later one.
"""

from __future__ import annotations

# ---- what a call is ----------------------------------------------------------------------------

OPERATION = ("gen_ai.operation.name", "llm.request.type")
METERLINE_OPERATION = "meterline.operation"
"""meterline's own operation name (chat, completion, embeddings, responses, messages, generate_content), beside
the semconv one."""
PROVIDER = ("gen_ai.provider.name", "gen_ai.system", "llm.vendor")
REQUEST_MODEL = ("gen_ai.request.model", "llm.request.model")
RESPONSE_MODEL = ("gen_ai.response.model", "llm.response.model")
RESPONSE_ID = ("gen_ai.response.id",)
FINISH_REASONS = ("gen_ai.response.finish_reasons", "llm.response.finish_reason")
STREAMING = ("gen_ai.request.stream", "llm.is_streaming")
TIME_TO_FIRST_CHUNK_S = ("gen_ai.response.time_to_first_chunk",)
ERROR_TYPE = ("error.type",)
HTTP_STATUS = ("meterline.status_code", "http.response.status_code", "http.status_code")
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
TOKEN_TYPE = "gen_ai.token.type"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"

# ---- tokens: UsageEvent field -> spellings -------------------------------------------------------

USAGE: dict[str, tuple[str, ...]] = {
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens"),
    "cache_read_tokens": (
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.usage.cache_read_tokens",
        "llm.usage.cache_read_input_tokens",
    ),
    "cache_write_tokens": (
        "gen_ai.usage.cache_creation.input_tokens",
        "gen_ai.usage.cache_write.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "gen_ai.usage.cache_write_input_tokens",
        "llm.usage.cache_creation_input_tokens",
    ),
    "cache_write_1h_tokens": ("meterline.usage.cache_write_1h.input_tokens",),
    "reasoning_tokens": (
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.usage.reasoning_tokens",
    ),
}
TOTAL_TOKENS = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens")
"""Used only to fill in output tokens when a span gives a total and the input but no output."""
REPORTED_COST = ("gen_ai.usage.cost",)
"""OpenLIT's cost of a call: kept as the property `reported_cost_usd`, never used as the cost."""

# ---- attribution: UsageEvent field -> spellings --------------------------------------------------

TRACELOOP_PROPERTIES = "traceloop.association.properties."
PROPERTY_PREFIX = "meterline.property."
SERVICE_NAME = "service.name"
"""The resource attribute an app's spans name it by: its `app` unless a `meterline.app` says otherwise."""

ATTRIBUTION: dict[str, tuple[str, ...]] = {
    "user": (
        "meterline.user",
        "user.id",
        "enduser.id",
        TRACELOOP_PROPERTIES + "user_id",
        TRACELOOP_PROPERTIES + "user",
        "gen_ai.request.user",
    ),
    "feature": ("meterline.feature", TRACELOOP_PROPERTIES + "feature"),
    "team": ("meterline.team", TRACELOOP_PROPERTIES + "team"),
    "app": ("meterline.app", TRACELOOP_PROPERTIES + "app"),
    "env": ("meterline.env", "deployment.environment.name", "deployment.environment"),
    "prompt_id": ("meterline.prompt_id", "gen_ai.prompt.name", "traceloop.prompt.key"),
    "prompt_version": ("meterline.prompt_version", "traceloop.prompt.version"),
    "session_id": (
        "gen_ai.conversation.id",
        "meterline.session",
        "session.id",
        TRACELOOP_PROPERTIES + "session_id",
    ),
    "agent_run_id": ("meterline.agent_run_id", TRACELOOP_PROPERTIES + "agent_run_id"),
}
AGENT_STEP = ("meterline.agent_step",)
FEATURE = "feature"
"""The attribution field that configured attributes (`otel.ingest.feature_attributes`) also fill."""

# ---- meterline's own span attributes (export only) -----------------------------------------------

REQUEST_ID = "meterline.request_id"
ATTEMPT = "meterline.attempt"
ATTEMPTS = "meterline.attempts"
COST_USD = "meterline.cost_usd"
PRICE_VERSION = "meterline.price_version"
KEY_ID = "meterline.key_id"
USAGE_SOURCE = "meterline.usage_source"
CACHE_STATUS = "meterline.cache_status"
SAVED_USD = "meterline.saved_usd"
SERVED_MODEL = "meterline.served_model"
UPSTREAM_MODEL = "meterline.upstream_model"
GATEWAY_SCOPE = "meterline.gateway"
"""The instrumentation scope of spans meterline exports; ingest reads their attribution from meterline.* only."""

# ---- request parameters: request body field -> exported attribute --------------------------------

REQUEST_PARAMETERS: dict[str, str] = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "seed": "gen_ai.request.seed",
    "n": "gen_ai.request.choice.count",
    "candidate_count": "gen_ai.request.choice.count",
    "stop": "gen_ai.request.stop_sequences",
    "stop_sequences": "gen_ai.request.stop_sequences",
    "encoding_format": "gen_ai.request.encoding_formats",
}

# ---- operations -----------------------------------------------------------------------------------

EXPORTED_OPERATION: dict[str, str] = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "generate_content": "generate_content",
    "completion": "text_completion",
    "embeddings": "embeddings",
}
"""meterline operation -> `gen_ai.operation.name` (the semconv's well-known values)."""

INGESTED_OPERATION: dict[str, str] = {
    "chat": "chat",
    "generate_content": "generate_content",
    "text_completion": "completion",
    "completion": "completion",
    "embeddings": "embeddings",
    "embedding": "embeddings",
    "responses": "responses",
    "messages": "messages",
}
"""`gen_ai.operation.name` / `llm.request.type` -> meterline operation; unknown names are kept as they are."""

NOT_INFERENCE = frozenset({"execute_tool", "invoke_agent", "create_agent", "invoke_workflow", "workflow", "task"})
"""Operations (and OpenLLMetry `traceloop.span.kind`s) whose token counts, if any, sum their children's."""
TRACELOOP_SPAN_KIND = "traceloop.span.kind"

# ---- providers ------------------------------------------------------------------------------------

INGESTED_PROVIDER: dict[str, str] = {
    "azure.ai.openai": "azure",
    "az.ai.openai": "azure",
    "azure.ai.inference": "azure",
    "az.ai.inference": "azure",
    "azure_openai": "azure",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "vertex_ai": "google",
    "gemini": "google",
    "aws.bedrock": "aws",
    "x_ai": "x-ai",
    "mistral_ai": "mistral",
}
"""`gen_ai.provider.name` / `gen_ai.system` (lower-cased) -> the genai-prices provider id meterline prices by."""

EXPORTED_PROVIDER: dict[str, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "google": "gcp.gemini",
    "azure": "azure.ai.openai",
    "aws": "aws.bedrock",
    "deepseek": "deepseek",
    "groq": "groq",
    "mistral": "mistral_ai",
    "x-ai": "x_ai",
    "perplexity": "perplexity",
    "cohere": "cohere",
}
"""A provider's genai-prices id -> the `gen_ai.provider.name` it exports (the semconv's well-known values);
a provider priced by none of these exports its name in the config."""

# ---- metrics --------------------------------------------------------------------------------------

METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
METRIC_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
METRIC_COST = "meterline.cost"
TOKEN_USAGE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TIME_TO_FIRST_CHUNK_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
