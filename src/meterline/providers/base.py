"""What every provider family implements, and the registry that finds families by `kind`.

A provider family knows one wire format: which client routes it serves, how to address and
authenticate upstream, how to validate and shape a request body, how to read usage from a
response or a stream, and how errors look to its clients. The gateway holds no
provider-specific knowledge; it calls these methods. Built-in families register through the
`meterline.providers` entry point group, exactly as a third-party package would.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from meterline.config import ProviderConfig

if TYPE_CHECKING:
    from meterline.providers.shape import RequestShape


@dataclass
class Usage:
    """Normalised token counts (see `UsageEvent`): input includes cache reads/writes, output includes reasoning."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    reported_cost_usd: float | None = None
    """What the provider says it charged (OpenRouter's `cost`): kept beside the event, never used as its cost."""

    def token_counts(self) -> dict[str, int]:
        """The token counts, named as `UsageEvent` names them."""
        return {name: value for name, value in vars(self).items() if name.endswith("_tokens")}


@dataclass
class SSEEvent:
    """One server-sent event as received: its raw bytes (forwarded as-is) and parsed fields."""

    raw: bytes
    event: str | None
    data: str


@dataclass
class StreamState:
    """What a stream meter has learned so far; read by the gateway when the stream ends."""

    usage: Usage | None = None
    response_model: str | None = None
    response_id: str | None = None
    finish_reason: str | None = None
    service_tier: str | None = None
    output_text_parts: list[str] = field(default_factory=list)
    error_message: str | None = None
    error_class: str | None = None
    finished: bool = False


class StreamMeter(ABC):
    """Reads a provider's SSE stream event by event, learning usage without delaying anything."""

    def __init__(self) -> None:
        self.state = StreamState()

    @abstractmethod
    def feed(self, event: SSEEvent) -> bytes | None:
        """Learn from one event; return the bytes to forward to the client, or None to drop it.

        The event that completes the stream sets `state.finished`; the gateway records the
        usage event before forwarding it.
        """

    def json_object(self, event: SSEEvent, unit: str = "event") -> dict[str, Any] | None:
        """The event's data as a JSON object, or None; data that is not JSON marks the stream invalid.

        `unit` names what the provider sends ("event", "chunk") in the error message.
        """
        try:
            payload = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            self.state.error_class = "invalid_response"
            self.state.error_message = f"sent a stream {unit} that is not JSON"
            return None
        return payload if isinstance(payload, dict) else None


@dataclass(frozen=True)
class PreparedRequest:
    """The request the gateway will send upstream."""

    url: str
    headers: dict[str, str]
    body: bytes
    injected_usage_request: bool = False


