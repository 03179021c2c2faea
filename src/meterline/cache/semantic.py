"""The semantic cache's vector index: prompts' embeddings, searched for the most similar one.

One usearch HNSW index (cosine) per namespace — the caller's scope, the model, the feature and
the hash of the rest of the request — maps each embedded prompt to the exact-cache key of its
answer. A search returns that key when the nearest prompt's cosine similarity reaches the
threshold and its answer's TTL has not passed. The index lives in this process; with the Redis
backend it is a replica of the prompts every process published (`meterline.cache.shared`). It
holds about `max_entries` prompts, dropping expired and the oldest ones first.
usearch is an optional dependency (`pip install 'meterline[semantic]'`); `require_usearch`
says so at start-up when the semantic cache is configured without it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from typing import Any


class SemanticUnavailable(RuntimeError):
    """The semantic cache is configured but its vector index library is not installed."""


def require_usearch() -> tuple[Any, Any]:
    """The usearch `Index` class and numpy (a dependency of usearch), or `SemanticUnavailable` saying how to install it.

    Imported only when a semantic cache is configured: neither is a dependency of the gateway itself.
    """
    try:
        import numpy
        from usearch.index import Index
    except ImportError as exc:
        raise SemanticUnavailable(
            "cache.semantic.embedding_model is set, but the vector index library usearch is not installed: "
            "pip install 'meterline[semantic]' (or pip install usearch), or remove cache.semantic"
        ) from exc
    return Index, numpy


@dataclass
class _Namespace:
    index: Any
    entries: OrderedDict[int, tuple[str, float]] = field(default_factory=OrderedDict)
    """label -> (exact-cache key, expiry), oldest first."""
    cursor: str = "0"
    """How far this namespace has been read from a shared store (see `meterline.cache.shared`)."""


class SemanticIndex:
    def __init__(self, threshold: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.max_entries = max_entries
        self.clock = clock
        self._index_class, self._numpy = require_usearch()
        self._namespaces: dict[tuple[str, ...], _Namespace] = {}
        self._labels = count(1)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def _array(self, vector: list[float]) -> Any:
        return self._numpy.asarray(vector, dtype=self._numpy.float32)

    def search(self, namespace: tuple[str, ...], vector: list[float]) -> tuple[str, float] | None:
        """(the exact-cache key, similarity) of the most similar live prompt at or above the threshold."""
        space = self._namespaces.get(namespace)
        if space is None or len(space.index) == 0 or space.index.ndim != len(vector):
            return None
        now = self.clock()
        matches = space.index.search(self._array(vector), min(8, len(space.index)))
        for label, distance in zip(matches.keys.tolist(), matches.distances.tolist(), strict=True):
            similarity = 1.0 - float(distance)
            if similarity < self.threshold:
                break
            key, expires_at = space.entries[label]
            if expires_at > now:
                return key, similarity
        return None

    def cursor(self, namespace: tuple[str, ...]) -> str:
        """How far the namespace has been read from a shared store ("0": not at all, or not since it was dropped)."""
        space = self._namespaces.get(namespace)
        return "0" if space is None else space.cursor

    def add(
        self, namespace: tuple[str, ...], vector: list[float], key: str, ttl_s: float, cursor: str | None = None
    ) -> None:
        """Index a prompt's vector for `ttl_s` seconds; `cursor`: the shared store's position it was read at."""
        space = self._namespaces.pop(namespace, None)
        if space is None or space.index.ndim != len(vector):
            if space is not None:
                self._size -= len(space.entries)
            space = _Namespace(self._index_class(ndim=len(vector), metric="cos", dtype="f32"))
        self._namespaces[namespace] = space  # the most recently added-to namespace last
        label = next(self._labels)
        space.index.add(label, self._array(vector))
        space.entries[label] = (key, self.clock() + ttl_s)
        if cursor is not None:
            space.cursor = cursor
        self._size += 1
        self._evict(space)

    def _evict(self, space: _Namespace) -> None:
        """Drop the space's expired prompts (oldest first), then whole stale namespaces while over the bound."""
        now = self.clock()
        while space.entries:
            label, (_, expires_at) = next(iter(space.entries.items()))
            if expires_at > now and self._size <= self.max_entries:
                break
            del space.entries[label]
            space.index.remove(label)
            self._size -= 1
        while self._size > self.max_entries and len(self._namespaces) > 1:
            stale = self._namespaces.pop(next(iter(self._namespaces)))
            self._size -= len(stale.entries)
