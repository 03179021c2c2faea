"""Spend counters: check-and-reserve over several counters at once, then settle with what was really spent.

A counter (one key) holds what was spent (USD, tokens), what calls in flight hold in reserve,
the number of requests, and when it was first used. `reserve` looks at every line a call
touches and, only if none would pass one of its limits, adds the call's estimate to each
counter's reserve and one request; otherwise it changes nothing and says which line and limit
stopped it. `settle` moves the reservation to spent at the real amount. Counter keys carry their
period's start, so a new period starts from zero, and expire after their period.

`MemoryCounters` keeps them in this process (plain dict operations in the event loop, so a
reserve is atomic without a lock). `RedisCounters` keeps them in Redis so several workers or
replicas share them. Each reservation and each settle is applied by a Lua script, so it is
atomic; the reservations (and settles) that arrive while `IN_FLIGHT` script calls are under way
go together in the next, so a call costs about one round trip and a busy gateway sends a few
script calls at a time instead of opening a connection per request. Settles are not
awaited by the caller; `close` waits for them. A crashed process leaves its in-flight
reservations counted until their counter's period ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger("meterline.budgets")

PRUNE_INTERVAL_S = 60.0
IN_FLIGHT = 4
"""Script calls of each kind (reserve, settle) one process may have under way at once."""


class Totals(NamedTuple):
    """One counter's state. `held_*` is reserved by calls in flight; `first_at` is epoch seconds."""

    spent_usd: float
    held_usd: float
    spent_tokens: int
    held_tokens: int
    requests: int
    first_at: float


Amount = tuple[float, int]
"""USD and tokens."""
AfterSettle = Callable[[list[Totals]], None]
"""Called with each line's totals once a settle is applied."""


class Line(NamedTuple):
    """One counter a call touches, with the limits a reservation must stay within (None: not limited)."""

    key: str
    ttl_s: int
    limit_usd: float | None = None
    limit_tokens: int | None = None
    limit_requests: int | None = None
    limit_age_s: float | None = None
    """Seconds since the counter's first use after which no more is admitted."""


class Exceeded(NamedTuple):
    """A reservation refused: the index of the line that would pass its limit, which limit, and its totals."""

    index: int
    limit: str
    """usd, tokens, requests or age."""
    totals: Totals


class CountersUnavailable(RuntimeError):
    """The counters' backend did not answer."""


def passed_limit(line: Line, totals: Sequence[Any], usd: float, tokens: int, now: float) -> str | None:
    """The limit of `line` that one more request of `usd` and `tokens` would pass, or None (`totals` as `Totals`)."""
    spent_usd, held_usd, spent_tokens, held_tokens, requests, first_at = totals
    if line.limit_usd is not None and spent_usd + held_usd + usd > line.limit_usd:
        return "usd"
    if line.limit_tokens is not None and spent_tokens + held_tokens + tokens > line.limit_tokens:
        return "tokens"
    if line.limit_requests is not None and requests + 1 > line.limit_requests:
        return "requests"
    if line.limit_age_s is not None and now - first_at > line.limit_age_s:
        return "age"
    return None


class Counters(Protocol):
    persistent: bool
    """Whether counters outlive this process (else they are seeded from the event store at start-up)."""

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Finish pending settles, then disconnect."""

    async def reserve(self, lines: Sequence[Line], usd: float, tokens: int, now: float) -> Exceeded | None:
        """Reserve `usd`, `tokens` and one request on every line if none would pass a limit; else say which."""

    def settle(self, lines: Sequence[Line], reserved: Amount, spent: Amount, then: AfterSettle) -> None:
        """Release the (USD, tokens) `reserved` and add what was `spent`; `then` gets the totals after."""

    async def totals(self, keys: Sequence[str]) -> list[Totals | None]:
        """Each key's totals; None for a counter that does not exist."""

    async def seed(self, key: str, totals: Totals, ttl_s: int) -> None:
        """Create a counter with these totals unless it exists."""

    async def first_time(self, key: str, ttl_s: int) -> bool:
        """True once per `key` (for `ttl_s` seconds) across everything sharing these counters."""


