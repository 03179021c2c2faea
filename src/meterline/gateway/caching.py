"""The gateway's side of the response cache: replaying hits, keeping answers, embedding prompts.

A hit is sent byte for byte (a stream with its cost comment saying 0) and recorded as an event
with no tokens, cost 0 and `saved_usd` = what the call that produced the answer cost. A miss's
answer is kept when its call succeeded with the model it asked for. The semantic cache's prompt
embeddings are calls through the gateway itself (`Serve`), so they are metered, budgeted and,
being embeddings, deduplicated by the exact cache like any client's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from aiohttp import web

from meterline.cache.entries import CachedAnswer
from meterline.cache.policy import HEADER
from meterline.cache.service import COST_COMMENT, CapturingResponse, Plan, ResponseCache, stream_answer
from meterline.config import Config
from meterline.gateway.metering import CallContext, Outcome, Recorder
from meterline.gateway.retries import ATTEMPTS_HEADER
from meterline.providers.base import Dialect, Usage

Serve = Callable[[web.Request, CallContext, bytes, int | None], Awaitable[web.StreamResponse]]
"""How the gateway answers a call (its raw body, its retries limit): from cache, else upstream (`Gateway.serve`)."""


class GatewayCache:
    def __init__(
        self,
        cache: ResponseCache,
        config: Config,
        recorder: Recorder,
        embeddings_dialect: Dialect,
        headers: tuple[str, str],
    ) -> None:
        """`headers`: the names of the gateway's request-id and cost response headers."""
        self.cache = cache
        self.config = config
        self.recorder = recorder
        self.embeddings_dialect = embeddings_dialect
        self.request_id_header, self.cost_header = headers

    def plan(self, call: CallContext, headers: Mapping[str, str]) -> Plan:
        """Raises `CacheHeaderInvalid` or `SemanticNotConfigured` for a header the client must fix."""
        caller = (call.identity.key_id, call.identity.team, call.team)
        return self.cache.plan(
            call.operation,
            call.requested_model,
            call.body,
            headers,
            caller,
            call.attribution.feature,
            call.streaming,
            call.dialect.temperature(call.body),
        )

    async def lookup(self, request: web.Request, call: CallContext, plan: Plan, serve: Serve) -> CachedAnswer | None:
        """The cached answer for the call (exact, else similar when its plan is semantic), or None."""

        async def embed(text: str) -> list[float] | None:
            return await self.embed(request, call, text, serve)

        return await self.cache.lookup(plan, embed)

    async def replay(
        self, request: web.Request, call: CallContext, plan: Plan, answer: CachedAnswer
    ) -> web.StreamResponse:
        """Send a cached answer byte for byte, after recording its event.

        A semantic hit's event carries the property `cache_similarity`, to tune the threshold by.
        """
        if plan.similarity is not None:
            properties = {**call.attribution.properties, "cache_similarity": f"{plan.similarity:.4f}"}
            call.attribution = dataclasses.replace(call.attribution, properties=properties)
        outcome = Outcome(
            status_code=answer.status,
            usage=Usage(),
            response_model=answer.response_model,
            finish_reason=answer.finish_reason,
            ttft_ms=call.elapsed_ms() if answer.is_stream else None,
            saved_usd=answer.cost_usd,
        )
        self.recorder.record(call, outcome)
        headers = {
            "content-type": answer.content_type,
            self.request_id_header: call.request_id,
            HEADER: plan.status,
            ATTEMPTS_HEADER: "0",  # no upstream attempt was made
        }
        if answer.stream_tail is None:
            headers[self.cost_header] = "0"
            return web.Response(status=answer.status, body=answer.body, headers=headers)
        response = web.StreamResponse(status=answer.status, headers=headers)
        await response.prepare(request)
        cost_comment = COST_COMMENT + b"0\n\n" if call.dialect.sends_cost_comment else b""
        await response.write(answer.body + cost_comment + answer.stream_tail)
        await response.write_eof()
        return response

    @staticmethod
    def stream_response(call: CallContext, status: int, headers: dict[str, str]) -> web.StreamResponse:
        """The response a stream is written to; it keeps a copy of its bytes when the cache will store them."""
        plan = call.cache_plan
        if plan is not None:
            headers[HEADER] = plan.status
            if plan.stores:
                return CapturingResponse(status=status, headers=headers)
        return web.StreamResponse(status=status, headers=headers)

    async def keep(self, call: CallContext, plan: Plan, response: web.StreamResponse) -> None:
        """Store the call's answer: only a complete success of the model it asked for."""
        if not response.prepared:
            response.headers[HEADER] = plan.status
        event = call.events[-1] if call.events else None
        if not plan.stores or event is None or event.status_code >= 400 or event.error_class != "none":
            return
        if event.served_model not in (None, call.requested_model):  # a downgrade or fallback answered
            return
        answer = CachedAnswer(
            status=response.status,
            content_type=response.headers.get("content-type", "application/json"),
            cost_usd=event.cost_usd,
            response_model=event.response_model,
            finish_reason=event.finish_reason,
        )
        if isinstance(response, CapturingResponse):
            if call.dialect.sends_cost_comment:  # then a complete stream holds it before its last event
                parts = stream_answer(response.written)
            else:
                parts = b"".join(response.written), b""
            if parts is None:
                return
            answer.body, answer.stream_tail = parts
        elif not call.streaming and isinstance(response, web.Response) and isinstance(response.body, bytes):
            answer.body = response.body
        else:
            return
        await self.cache.store(plan, answer)

    async def embed(
        self,
        request: web.Request,
        call: CallContext,
        text: str,
        serve: Serve,
    ) -> list[float] | None:
        """Embed a prompt for the semantic cache as a request of its own; None when that fails.

        It carries the call's attribution plus the property `cache=semantic_lookup`.
        """
        semantic = self.config.cache.semantic
        model = self.config.model(semantic.embedding_model or "")
        assert model is not None, "checked at start-up"
        body: dict[str, Any] = {"model": model.name, "input": text, "encoding_format": "float"}
        if semantic.dimensions is not None:
            body["dimensions"] = semantic.dimensions
        properties = {**call.attribution.properties, "cache": "semantic_lookup"}
        embedding = CallContext(
            operation="embeddings",
            dialect=self.embeddings_dialect,
            body=body,
            identity=call.identity,
            attribution=dataclasses.replace(call.attribution, properties=properties),
            provider=model.provider,
            requested_model=model.name,
            upstream_model=model.upstream_name,
            shape=self.embeddings_dialect.request_shape("embeddings", body),
        )
        embedding.cache_plan = self.plan(embedding, {})
        response = await serve(request, embedding, orjson.dumps(body), None)
        if response.status != 200 or not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return None
        data = orjson.loads(response.body).get("data")
        vector = data[0].get("embedding") if isinstance(data, list) and data and isinstance(data[0], dict) else None
        return vector if isinstance(vector, list) and vector else None
