"""The cache as the gateway uses it: plan a call, look it up, store its answer, capture streams.

`ResponseCache.plan` decides what the cache does for a call and computes its key once;
`lookup` tries the exact key, then (semantic calls) embeds the last user message through the
`Embed` callback the gateway provides and searches the vector index; `store` keeps a successful
answer under the exact key and adds the prompt's embedding to the index. `CapturingResponse`
is the stream response the gateway writes to when a stream's bytes are to be stored.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meterline.cache.backends import Backend, RedisLink, backend_for
from meterline.cache.entries import CachedAnswer
from meterline.cache.policy import HEADER, CachePolicy, Decision
from meterline.cache.requests import CacheScope, request_key, scope_of, semantic_prompt
from meterline.cache.semantic import SemanticIndex
from meterline.cache.shared import SharedPrompts
from meterline.config import CacheConfig

COST_COMMENT = b": x-meterline-cost-usd="

Embed = Callable[[str], Awaitable[list[float] | None]]
"""Embeds a prompt (through the gateway, so the call is metered); None when it could not."""

HIT_EXACT, HIT_SEMANTIC, MISS, BYPASS, REFRESH = "hit_exact", "hit_semantic", "miss", "bypass", "refresh"


@dataclass
class Plan:
    """What the cache does for one call, and what it learns on the way (its status, its prompt's vector)."""

    decision: Decision
    status: str
    key: str = ""
    scope: str = ""
    namespace: tuple[str, ...] = ()
    prompt: str | None = None
    vector: list[float] | None = None
    similarity: float | None = None
    """For a semantic hit: the cosine similarity of the cached prompt to this one."""

    @property
    def stores(self) -> bool:
        return self.status in (MISS, REFRESH)


class CapturingResponse(web.StreamResponse):
    """A stream response that keeps a copy of every byte written to the client."""

    def __init__(self, *, status: int, headers: dict[str, str]) -> None:
        super().__init__(status=status, headers=headers)
        self.written: list[bytes] = []

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))
        await super().write(data)


def stream_answer(written: list[bytes]) -> tuple[bytes, bytes] | None:
    """A captured stream split around its cost comment: (before, after); None without the comment."""
    for index, chunk in enumerate(written):
        if chunk.startswith(COST_COMMENT):
            return b"".join(written[:index]), b"".join(written[index + 1 :])
    return None


class ResponseCache:
    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.scope: CacheScope = config.scope
        self.policy = CachePolicy(config)
        link = RedisLink(config.redis_url) if config.backend == "redis" and config.redis_url else None
        self.backend: Backend = backend_for(config.backend, config.max_size_mb, link, config.key_prefix)
        semantic = config.semantic
        self.index: SemanticIndex | None = None
        self.shared: SharedPrompts | None = None
        if semantic.embedding_model is not None:
            self.index = SemanticIndex(semantic.threshold, semantic.max_entries)
            if link is not None:
                self.shared = SharedPrompts(link, config.key_prefix, semantic.max_entries)

    async def start(self) -> None:
        await self.backend.start()

    async def close(self) -> None:
        await self.backend.close()

    def plan(
        self,
        operation: str,
        model: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
        caller: tuple[str, str | None, str | None],
        feature: str | None,
        streaming: bool,
        temperature: float | None,
    ) -> Plan:
        """`caller` is (key id, the key's team, the call's team); `streaming` and `temperature` are the call's.

        Raises for a bad header (see `CachePolicy`).
        """
        decision = self.policy.decide(operation, model, feature, temperature, headers.get(HEADER))
        if decision.action == "bypass":
            return Plan(decision, BYPASS)
        plan = Plan(decision, MISS if decision.action == "lookup" else REFRESH)
        plan.scope = scope_of(self.scope, *caller)
        key_headers = [headers.get(name, "") for name in self.config.key_headers]
        plan.key = request_key(operation, model, body, key_headers, streaming) + "|" + plan.scope
        if decision.semantic:
            found = semantic_prompt(operation, model, body, streaming)
            if found is not None:
                plan.prompt, context = found
                plan.namespace = (plan.scope, model, feature or "", context)
        return plan

    async def lookup(self, plan: Plan, embed: Embed) -> CachedAnswer | None:
        """The cached answer for a planned call (setting `plan.status` to the kind of hit), or None."""
        if plan.status != MISS:
            return None
        answer = await self.backend.get(plan.key)
        if answer is not None:
            plan.status = HIT_EXACT
            return answer
        if plan.prompt is None or self.index is None:
            return None
        plan.vector = await embed(plan.prompt)
        if plan.vector is None:
            return None
        if self.shared is not None:
            await self.shared.sync(plan.namespace, self.index)
        match = self.index.search(plan.namespace, plan.vector)
        if match is None:
            return None
        answer = await self.backend.get(match[0])
        if answer is not None:
            plan.status, plan.similarity = HIT_SEMANTIC, match[1]
        return answer

    async def store(self, plan: Plan, answer: CachedAnswer) -> None:
        ttl_s = plan.decision.ttl_s
        await self.backend.put(plan.key, answer, ttl_s)
        if self.index is None or plan.vector is None:
            return
        if self.shared is not None and await self.shared.publish(plan.namespace, plan.vector, plan.key, ttl_s):
            return  # every process, this one included, reads it from Redis before its next search
        self.index.add(plan.namespace, plan.vector, plan.key, ttl_s)