_EMPTY = Totals(0.0, 0.0, 0, 0, 0, 0.0)


class MemoryCounters:
    """Counters in this process, each a list [spent_usd, held_usd, spent_tokens, held_tokens, requests, first_at]."""

    persistent = False

    def __init__(self) -> None:
        self._slots: dict[str, list[Any]] = {}
        self._expires: dict[str, float] = {}
        self._next_prune = 0.0

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def reserve(self, lines: Sequence[Line], usd: float, tokens: int, now: float) -> Exceeded | None:
        if now >= self._next_prune:
            self._prune(now)
        slots = self._slots
        for index, line in enumerate(lines):
            totals = slots.get(line.key) or (0.0, 0.0, 0, 0, 0, now)
            limit = passed_limit(line, totals, usd, tokens, now)
            if limit is not None:
                return Exceeded(index, limit, Totals(*totals))
        for line in lines:
            slot = slots.get(line.key)
            if slot is None:
                slot = slots[line.key] = [0.0, 0.0, 0, 0, 0, now]
            slot[1] += usd
            slot[3] += tokens
            slot[4] += 1
            self._expires[line.key] = now + line.ttl_s
        return None

    def settle(self, lines: Sequence[Line], reserved: Amount, spent: Amount, then: AfterSettle) -> None:
        after = []
        for line in lines:
            slot = self._slots.get(line.key)
            if slot is None:  # expired since the reservation
                after.append(_EMPTY)
                continue
            slot[0] += spent[0]
            slot[1] -= reserved[0]
            slot[2] += spent[1]
            slot[3] -= reserved[1]
            after.append(Totals(*slot))
        then(after)

    async def totals(self, keys: Sequence[str]) -> list[Totals | None]:
        return [Totals(*slot) if (slot := self._slots.get(key)) else None for key in keys]

    async def seed(self, key: str, totals: Totals, ttl_s: int) -> None:
        if key not in self._slots:
            self._slots[key] = list(totals)
            self._expires[key] = time.time() + ttl_s

    async def first_time(self, key: str, ttl_s: int) -> bool:
        """A counter that admits one request: only its first caller gets through."""
        return await self.reserve([Line(key, ttl_s, limit_requests=1)], 0.0, 0, time.time()) is None

    def _prune(self, now: float) -> None:
        for key in [key for key, expires in self._expires.items() if expires <= now]:
            del self._slots[key], self._expires[key]
        self._next_prune = now + PRUNE_INTERVAL_S


_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


class _Batcher(Generic[_Item, _Result]):
    """Sends items in calls of many: what is submitted while `in_flight` calls are under way goes in the next."""

    def __init__(self, send: Callable[[list[_Item]], Awaitable[list[_Result]]], in_flight: int) -> None:
        self._send = send
        self._in_flight = in_flight
        self._waiting: list[tuple[_Item, asyncio.Future[_Result]]] = []
        self._senders: set[asyncio.Task[None]] = set()

    def submit(self, item: _Item) -> asyncio.Future[_Result]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()
        self._waiting.append((item, future))
        if len(self._senders) < self._in_flight:
            sender = loop.create_task(self._run())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return future

    async def _run(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                results = await self._send([item for item, _ in batch])
            except Exception as exc:  # every caller hears of it; none waits forever
                for _, future in batch:
                    if not future.done():
                        future.set_exception(CountersUnavailable(repr(exc)))
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)

    async def drain(self) -> None:
        while self._senders:
            await asyncio.wait(set(self._senders))


_FIELDS = "'spent_usd', 'held_usd', 'spent_tokens', 'held_tokens', 'requests', 'first_at'"

