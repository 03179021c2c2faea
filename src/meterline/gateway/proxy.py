"""The proxy: accepts calls in each registered dialect's format, forwards them upstream, meters each attempt.

Each dialect (OpenAI, Anthropic, Gemini, ...) lists its URLs as `Endpoint`s, which say where a
call's model is (the body's `model`, or the URL) and whether it streams (the body's `stream`, or
the URL). For every call: authenticate, read and validate the body, read attribution, resolve the model
to a provider, forward, and record one usage event per upstream attempt. A failed attempt is
retried, and then the model's fallbacks tried, by the rules of `meterline.gateway.retries`,
skipping models whose circuit breaker is open (`meterline.gateway.breaker`). Non-streaming
responses are returned byte for byte with `x-meterline-request-id` and `x-meterline-cost-usd`
headers. Streams are forwarded event by event as they arrive; the event that completes a
stream is held until the usage event is in the spool, and is preceded by an SSE comment
`: x-meterline-cost-usd=<cost>` (SSE clients ignore comments; dialects whose clients do not,
Gemini's, go without). Every error a client sees is in the shape of the API it called.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from meterline.budgets.guard import Refused, SpendGuard
from meterline.cache.policy import HEADER as CACHE_HEADER
from meterline.cache.policy import CacheHeaderInvalid, SemanticNotConfigured
from meterline.cache.service import Plan
from meterline.config import Config
from meterline.gateway.attribution import (
    PREFIX,
    Attribution,
    AttributionError,
    attribution_from_headers,
    contradiction,
    is_meterline_header,
)
from meterline.gateway.auth import Authenticator, Identity, api_key_from_headers
from meterline.gateway.breaker import Breaker, BreakerBoard
from meterline.gateway.breaker_sync import BreakerSync
from meterline.gateway.caching import GatewayCache
from meterline.gateway.clock import Clock, SystemClock
from meterline.gateway.keys import model_allowed
from meterline.gateway.metering import CallContext, Outcome, Recorder, estimated_usage, outcome_of_stream
from meterline.gateway.retries import (
    ATTEMPTS_HEADER,
    RETRIES_HEADER,
    RetriesHeaderInvalid,
    Routes,
    backoff_s,
    larger_window,
    retries_limit,
    retry_after_s,
    retryable,
)
from meterline.gateway.sse import SSESplitter
from meterline.providers.base import (
    ApiError,
    Dialect,
    Endpoint,
    PreparedRequest,
    ProviderFamily,
    RequestInvalid,
    classify_upstream_error,
    dialects,
    error_details,
)

REQUEST_ID_HEADER = "x-meterline-request-id"
COST_HEADER = "x-meterline-cost-usd"
UNPRICED = "unpriced"

# client headers that are about this hop, carry the client's credentials, or are meterline's own
_NOT_FORWARDED = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-type",
        "accept-encoding",
        "authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
    }
)
# upstream response headers that describe the upstream hop, not the content we pass on
_NOT_RETURNED = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "date", "server"}
)

OPENAI = dialects()["openai"]
ANTHROPIC = dialects()["anthropic"]


@dataclass(slots=True)
class Attempt:
    """How one upstream attempt ended, as the retry loop sees it."""

    response: web.StreamResponse
    """What the client gets if this attempt is the last."""
    error_class: str
    status: int
    message: str | None = None
    retry_after_s: float | None = None
    """The wait the provider asked for before trying again."""
    sent: bool = False
    """Bytes of this attempt reached the client (a started stream): it is final whatever happened."""


class ClientError(Exception):
    """A request refused before it reaches a provider."""

    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


def forward_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in headers.items()
        if name.lower() not in _NOT_FORWARDED and not is_meterline_header(name)
    }


def returned_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name.lower() not in _NOT_RETURNED}


def format_cost(cost_usd: float | None) -> str:
    return UNPRICED if cost_usd is None else f"{cost_usd:.10f}".rstrip("0").rstrip(".") or "0"


class Gateway:
    def __init__(
        self,
        config: Config,
        providers: dict[str, ProviderFamily],
        authenticator: Authenticator,
        recorder: Recorder,
        guard: SpendGuard,
        clock: Clock | None = None,
        cache: GatewayCache | None = None,
    ) -> None:
        self.config = config
        self.providers = providers
        self.authenticator = authenticator
        self.recorder = recorder
        self.guard = guard
        self.clock = clock or SystemClock()
        self.rng = random.Random()
        self.model_routes = Routes(config, providers, recorder.price_table)
        self.breakers = BreakerBoard(
            config.resilience.breaker, [(model.provider, model.name) for model in config.models], self.clock
        )
        shared = config.resilience.breaker.redis_url
        self.breaker_sync = (
            BreakerSync(self.breakers, shared, config.resilience.breaker.key_prefix)
            if shared and self.breakers.enabled
            else None
        )
        self.cache = cache
        self.session: aiohttp.ClientSession | None = None
        self.keep_output_text = config.otel.export.enabled and config.otel.export.capture_content
        # first-byte, idle and total limits are kept by the gateway itself (see `attempt` and `stream`)
        self._timeouts = {
            name: aiohttp.ClientTimeout(total=None, sock_connect=provider.config.timeout.connect_s)
            for name, provider in providers.items()
        }

    def routes(self) -> list[web.RouteDef]:
        def handler(dialect: Dialect, endpoint: Endpoint):  # type: ignore[no-untyped-def]
            async def handle(request: web.Request) -> web.StreamResponse:
                return await self.proxy(request, dialect, endpoint)

            return handle

        calls = [
            web.post(endpoint.path, handler(dialect, endpoint))
            for dialect in dialects().values()
            for endpoint in dialect.endpoints
        ]
        return [*calls, web.get("/v1/models", self.list_models)]

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
        # no cookie jar: cookies a provider's edge sets on one caller's call must not ride along on other callers'
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=True, cookie_jar=aiohttp.DummyCookieJar()
        )
        if self.breaker_sync is not None:
            await self.breaker_sync.start()

    async def stop(self) -> None:
        if self.breaker_sync is not None:
            await self.breaker_sync.stop()
        if self.session is not None:
            await self.session.close()

    # ---- client side -------------------------------------------------------------------------

    def error_response(self, dialect: Dialect, error: ApiError, request_id: str | None = None) -> web.Response:
        headers = dict(error.headers)
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        return web.Response(
            status=error.status,
            body=orjson.dumps(dialect.error_body(error)),
            content_type="application/json",
            headers=headers,
        )

    def authenticate(self, request: web.Request, dialect: Dialect) -> Identity:
        api_key = api_key_from_headers(request.headers)
        if api_key is None and dialect.key_query is not None:
            api_key = request.query.get(dialect.key_query) or None
        if api_key is None:
            ways = "'Authorization: Bearer <key>', 'x-api-key', 'api-key' or 'x-goog-api-key'"
            if dialect.key_query is not None:
                ways += f" header, or the query parameter '{dialect.key_query}'"
            raise ClientError(ApiError(401, f"missing API key: send it in {ways}", "missing_api_key"))
        identity = self.authenticator.authenticate(api_key)
        if identity is None:
            raise ClientError(ApiError(401, "invalid API key", "invalid_api_key"))
        return identity

    async def read_body(self, request: web.Request) -> tuple[bytes, dict[str, Any]]:
        limit_mb = self.config.server.max_body_mb
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:
            raise ClientError(
                ApiError(413, f"request body is larger than the gateway's limit of {limit_mb:g} MB", "body_too_large")
            ) from exc
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ClientError(ApiError(400, f"request body is not valid JSON: {exc}", "invalid_json")) from exc
        if not isinstance(body, dict):
            raise ClientError(ApiError(400, "request body must be a JSON object", "invalid_json"))
        return raw, body

    def resolve(self, call: CallContext, requested_model: str) -> ProviderFamily:
        model = self.config.model(requested_model)
        if model is None:
            names = ", ".join(m.name for m in self.config.models) or "none"
            raise ClientError(
                ApiError(
                    404,
                    f"model '{requested_model}' is not configured on this gateway; configured models: {names}",
                    "model_not_found",
                    param="model",
                )
            )
        if not model_allowed(call.identity, requested_model):
            raise ClientError(
                ApiError(
                    403,
                    f"this key may not call model '{requested_model}'; it may call: {', '.join(call.identity.models)}",
                    "model_not_allowed",
                    param="model",
                )
            )
        provider = self.providers[model.provider]
        if provider.dialect != call.dialect.name or call.operation not in provider.operations:
            raise ClientError(
                ApiError(
                    400,
                    f"model '{requested_model}' is served by provider '{model.provider}' ({provider.kind}), "
                    f"which does not accept this endpoint's {call.dialect.name} '{call.operation}' format",
                    "unsupported_endpoint",
                    param="model",
                )
            )
        call.provider = model.provider
        call.requested_model = requested_model
        call.upstream_model = model.upstream_name
        return provider

    async def accept(self, request: web.Request, dialect: Dialect, endpoint: Endpoint) -> tuple[CallContext, bytes]:
        identity = self.authenticate(request, dialect)
        raw, body = await self.read_body(request)
        try:
            endpoint.check_query(request.query)
            requested_model = endpoint.requested_model(request.match_info, body)
            dialect.validate(endpoint.operation, body)
        except RequestInvalid as exc:
            raise ClientError(ApiError(400, str(exc), "invalid_request", param=exc.param)) from exc
        attribution = self.attribute(request.headers, identity, dialect.request_user(body))
        call = CallContext(
            operation=endpoint.operation,
            dialect=dialect,
            body=body,
            identity=identity,
            attribution=attribution,
            requested_model=requested_model,
            streaming=endpoint.streaming(body),
            shape=dialect.request_shape(endpoint.operation, body),
        )
        return call, raw

    def attribute(self, headers: Mapping[str, str], identity: Identity, body_user: str | None) -> Attribution:
        """The call's attribution from its headers (and the body's user field), checked against its key's."""
        try:
            attribution = attribution_from_headers(headers)
        except AttributionError as exc:
            raise ClientError(ApiError(400, str(exc), "invalid_header", param=exc.header)) from exc
        header_user = attribution.user
        attribution.user = attribution.user or body_user
        key_defaults = {"team": identity.team, "app": identity.app, "user": identity.user}
        conflict = contradiction(attribution, key_defaults)
        if conflict is not None:
            source = f"header '{PREFIX}{conflict}'" if conflict != "user" or header_user else "the body's user field"
            raise ClientError(
                ApiError(
                    403,
                    f"{source} says {conflict} '{getattr(attribution, conflict)}', but this key belongs to "
                    f"{conflict} '{key_defaults[conflict]}'; a key's attribution can be refined, not contradicted",
                    "attribution_conflict",
                    param=f"{PREFIX}{conflict}" if source.startswith("header") else "user",
                )
            )
        return attribution

    async def list_models(self, request: web.Request) -> web.Response:
        anthropic_client = "anthropic-version" in request.headers
        dialect = ANTHROPIC if anthropic_client else OPENAI
        try:
            self.authenticate(request, dialect)
        except ClientError as exc:
            return self.error_response(dialect, exc.error)
        if anthropic_client:
            data = [
                {"type": "model", "id": m.name, "display_name": m.name, "created_at": "1970-01-01T00:00:00Z"}
                for m in self.config.models
            ]
            first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
            payload: dict[str, Any] = {"data": data, "has_more": False, "first_id": first, "last_id": last}
        else:
            data = [{"id": m.name, "object": "model", "created": 0, "owned_by": m.provider} for m in self.config.models]
            payload = {"object": "list", "data": data}
        return web.json_response(payload, dumps=lambda value: orjson.dumps(value).decode())

    # ---- the call ----------------------------------------------------------------------------

    async def proxy(self, request: web.Request, dialect: Dialect, endpoint: Endpoint) -> web.StreamResponse:
        operation = endpoint.operation
        try:
            call, raw = await self.accept(request, dialect, endpoint)
            provider = self.resolve(call, call.requested_model)
            most_retries = retries_limit(request.headers, call.identity.max_retries)
            if self.cache is not None and operation != "count_tokens":
                call.cache_plan = self.plan_cache(call, request.headers)
        except ClientError as exc:
            return self.error_response(dialect, exc.error)
        except RetriesHeaderInvalid as exc:
            return self.error_response(dialect, ApiError(400, str(exc), "invalid_header", param=RETRIES_HEADER))
        try:
            if operation == "count_tokens":  # costs nothing, so no budget applies, and is not retried
                return await self.count_tokens(request, call, provider, raw)
            return await self.serve(request, call, raw, most_retries)
        finally:
            self.recorder.finish(call)  # the call's events, one per attempt, go to the observers

    async def serve(
        self, request: web.Request, call: CallContext, raw: bytes, most_retries: int | None
    ) -> web.StreamResponse:
        """Answer from the cache, else call upstream and cache its answer; either within the call's admission.

        A hit spends nothing, so no budget applies to it; it still counts towards rate limits and as
        a step of its agent run, so a client or an agent loop cannot go past those through the cache.
        """

        def upstream(model: str) -> Awaitable[web.StreamResponse]:
            return self.call_upstream(request, call, model, raw, most_retries)

        plan = call.cache_plan
        if plan is None:
            return await self.admitted(call, upstream)
        cache = self.cache
        assert cache is not None
        answer = await cache.lookup(request, call, plan, self.serve)
        if answer is not None:
            return await self.admitted(call, lambda _model: cache.replay(request, call, plan, answer), spends=False)
        response = await self.admitted(call, upstream)
        if call.cache_plan is not None:
            await cache.keep(call, plan, response)
        return response

    async def admitted(
        self,
        call: CallContext,
        respond: Callable[[str], Awaitable[web.StreamResponse]],
        *,
        spends: bool = True,
    ) -> web.StreamResponse:
        """`respond(model)` once the guard admits the call (with the model it is served by), then settle.

        A refused call is answered by neither the cache nor the provider: its event records no cache use.
        """
        try:
            admission = await self.guard.admit(call, spends=spends)
        except Refused as exc:
            call.cache_plan = None
            return self.failed(call, exc.error, "budget_blocked", retry_after_s(exc.error.headers)).response
        if admission is None:
            return await respond(call.requested_model)
        try:
            return await respond(admission.served_model or call.requested_model)
        finally:
            self.guard.settle(admission, call.events)

    def plan_cache(self, call: CallContext, headers: Mapping[str, str]) -> Plan:
        assert self.cache is not None
        try:
            return self.cache.plan(call, headers)
        except (CacheHeaderInvalid, SemanticNotConfigured) as exc:
            raise ClientError(ApiError(400, str(exc), "invalid_header", param=CACHE_HEADER)) from exc

    async def call_upstream(
        self, request: web.Request, call: CallContext, model: str, raw: bytes, most_retries: int | None
    ) -> web.StreamResponse:
        """Try the model's route (the model, then its fallbacks) until an attempt answers or may not be retried.

        Every attempt records its own event. A failed attempt is retried only while nothing of it
        reached the client, its failure is retryable, the model has retries left and the wait fits
        in the request's deadline; then the route's next model gets its turn (a context-length
        error skips to the first fallback with a larger window). The client gets the last attempt's
        answer, with `x-meterline-attempts` saying how many attempts were made.
        """
        deadline = self.clock.now() + self.config.resilience.deadline_s
        route = self.model_routes.route(model)
        forwarded = forward_headers(request.headers)
        last: Attempt | None = None
        skipped: list[Breaker] = []
        index = 0
        while index < len(route) and self.clock.now() < deadline:
            target, index = route[index], index + 1
            if call.operation not in target.provider.operations:
                continue
            breaker = self.breakers.get(target.provider.name, target.name)
            if breaker is not None and not breaker.allows(self.clock.now()):
                skipped.append(breaker)
                continue
            call.provider, call.upstream_model = target.provider.name, target.upstream_model
            call.served_model = "" if target.name == call.requested_model else target.name
            prepared = target.provider.prepare(
                call.operation, call.body, raw, target.upstream_model, forwarded, call.streaming
            )
            # a fallback's body already holds the usage request injected for the first model
            call.usage_injected = call.usage_injected or prepared.injected_usage_request
            retries = target.retries if most_retries is None else min(target.retries, most_retries)
            last = await self.try_model(request, call, prepared, target.provider, breaker, retries, deadline)
            if last.sent or not retryable(last.error_class, last.status):
                larger = larger_window(route, index - 1) if last.error_class == "context_length" else None
                if larger is None or last.sent:
                    return self.answered(call, last)
                index = larger
        if last is not None:
            return self.answered(call, last)
        return self.circuit_open(call, skipped)

    async def try_model(
        self,
        request: web.Request,
        call: CallContext,
        prepared: PreparedRequest,
        provider: ProviderFamily,
        breaker: Breaker | None,
        retries: int,
        deadline: float,
    ) -> Attempt:
        """Attempt one model up to `retries` more times while its failures are retryable; the last attempt."""
        clock = self.clock
        retry = 0
        while True:
            call.begin_attempt()
            try:
                attempt = await self.attempt(request, call, provider, prepared, deadline - clock.now())
            except BaseException:  # cancelled: free a half-open breaker's probe
                if breaker is not None:
                    breaker.record("client_cancelled", None, clock.now())
                raise
            if breaker is not None:
                breaker.record(attempt.error_class, attempt.message, clock.now())
            if attempt.sent or not retryable(attempt.error_class, attempt.status) or retry == retries:
                return attempt
            retry += 1
            wait = attempt.retry_after_s
            if wait is None:
                wait = backoff_s(retry, self.config.resilience.backoff, self.rng)
            if clock.now() + wait >= deadline:
                return attempt
            await clock.sleep(wait)
            if breaker is not None and not breaker.allows(clock.now()):
                return attempt

    def answered(self, call: CallContext, attempt: Attempt) -> web.StreamResponse:
        if not attempt.sent:
            attempt.response.headers[ATTEMPTS_HEADER] = str(call.attempt)
        return attempt.response

    def circuit_open(self, call: CallContext, open_breakers: list[Breaker]) -> web.Response:
        """503 when every model of the route is skipped by an open breaker; names the one that reopens first."""
        now = self.clock.now()
        first = min(open_breakers, key=lambda breaker: breaker.retry_at or now)
        error = ApiError(
            503,
            first.describe(now),
            "circuit_open",
            headers={"retry-after": str(first.retry_after_s(now))},
        )
        call.provider, call.served_model = first.provider, "" if first.model == call.requested_model else first.model
        response = self.failed(call, error, "circuit_open").response
        response.headers[ATTEMPTS_HEADER] = "0"
        return response

    async def attempt(
        self,
        request: web.Request,
        call: CallContext,
        provider: ProviderFamily,
        prepared: PreparedRequest,
        remaining_s: float,
    ) -> Attempt:
        """One upstream attempt within the provider's timeouts and what is left of the deadline."""
        timeouts = provider.config.timeout
        now = asyncio.get_running_loop().time()
        end = now + max(0.0, min(timeouts.total_s, remaining_s))
        assert self.session is not None, "Gateway.start() was not awaited"
        try:
            async with asyncio.timeout_at(min(end, now + timeouts.first_byte_s)):
                upstream = await self.session.post(
                    prepared.url, data=prepared.body, headers=prepared.headers, timeout=self._timeouts[provider.name]
                )
        except (TimeoutError, aiohttp.ClientError) as exc:
            return self.upstream_unreachable(call, exc)
        async with upstream:
            is_stream = upstream.content_type == "text/event-stream"
            if call.streaming and upstream.status < 400 and is_stream:
                first_byte = min(end, now + timeouts.first_byte_s)
                return await self.stream(request, call, provider, upstream, first_byte, end)
            return await self.complete(call, provider, upstream, end)

    def upstream_unreachable(self, call: CallContext, exc: BaseException) -> Attempt:
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            error = ApiError(504, f"provider '{call.provider}' did not answer in time", "upstream_timeout")
            return self.failed(call, error, "timeout")
        error = ApiError(502, f"provider '{call.provider}' could not be reached: {exc}", "upstream_unreachable")
        return self.failed(call, error, "network")

    async def count_tokens(
        self, request: web.Request, call: CallContext, provider: ProviderFamily, raw: bytes
    ) -> web.Response:
        """Token counting costs nothing and is not metered: relay the provider's answer."""
        prepared = provider.prepare(
            call.operation, call.body, raw, call.upstream_model, forward_headers(request.headers), streaming=False
        )
        assert self.session is not None, "Gateway.start() was not awaited"
        total_s = provider.config.timeout.total_s
        try:
            async with asyncio.timeout(total_s):
                async with self.session.post(
                    prepared.url, data=prepared.body, headers=prepared.headers, timeout=self._timeouts[provider.name]
                ) as upstream:
                    body = await upstream.read()
        except TimeoutError:
            error = ApiError(504, f"provider '{call.provider}' did not answer in time", "upstream_timeout")
            return self.error_response(call.dialect, error, call.request_id)
        except aiohttp.ClientError as exc:
            error = ApiError(502, f"provider '{call.provider}' could not be reached: {exc}", "upstream_unreachable")
            return self.error_response(call.dialect, error, call.request_id)
        headers = returned_headers(upstream.headers)
        headers[REQUEST_ID_HEADER] = call.request_id
        return web.Response(status=upstream.status, body=body, headers=headers)

    async def complete(
        self, call: CallContext, provider: ProviderFamily, upstream: aiohttp.ClientResponse, end: float
    ) -> Attempt:
        """A non-streaming response: read it whole, meter it, return it unchanged."""
        try:
            async with asyncio.timeout_at(end):
                body = await upstream.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            timed_out = isinstance(exc, TimeoutError)
            error = ApiError(
                504 if timed_out else 502,
                f"provider '{call.provider}' broke off its response: {exc or 'timed out'}",
                "upstream_timeout" if timed_out else "upstream_truncated",
            )
            return self.failed(call, error, "timeout" if timed_out else "invalid_response")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            payload = None
        if not isinstance(payload, dict):
            error = ApiError(
                502,
                f"provider '{call.provider}' returned HTTP {upstream.status} with a body that is not a JSON object",
                "upstream_invalid_response",
            )
            if upstream.status < 400:
                return self.failed(call, error, "invalid_response")
            # an error page from something in front of the provider (a 503 from a load balancer): its status counts
            retry_after = retry_after_s(upstream.headers)
            attempt = self.failed(call, error, classify_upstream_error(upstream.status, None, ""), retry_after)
            attempt.status = upstream.status
            return attempt
        if upstream.status >= 400:
            code, message = error_details(payload)
            outcome = Outcome(
                status_code=upstream.status,
                error_class=classify_upstream_error(upstream.status, code, message),
                error_message=message[:500] or None,
                retry_after_s=retry_after_s(upstream.headers),
            )
        else:
            usage = provider.usage_from_response(call.operation, payload)
            if self.keep_output_text:
                call.output_text = provider.response_text(call.operation, payload)
            response_model, response_id = provider.response_ids(payload)
            outcome = Outcome(
                status_code=upstream.status,
                usage=usage or estimated_usage(call, None, provider.response_text(call.operation, payload)),
                estimated=usage is None,
                response_model=response_model,
                response_id=response_id,
                finish_reason=provider.finish_reason(call.operation, payload),
                service_tier=provider.service_tier(call.operation, payload),
            )
        event = self.recorder.record(call, outcome)
        headers = returned_headers(upstream.headers)
        headers[REQUEST_ID_HEADER] = call.request_id
        headers[COST_HEADER] = format_cost(event.cost_usd)
        response = web.Response(status=upstream.status, body=body, headers=headers)
        return Attempt(response, outcome.error_class, upstream.status, outcome.error_message, outcome.retry_after_s)

    def failed(self, call: CallContext, error: ApiError, error_class: str, retry_after: float | None = None) -> Attempt:
        outcome = Outcome(
            status_code=error.status, error_class=error_class, error_message=error.message, retry_after_s=retry_after
        )
        self.recorder.record(call, outcome)
        response = self.error_response(call.dialect, error, call.request_id)
        return Attempt(response, error_class, error.status, error.message, retry_after)

    async def stream(
        self,
        request: web.Request,
        call: CallContext,
        provider: ProviderFamily,
        upstream: aiohttp.ClientResponse,
        first_byte: float,
        end: float,
    ) -> Attempt:
        """Forward a stream event by event; record its usage before its completing event goes out.

        The client's response starts with the upstream's first bytes, so a stream that fails
        before sending any (no first event by `first_byte`, an early end) can still be retried.
        Then each silence longer than the provider's `idle_s`, and the attempt's `end`, stop it.
        """
        loop = asyncio.get_running_loop()
        idle_s = provider.config.timeout.idle_s
        meter = provider.stream_meter(call.operation, call.usage_injected)
        splitter = SSESplitter()
        held: list[bytes] = []
        ttft_ms: float | None = None
        recorded = False
        response: web.StreamResponse | None = None
        upstream_error: ApiError | None = None
        error_class: str | None = None

        def record(status_code: int, cls: str | None = None, message: str | None = None) -> float | None:
            nonlocal recorded
            recorded = True
            if self.keep_output_text:
                call.output_text = "".join(meter.state.output_text_parts)
            outcome = outcome_of_stream(call, meter.state, status_code, ttft_ms)
            if cls is not None:
                outcome.error_class, outcome.error_message = cls, message
            return self.recorder.record(call, outcome).cost_usd

        try:
            try:
                async with asyncio.timeout_at(first_byte) as timer:
                    async for chunk in upstream.content.iter_any():
                        timer.reschedule(min(end, loop.time() + idle_s))
                        if response is None:
                            headers = returned_headers(upstream.headers)
                            headers[REQUEST_ID_HEADER] = call.request_id
                            headers[ATTEMPTS_HEADER] = str(call.attempt)
                            response = GatewayCache.stream_response(call, upstream.status, headers)
                            await response.prepare(request)
                        for event in splitter.feed(chunk):
                            if not event.data:
                                await response.write(event.raw)
                                continue
                            out = meter.feed(event)
                            if ttft_ms is None:
                                ttft_ms = call.elapsed_ms()
                            if out is None:
                                continue
                            if meter.state.finished:
                                held.append(out)
                            else:
                                await response.write(out)
            except TimeoutError:
                started = response is not None
                problem = "stalled mid-stream" if started else "sent no stream event in time"
                upstream_error = ApiError(504, f"provider '{call.provider}' {problem}", "upstream_timeout")
                error_class = "timeout"
            except aiohttp.ClientError as exc:
                upstream_error = ApiError(
                    502, f"provider '{call.provider}' broke off the stream: {exc}", "upstream_truncated"
                )
                error_class = "network"
            if response is None:  # nothing reached the client: the attempt may be retried
                recorded = True
                if upstream_error is None:
                    problem = "ended the stream without sending anything"
                    upstream_error = ApiError(502, f"provider '{call.provider}' {problem}", "upstream_truncated")
                    error_class = "network"
                assert error_class is not None
                return self.failed(call, upstream_error, error_class)
            provider_sent_error = meter.state.error_class not in (None, "invalid_response")
            if upstream_error is None and not meter.state.finished and not provider_sent_error:
                problem = meter.state.error_message or "ended the stream before it was complete"
                upstream_error = ApiError(502, f"provider '{call.provider}' {problem}", "upstream_truncated")
                error_class = "invalid_response"
            if upstream_error is not None:
                record(upstream_error.status, error_class, upstream_error.message)
                await response.write(call.dialect.stream_error_event(upstream_error))
            elif not meter.state.finished:  # the provider's own error event has been forwarded already
                record(upstream.status)
                error_class = meter.state.error_class
            else:
                cost = record(upstream.status)
                if call.dialect.sends_cost_comment:
                    await response.write(f": {COST_HEADER}={format_cost(cost)}\n\n".encode())
                for out in held:
                    await response.write(out)
            await response.write_eof()
        except ConnectionResetError:
            if not recorded:
                record(499, "client_cancelled", "the client closed the connection mid-stream")
            error_class = "client_cancelled"
        finally:
            if not recorded:  # cancelled: record what was seen before the task ended
                record(499, "client_cancelled", "the request was cancelled mid-stream")
        message = upstream_error.message if upstream_error is not None else meter.state.error_message
        return Attempt(response, error_class or "none", upstream.status, message, sent=True)
