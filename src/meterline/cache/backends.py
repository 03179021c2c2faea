"""Where cached answers live: this process's memory (an LRU bounded in MB) or Redis (shared).

Both keep each answer for its TTL. The memory backend takes an injectable clock, so expiry is
tested without waiting. The Redis backend stores each answer under `<key_prefix>answer:<key>`
with the TTL as the key's expiry, so every worker and replica pointed at the same Redis shares
answers; when Redis does not answer, lookups miss and stores are skipped (logged, at most every
10 s): the cache never fails a call.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meterline.cache.entries import CachedAnswer, decode_answer, encode_answer
from meterline.outages import OutageLog

log = logging.getLogger("meterline.cache")


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str) -> CachedAnswer | None:
        """The live answer stored under `key`, or None."""

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        """Keep `answer` under `key` for `ttl_s` seconds."""


class MemoryBackend:
    """An in-process LRU: at most `max_bytes` of answers; the least recently used go first."""

    def __init__(self, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_bytes = max_bytes
        self.clock = clock
        self.used_bytes = 0
        self._answers: OrderedDict[str, tuple[float, CachedAnswer]] = OrderedDict()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._answers.clear()
        self.used_bytes = 0

    def __len__(self) -> int:
        return len(self._answers)

    async def get(self, key: str) -> CachedAnswer | None:
        found = self._answers.get(key)
        if found is None:
            return None
        expires_at, answer = found
        if expires_at <= self.clock():
            self._drop(key)
            return None
        self._answers.move_to_end(key)
        return answer

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        if answer.size > self.max_bytes:
            return
        if key in self._answers:
            self._drop(key)
        self._answers[key] = (self.clock() + ttl_s, answer)
        self.used_bytes += answer.size
        while self.used_bytes > self.max_bytes:
            self._drop(next(iter(self._answers)))

    def _drop(self, key: str) -> None:
        _, answer = self._answers.pop(key)
        self.used_bytes -= answer.size


class RedisLink:
    """One Redis connection pool for the cache, and its logging of failures (at most every 10 s)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client: aioredis.Redis | None = None
        self._outage = OutageLog(log)

    @property
    def client(self) -> aioredis.Redis:
        assert self._client is not None, "RedisLink.start() was not awaited"
        return self._client

    async def start(self) -> None:
        if self._client is not None:
            return
        self._client = aioredis.Redis.from_url(self.url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            self.unavailable(exc)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def unavailable(self, exc: BaseException) -> None:
        self._outage.report("the cache's Redis at %s does not answer (%s); calls go upstream uncached", self.url, exc)


class RedisBackend:
    """Answers in Redis, shared by every process that uses the same URL and prefix."""

    def __init__(self, link: RedisLink, key_prefix: str) -> None:
        self.link = link
        self.prefix = key_prefix + "answer:"

    async def start(self) -> None:
        await self.link.start()

    async def close(self) -> None:
        await self.link.close()

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            data = await self.link.client.get(self.prefix + key)
        except (RedisError, OSError) as exc:
            self.link.unavailable(exc)
            return None
        return None if data is None else decode_answer(data)

    async def put(self, key: str, answer: CachedAnswer, ttl_s: float) -> None:
        try:
            await self.link.client.set(self.prefix + key, encode_answer(answer), px=max(1, int(ttl_s * 1000)))
        except (RedisError, OSError) as exc:
            self.link.unavailable(exc)


def backend_for(kind: str, max_size_mb: float, link: RedisLink | None, key_prefix: str) -> Backend:
    if kind == "redis":
        assert link is not None, "a Redis backend needs a link"
        return RedisBackend(link, key_prefix)
    return MemoryBackend(int(max_size_mb * 1024 * 1024))