# ARGV[1]: JSON {"now": epoch seconds, "calls": [[usd, tokens, [[ttl, limit_usd, limit_tokens,
# limit_requests, limit_age] per key]] per reservation]} (false: no limit); KEYS: every reservation's keys
# in order. Each reservation is all or nothing, as `passed_limit` decides. Returns JSON: per reservation
# 0, or [the refusing key's position (from 1), the limit, that counter's six totals]. (One JSON argument
# and answer instead of dozens of arguments: the Python client spends its time per argument.)
_RESERVE = f"""
local request = cjson.decode(ARGV[1])
local now = request.now
local out, k = {{}}, 0
for r, call in ipairs(request.calls) do
  local usd, tokens, lines = call[1], call[2], call[3]
  local result = 0
  for i, line in ipairs(lines) do
    local raw = redis.call('HMGET', KEYS[k + i], {_FIELDS})
    local t = {{}}
    for j = 1, 5 do t[j] = tonumber(raw[j]) or 0 end
    t[6] = tonumber(raw[6]) or now
    local passed = nil
    if line[2] and t[1] + t[2] + usd > line[2] then passed = 'usd'
    elseif line[3] and t[3] + t[4] + tokens > line[3] then passed = 'tokens'
    elseif line[4] and t[5] + 1 > line[4] then passed = 'requests'
    elseif line[5] and now - t[6] > line[5] then passed = 'age' end
    if passed then
      result = {{i, passed, t[1], t[2], t[3], t[4], t[5], t[6]}}
      break
    end
  end
  if result == 0 then
    for i, line in ipairs(lines) do
      local key = KEYS[k + i]
      if usd ~= 0 then redis.call('HINCRBYFLOAT', key, 'held_usd', usd) end
      if tokens ~= 0 then redis.call('HINCRBY', key, 'held_tokens', tokens) end
      if redis.call('HINCRBY', key, 'requests', 1) == 1 then redis.call('HSETNX', key, 'first_at', now) end
      redis.call('EXPIRE', key, line[1])
    end
  end
  out[r] = result
  k = k + #lines
end
return cjson.encode(out)
"""

# ARGV[1]: JSON [[change of held_usd, of held_tokens, spent usd, spent tokens, number of keys] per settle];
# KEYS: every settle's keys in order. Returns JSON: per settle, each key's six totals after.
_SETTLE = f"""
local out, k = {{}}, 0
for s, settle in ipairs(cjson.decode(ARGV[1])) do
  local totals = {{}}
  for i = 1, settle[5] do
    local key = KEYS[k + i]
    if redis.call('EXISTS', key) == 1 then
      if settle[1] ~= 0 then redis.call('HINCRBYFLOAT', key, 'held_usd', settle[1]) end
      if settle[2] ~= 0 then redis.call('HINCRBY', key, 'held_tokens', settle[2]) end
      if settle[3] ~= 0 then redis.call('HINCRBYFLOAT', key, 'spent_usd', settle[3]) end
      if settle[4] ~= 0 then redis.call('HINCRBY', key, 'spent_tokens', settle[4]) end
    end
    local raw = redis.call('HMGET', key, {_FIELDS})
    local t = {{}}
    for j = 1, 6 do t[j] = tonumber(raw[j]) or 0 end
    totals[i] = t
  end
  out[s] = totals
  k = k + settle[5]
end
return cjson.encode(out)
"""

# KEYS[1]: a counter. ARGV: spent usd, spent tokens, requests, first_at, ttl. Creates it unless it exists.
_SEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'spent_usd', ARGV[1], 'spent_tokens', ARGV[2], 'requests', ARGV[3], 'first_at', ARGV[4])
  redis.call('EXPIRE', KEYS[1], ARGV[5])
