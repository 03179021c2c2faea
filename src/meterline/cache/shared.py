"""The semantic cache's prompts in Redis, so every worker and replica finds what the others embedded.

Each namespace's prompts are a Redis stream under `<key_prefix>prompts:<hash of the namespace>`,
one entry per embedded prompt: its float32 vector, the exact-cache key of its answer and its
expiry as a Unix time. The stream is trimmed to about `max_entries` and expires with the TTL of
its latest prompt. A process's `SemanticIndex` is a replica: before each search of a namespace it reads the
entries added since it last looked. When Redis does not answer, the search uses what the replica
holds and the new prompt is not shared (logged by the `RedisLink`).
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections.abc import Callable

from redis.exceptions import RedisError

from meterline.cache.backends import RedisLink
from meterline.cache.semantic import SemanticIndex


class SharedPrompts:
    def __init__(
        self, link: RedisLink, key_prefix: str, max_entries: int, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.link = link
        self.prefix = key_prefix + "prompts:"
        self.max_entries = max_entries
        self.wall_clock = wall_clock

    def stream_key(self, namespace: tuple[str, ...]) -> str:
        return self.prefix + hashlib.blake2b("\0".join(namespace).encode(), digest_size=16).hexdigest()

    async def publish(self, namespace: tuple[str, ...], vector: list[float], key: str, ttl_s: float) -> bool:
        """Add a prompt for every process; False when Redis did not take it."""
        stream = self.stream_key(namespace)
        fields: dict[str, bytes | str] = {
            "v": array("f", vector).tobytes(),
            "k": key,
            "e": repr(self.wall_clock() + ttl_s),
        }
        try:
            async with self.link.client.pipeline(transaction=False) as pipe:
                pipe.xadd(stream, fields, maxlen=self.max_entries, approximate=True)  # type: ignore[arg-type]
                pipe.pexpire(stream, max(1, int(ttl_s * 1000)))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self.link.unavailable(exc)
            return False
        return True

    async def sync(self, namespace: tuple[str, ...], index: SemanticIndex) -> None:
        """Add to `index` the namespace's prompts published since it last read them."""
        cursor = index.cursor(namespace)
        try:
            entries = await self.link.client.xrange(
                self.stream_key(namespace), min="-" if cursor == "0" else "(" + cursor
            )
        except (RedisError, OSError) as exc:
            self.link.unavailable(exc)
            return
        now = self.wall_clock()
        for entry_id, fields in entries:
            ttl_s = float(fields[b"e"]) - now
            position = entry_id.decode()
            if ttl_s > 0:
                vector = array("f", fields[b"v"]).tolist()
                index.add(namespace, vector, fields[b"k"].decode(), ttl_s, cursor=position)