class RequestInvalid(ValueError):
    """A client request body is unusable; the message names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Endpoint:
    """One client-facing URL of a dialect: the operation it performs and where its call's model and stream flag are.

    `path` is an aiohttp route pattern. When it has a `{model}` part (Gemini's
    `/v1beta/models/{model}:generateContent`, Azure's `/openai/deployments/{model}/...`) the model
    is taken from the URL, otherwise from the body's `model` field. `streams` is set when the URL
    decides whether the answer streams (Gemini's `:streamGenerateContent`); when None, the body's
    `stream` flag does. `query` lists (name, value) pairs the URL must carry, because the gateway
    answers only in that form (Gemini streams as server-sent events: `alt=sse`).
    """

    path: str
    operation: str
    streams: bool | None = None
    query: tuple[tuple[str, str], ...] = ()

    def check_query(self, query: Mapping[str, str]) -> None:
        """`RequestInvalid` naming the query parameter the URL lacks."""
        for name, value in self.query:
            if query.get(name) != value:
                raise RequestInvalid(f"add the query parameter {name}={value}: this gateway answers only so", name)

    def requested_model(self, path_parts: Mapping[str, str], body: Mapping[str, Any]) -> str:
        """The model the call asks for; `RequestInvalid` when the body should name it and does not."""
        if "model" in path_parts:
            return path_parts["model"]
        model = body.get("model")
        if model is None or model == "":
            raise RequestInvalid("missing required field 'model'", param="model")
        if not isinstance(model, str):
            raise RequestInvalid(f"field 'model' must be a string, got {type(model).__name__}", param="model")
        return model

    def streaming(self, body: Mapping[str, Any]) -> bool:
        return self.streams if self.streams is not None else body.get("stream") is True


@dataclass(frozen=True)
class ApiError:
    """An error to show a client, rendered in the shape of the API the client called."""

    status: int
    message: str
    kind: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


OPTIONAL_SETTINGS = ("api_version", "stream_usage")
"""Provider config fields that only some families use; setting one a family does not use is a config error."""


class ProviderFamily(ABC):
    """One configured upstream provider of a given wire-format family."""

    kind: str
    pricing_id_default: str | None = None
    dialect: str
    operations: frozenset[str]
    settings: frozenset[str] = frozenset()
    """Which of `OPTIONAL_SETTINGS` this family reads."""

    def __init__(self, name: str, config: ProviderConfig) -> None:
        self.name = name
        self.config = config
        for setting in OPTIONAL_SETTINGS:
            if getattr(config, setting) is not None and setting not in self.settings:
                users = sorted(kind for kind, family in provider_families().items() if setting in family.settings)
                raise ValueError(
                    f"providers.{name}.{setting}: kind {self.kind} does not use it; "
                    f"it applies to kind {' and '.join(users) or 'none'}"
                )

    @property
    def pricing_id(self) -> str | None:
        return self.config.pricing_provider or self.pricing_id_default

    default_headers: dict[str, str] = {}

    @abstractmethod
    def path(self, operation: str) -> str:
        """The upstream path (after `base_url`) that serves `operation`; a `{model}` part is where the URL names
        the model (see `url`)."""

    @abstractmethod
    def auth_headers(self) -> dict[str, str]:
        """How the configured provider key is sent upstream (empty when none is configured)."""

    def shape_body(self, operation: str, body: dict[str, Any]) -> bool:
        """Adjust the body for metering before it goes upstream; True if usage was asked for on the
        client's behalf (the stream meter then hides it again)."""
        return False

    def url(self, operation: str, body: dict[str, Any], upstream_model: str, streaming: bool) -> str:
        """The upstream URL of a call: `base_url` and the operation's path, the model in place of a `{model}` part."""
        return self.config.base_url + self.path(operation).replace("{model}", quote(upstream_model, safe=""))

    def name_model(self, operation: str, body: dict[str, Any], upstream_model: str) -> bool:
        """Put the upstream model where this API reads it in a body (`model`); True if the body changed."""
        changed = body.get("model") != upstream_model
        body["model"] = upstream_model
        return changed

    def prepare(
        self,
        operation: str,
        body: dict[str, Any],
        raw_body: bytes,
        upstream_model: str,
        forward_headers: dict[str, str],
        streaming: bool,
    ) -> PreparedRequest:
        """Build the upstream request; the client's own bytes are sent when nothing had to change."""
        changed = self.name_model(operation, body, upstream_model)
        injected = self.shape_body(operation, body)
        headers = {**self.default_headers, **forward_headers, **self.config.headers, **self.auth_headers()}
        headers["content-type"] = "application/json"
        return PreparedRequest(
            url=self.url(operation, body, upstream_model, streaming),
            headers=headers,
            body=orjson.dumps(body) if changed or injected else raw_body,
            injected_usage_request=injected,
        )

    def response_ids(self, payload: dict[str, Any]) -> tuple[str | None, str | None]:
        """(the model that answered, the provider's id for the answer) of a non-streaming response."""
        model, answer_id = payload.get("model"), payload.get("id")
        return (model if isinstance(model, str) else None), (answer_id if isinstance(answer_id, str) else None)

    @abstractmethod
    def usage_from_response(self, operation: str, payload: dict[str, Any]) -> Usage | None:
        """Usage reported in a non-streaming response; None when the provider reported none."""

    @abstractmethod
    def response_text(self, operation: str, payload: dict[str, Any]) -> str:
        """The generated text of a non-streaming response, for estimates when usage is missing."""

    @abstractmethod
    def finish_reason(self, operation: str, payload: dict[str, Any]) -> str | None:
        """Why a non-streaming response stopped, as the provider says it."""

    @abstractmethod
    def stream_meter(self, operation: str, injected_usage_request: bool) -> StreamMeter:
        """A fresh meter for one streaming response."""

    def service_tier(self, operation: str, payload: dict[str, Any]) -> str | None:
        """The service tier a non-streaming response says served it; None when it says none."""
        return None


class Dialect(ABC):
    """The client-facing side of a wire format: its URLs, request validation and error shapes."""

    name: str
    endpoints: tuple[Endpoint, ...]
    key_query: str | None = None
    """A query parameter clients of this API may send their key in (Gemini's `?key=`), besides the headers."""
    sends_cost_comment: bool = True
    """Whether a stream tells its cost in an SSE comment line before its last event. False for APIs whose
    official clients read every line that is not `data:` as JSON (google-genai does)."""

    @abstractmethod
    def validate(self, operation: str, body: dict[str, Any]) -> None:
        """Raise `RequestInvalid` naming the field when a known field has the wrong type."""

    @abstractmethod
    def error_body(self, error: ApiError) -> dict[str, Any]:
        """The JSON body for `error`, in this API's documented error shape."""

    @abstractmethod
    def stream_error_event(self, error: ApiError) -> bytes:
        """An SSE event that tells this API's clients the stream failed."""

    @abstractmethod
    def request_text(self, operation: str, body: dict[str, Any]) -> str:
        """All prompt text in a request, for token estimates when a provider reports no usage."""

    @abstractmethod
    def request_user(self, body: dict[str, Any]) -> str | None:
        """The end-user id a client put in the body, if this API has such a field."""

    @abstractmethod
    def max_output_tokens(self, body: dict[str, Any]) -> int | None:
        """The output-token cap the client asked for, if any."""

    def service_tier(self, body: dict[str, Any]) -> str | None:
        """The service tier the client asked for (`service_tier` in both OpenAI and Anthropic bodies), if any."""
        return text_field(body, "service_tier")

    def temperature(self, body: dict[str, Any]) -> float | None:
        """The sampling temperature the client asked for, if any."""
        value = body.get("temperature")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    @abstractmethod
    def request_shape(self, operation: str, body: dict[str, Any]) -> RequestShape:
        """Hashes and counts of a validated request body for the insights, never its text.

        Build it with `meterline.providers.shape.shape_of`, telling it which fields of this
        format do not change the answer (left out of `request_hash` with `model`: streaming
        options, the end user's id), the contents of the leading system/developer instructions and the tool
        definitions (the prefix provider prompt caching reuses: `prefix_hash` and its estimated
        `system_tokens`), how many messages or input items the request holds, and its output cap.
        Called once per logical request on the request path, so it must stay cheap.
        """


_CONTEXT_LENGTH = re.compile(
    r"context.length|maximum context|prompt is too long|too many tokens|exceeds the maximum number of tokens",
    re.IGNORECASE,
)


def classify_upstream_error(status: int, code: str | None, message: str) -> str:
    """Map an upstream error response to one of the event's `error_class` values."""
    code = (code or "").lower()
    if status == 429:
        return "rate_limit"
    if status in (408, 504):
        return "timeout"
    if status in (401, 403) or "api_key" in code:
        return "auth"
    if status == 404:
        return "not_found"
    if "content_filter" in code or "content_policy" in code:
        return "content_filter"
    if code == "context_length_exceeded" or (400 <= status < 500 and _CONTEXT_LENGTH.search(message)):
        return "context_length"
    if status >= 500:
        return "server_error"
    return "bad_request"


def error_details(payload: Any) -> tuple[str | None, str]:
    """(code, message) from an `{"error": {...}}` body as OpenAI, Anthropic, Azure and Google send it.

    Google's `code` is the HTTP status; its reason (an `ErrorInfo` detail such as API_KEY_INVALID),
    else its `status` (RESOURCE_EXHAUSTED), is the code then.
    """
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = error.get("code")
    if not isinstance(code, str) or not code:
        reasons = [d.get("reason") for d in error.get("details") or () if isinstance(d, dict) and d.get("reason")]
        code = reasons[0] if reasons else error.get("type") or error.get("status")
    return (str(code) if code else None), str(error.get("message") or "")


def text_field(container: Any, *path: str) -> str | None:
    """A non-empty string at `path` inside nested dicts, or None."""
    value: Any = container
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, str) and value else None


def int_field(container: Any, *path: str) -> int:
    """A non-negative integer at `path` inside nested dicts, or 0 when absent or not an integer."""
    value: Any = container
    for key in path:
        if not isinstance(value, dict):
            return 0
        value = value.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


@cache
def provider_families() -> dict[str, type[ProviderFamily]]:
    """All registered provider families by kind (built-ins and third-party packages alike)."""
    return {entry.name: entry.load() for entry in entry_points(group="meterline.providers")}


@cache
def dialects() -> dict[str, Dialect]:
    """All registered client-facing dialects by name (the `meterline.dialects` entry point group)."""
    found = {entry.name: entry.load()() for entry in entry_points(group="meterline.dialects")}
    return {dialect.name: dialect for dialect in found.values()}


def build_provider(name: str, config: ProviderConfig) -> ProviderFamily:
    families = provider_families()
    if config.kind not in families:
        known = ", ".join(sorted(families))
        raise ValueError(f"providers.{name}.kind: unknown kind {config.kind!r}; known kinds: {known}")
    return families[config.kind](name, config)


def pricing_ids(providers: Mapping[str, ProviderConfig]) -> dict[str, str | None]:
    """The genai-prices provider id each configured provider is priced as (None: not priced)."""
    return {name: build_provider(name, config).pricing_id for name, config in providers.items()}


def deployment_models(providers: Mapping[str, ProviderConfig]) -> dict[str, dict[str, str]]:
    """Each configured provider's `deployments` map (deployment or served-model name -> the model it runs)."""
    return {name: dict(config.deployments) for name, config in providers.items() if config.deployments}
