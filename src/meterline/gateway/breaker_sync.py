"""Circuit breakers shared by every gateway process that names the same Redis (`breaker.redis_url`).

Each process counts failures on its own breakers, as without Redis; what is shared is the
verdict. When a process's own calls open a breaker (its failures pass the threshold, or its
probe fails) or close one (its probe succeeds), it publishes the change on a Redis channel and
keeps open breakers in a Redis hash. Every other process adopts the change when it arrives: a
model failing in one worker or replica is skipped by all of them until its cool-down ends, and
one successful probe anywhere closes it everywhere. A process that starts, or reconnects after
Redis was away, reads the hash, so it knows the breakers open at that time. After a cool-down
each process lets its own probe through.

Nothing of this is on the request path: a change is published by a background task, and
adopted by the task that listens. Times travel as wall-clock seconds and are turned into the
receiving process's `Clock`. If Redis does not answer, breakers work per process, and the
failure is logged at most every 10 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from meterline.gateway.breaker import Breaker, BreakerBoard
from meterline.outages import OutageLog

log = logging.getLogger("meterline.gateway.breakers")

RECONNECT_S = 1.0
PUBLISH_TIMEOUT_S = 2.0
_HASH_GRACE_S = 60
"""How long the hash of open breakers outlives the last opening's cool-down (then every entry is over)."""


class BreakerSync:
    def __init__(self, board: BreakerBoard, url: str, key_prefix: str) -> None:
        self.board = board
        self.url = url
        self.channel = key_prefix + "changes"
        self.open_key = key_prefix + "open"
        self.origin = uuid.uuid4().hex
        """This process, in what it publishes: its own messages come back to it and are skipped."""
        self._client: aioredis.Redis | None = None
        self._listener: asyncio.Task[None] | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self._outage = OutageLog(log)
        for breaker in board.breakers.values():
            breaker.on_change = self._changed

    async def start(self) -> None:
        self._client = aioredis.Redis.from_url(self.url, socket_connect_timeout=1.0)
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        """Publish what is pending, stop listening, disconnect."""
        if self._publishing:
            await asyncio.gather(*self._publishing, return_exceptions=True)
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    # ---- out ----------------------------------------------------------------------------------

    def _changed(self, breaker: Breaker) -> None:
        """A breaker opened or closed by this process's calls: publish it in the background."""
        now, wall = self.board.clock.now(), time.time()
        message: dict[str, Any] = {"origin": self.origin, "provider": breaker.provider, "model": breaker.model}
        if breaker.state == "open":
            assert breaker.opened_at is not None and breaker.retry_at is not None
            message |= {
                "opened_at": wall + breaker.opened_at - now,
                "retry_at": wall + breaker.retry_at - now,
                "cause": breaker.cause,
                "last_error": breaker.last_error,
            }
        task = asyncio.get_running_loop().create_task(self._publish(message, breaker.settings.cooldown_s))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, message: dict[str, Any], cooldown_s: float) -> None:
        assert self._client is not None
        payload, field = orjson.dumps(message), f"{message['provider']}/{message['model']}"
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S), self._client.pipeline(transaction=True) as pipe:
                if "retry_at" in message:
                    pipe.hset(self.open_key, field, payload)
                    pipe.expire(self.open_key, int(cooldown_s) + _HASH_GRACE_S)
                else:
                    pipe.hdel(self.open_key, field)
                pipe.publish(self.channel, payload)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._unavailable(exc)

    # ---- in -----------------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Adopt the open breakers in the hash, then every change published; start over if Redis goes away."""
        assert self._client is not None
        while True:
            try:
                async with self._client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)  # before reading the hash: no change falls in between
                    for payload in (await self._client.hgetall(self.open_key)).values():
                        self._adopt(payload)
                    async for message in pubsub.listen():
                        self._adopt(message["data"])
            except (RedisError, OSError) as exc:
                self._unavailable(exc)
                await asyncio.sleep(RECONNECT_S)

    def _adopt(self, payload: bytes) -> None:
        try:
            message = orjson.loads(payload)
            origin, provider, model = message["origin"], message["provider"], message["model"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            log.warning("ignored a message on %s that is not a breaker change: %r", self.channel, payload[:200])
            return
        breaker = self.board.get(provider, model)
        if origin == self.origin or breaker is None:  # our own, or a model this process does not serve
            return
        now, wall = self.board.clock.now(), time.time()
        retry_at = message.get("retry_at")
        if retry_at is None:
            breaker.adopt(None, None, "", None)
        elif retry_at > wall:  # a cool-down already over changes nothing: the next call here is a probe anyway
            cause = f"{message.get('cause') or 'failures'} in another gateway process"
            opened_at = now + float(message.get("opened_at") or wall) - wall
            breaker.adopt(opened_at, now + retry_at - wall, cause, message.get("last_error"))

    def _unavailable(self, exc: BaseException) -> None:
        self._outage.report("the breakers' Redis at %s does not answer (%s); breakers work per process", self.url, exc)