end
return 1
"""


def _totals(values: Sequence[Any]) -> Totals:
    usd, held_usd, tokens, held_tokens, requests, first_at = (float(value or 0) for value in values)
    return Totals(usd, held_usd, int(tokens), int(held_tokens), int(requests), first_at)


class _Reservation(NamedTuple):
    lines: Sequence[Line]
    usd: float
    tokens: int
    now: float


class _Settle(NamedTuple):
    lines: Sequence[Line]
    reserved: Amount
    spent: Amount


class RedisCounters:
    """Counters in Redis (hashes), shared by every gateway process using the same URL and key prefix."""

    persistent = True

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self._client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._reserve = self._client.register_script(_RESERVE)
        self._settle = self._client.register_script(_SETTLE)
        self._seed = self._client.register_script(_SEED)
        self._reservations: _Batcher[_Reservation, Exceeded | None] = _Batcher(self._send_reservations, IN_FLIGHT)
        self._settles: _Batcher[_Settle, list[Totals]] = _Batcher(self._send_settles, IN_FLIGHT)

    async def start(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise CountersUnavailable(f"Redis at {self.url} does not answer: {exc}") from exc

    async def close(self) -> None:
        await self._reservations.drain()  # a cancelled call's reservation is released once it is made
        await self._settles.drain()
        await self._client.aclose()

    async def reserve(self, lines: Sequence[Line], usd: float, tokens: int, now: float) -> Exceeded | None:
        reservation = _Reservation(lines, usd, tokens, now)
        future = self._reservations.submit(reservation)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:  # the call is gone: release what the script may still reserve for it
            future.add_done_callback(lambda done: self._release(reservation, done))
            raise

    def _release(self, reservation: _Reservation, done: asyncio.Future[Exceeded | None]) -> None:
        if not done.exception() and done.result() is None:
            self.settle(reservation.lines, (reservation.usd, reservation.tokens), (0.0, 0), lambda _: None)

    async def _send_reservations(self, batch: list[_Reservation]) -> list[Exceeded | None]:
        calls = [
            [call.usd, call.tokens, [[line.ttl_s, *(limit or False for limit in line[2:])] for line in call.lines]]
            for call in batch
        ]
        keys = [line.key for call in batch for line in call.lines]
        reply = await self._reserve(keys=keys, args=[orjson.dumps({"now": batch[0].now, "calls": calls})])
        return [
            None if result == 0 else Exceeded(result[0] - 1, result[1], _totals(result[2:]))
            for result in orjson.loads(reply)
        ]

    def settle(self, lines: Sequence[Line], reserved: Amount, spent: Amount, then: AfterSettle) -> None:
        self._settles.submit(_Settle(lines, reserved, spent)).add_done_callback(lambda done: _settled(done, then))

    async def _send_settles(self, batch: list[_Settle]) -> list[list[Totals]]:
        settles = [[-held[0], -held[1], spent[0], spent[1], len(lines)] for lines, held, spent in batch]
        keys = [line.key for settle in batch for line in settle.lines]
        reply = await self._settle(keys=keys, args=[orjson.dumps(settles)])
        return [[_totals(totals) for totals in per_settle] for per_settle in orjson.loads(reply)]

    async def totals(self, keys: Sequence[str]) -> list[Totals | None]:
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(key, "spent_usd", "held_usd", "spent_tokens", "held_tokens", "requests", "first_at")
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CountersUnavailable(str(exc)) from exc
        return [None if all(value is None for value in reply) else _totals(reply) for reply in replies]

    async def seed(self, key: str, totals: Totals, ttl_s: int) -> None:
        args = [repr(totals.spent_usd), totals.spent_tokens, totals.requests, repr(totals.first_at), ttl_s]
        try:
            await self._seed(keys=[key], args=args)
        except (RedisError, OSError) as exc:
            raise CountersUnavailable(str(exc)) from exc

    async def first_time(self, key: str, ttl_s: int) -> bool:
        try:
            return bool(await self._client.set(key, "1", nx=True, ex=ttl_s))
        except (RedisError, OSError) as exc:
            raise CountersUnavailable(str(exc)) from exc


def _settled(done: asyncio.Future[list[Totals]], then: AfterSettle) -> None:
    if done.exception() is not None:
        log.warning("could not settle a call's spend in Redis (its reservation stays counted): %s", done.exception())
    else:
        then(done.result())


def counters_for(backend: str, redis_url: str | None) -> Counters:
    if backend == "redis":
        assert redis_url is not None, "config validation requires redis_url for backend redis"
        return RedisCounters(redis_url)
    return MemoryCounters()
