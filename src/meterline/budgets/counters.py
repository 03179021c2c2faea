"""Spend counters: check-and-reserve over several counters at once, then settle with what was really spent.

A counter (one key) holds what was spent (USD, tokens), what calls in flight hold in reserve,
the number of requests, and when it was first used. `reserve` looks at every line a call
touches and, only if none would pass one of its limits, adds the call's estimate to each
counter's reserve and one request; otherwise it changes nothing and says which line and limit
stopped it. `settle` moves the reservation to spent at the real amount. Counter keys carry their
period's start, so a new period starts from zero, and expire after their period.

`MemoryCounters` keeps them in this process (plain dict operations in the event loop, so a
reserve is atomic without a lock). `RedisCounters` keeps them in Redis so several workers or
replicas share them, and leases: when a Lua script reserves a call on a counter (atomically, all
lines or none), it also reserves room for up to `LEASE_CALLS` more calls like it on each line, as
much as fits in `LOCAL_SHARE` of the room left below every limit, for this process alone. The
process admits the next calls from its leases at once and asks for more in the background when
half is used. Leased room is counted in Redis as held (and as requests) the moment it is leased,
so no process can pass a limit by more than what its calls' estimates fall short of their real
cost, exactly as without leases; near a limit the room is too small to lease and every call is
checked in Redis. The price is that room one process has leased and not used is not available to
the others until it is used or given back (after `LEASE_IDLE_S` unused, and at `close`). One
script call is under way at a time and carries every change, check, lease and read made while
the previous one was out; what no caller waits for waits `BATCH_DELAY_S` for company, so a busy
gateway sends a few hundred script calls a second however many requests it serves. Settles are
not awaited by the caller; `close` waits for them. A crashed process leaves its calls in flight
and its unused leases counted until their counter's period ends; one that could not reach Redis
logs the changes it dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import orjson
import redis.asyncio as redis
from redis.exceptions import RedisError

log = logging.getLogger("meterline.budgets")

PRUNE_INTERVAL_S = 60.0
LEASE_CALLS = 16
"""How many calls like the one at hand a process leases on a Redis counter at a time."""
LOCAL_SHARE = 0.1
"""The most of the room left below a limit that one lease may take."""
LEASE_IDLE_S = 1.0
"""A lease not used for this long is given back."""
BATCH_DELAY_S = 0.005
"""What no caller waits for (settles, lease refills and returns) waits this long for company before it is sent."""


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


_FIELDS = "'spent_usd', 'held_usd', 'spent_tokens', 'held_tokens', 'requests', 'first_at'"

# ARGV[1]: JSON {"now": epoch seconds, "share": LOCAL_SHARE,
#   "changes": [[key position, ttl, change of held_usd, of held_tokens, of spent_usd, of spent_tokens, of requests]],
#   "calls": [[usd, tokens, now, lease only, [[key position, ttl, limit_usd, limit_tokens, limit_requests,
#              limit_age, calls to lease]]]]}
# (false: no limit); KEYS: every key the batch names, once. Changes are applied first (one that adds no
# request to a counter that no longer exists is dropped: a settle after expiry). Then each call is reserved
# all or nothing, as `passed_limit` decides (unless it only asks for leases), and each of its lines leases
# up to the asked number of calls like it, as many as fit in `share` of the room left below every limit.
# Returns JSON [per call [0, the refusing line's position (from 1), the limit, that counter's six totals]
# or [1, per line [calls leased, first_at]], per key its six totals after, or false if it does not exist].
# (One JSON argument and answer instead of dozens of arguments: the Python client spends its time per
# argument.)
_APPLY = f"""
local request = cjson.decode(ARGV[1])
local share = request.share
local function read(key, now)
  local raw = redis.call('HMGET', key, {_FIELDS})
  local t = {{}}
  for j = 1, 5 do t[j] = tonumber(raw[j]) or 0 end
  t[6] = tonumber(raw[6]) or now
  return t, raw[5] ~= false
end
local function add(key, ttl, usd, tokens, requests, now)
  if usd ~= 0 then redis.call('HINCRBYFLOAT', key, 'held_usd', usd) end
  if tokens ~= 0 then redis.call('HINCRBY', key, 'held_tokens', tokens) end
  redis.call('HINCRBY', key, 'requests', requests)
  redis.call('HSETNX', key, 'first_at', now)
  redis.call('EXPIRE', key, ttl)
end
local function lease(key, line, usd, tokens, now)
  local t = read(key, now)
  local n = line[7]
  if line[3] and usd > 0 then n = math.min(n, math.floor(share * (line[3] - t[1] - t[2]) / usd)) end
  if line[4] and tokens > 0 then n = math.min(n, math.floor(share * (line[4] - t[3] - t[4]) / tokens)) end
  if line[5] then n = math.min(n, math.floor(share * (line[5] - t[5]))) end
  if line[6] and now - t[6] > line[6] then n = 0 end
  if n < 1 then return {{0, t[6]}} end
  add(key, line[2], n * usd, n * tokens, n, now)
  return {{n, t[6]}}
end
for _, d in ipairs(request.changes) do
  local key = KEYS[d[1]]
  if d[7] > 0 or redis.call('EXISTS', key) == 1 then
    if d[3] ~= 0 then redis.call('HINCRBYFLOAT', key, 'held_usd', d[3]) end
    if d[4] ~= 0 then redis.call('HINCRBY', key, 'held_tokens', d[4]) end
    if d[5] ~= 0 then redis.call('HINCRBYFLOAT', key, 'spent_usd', d[5]) end
    if d[6] ~= 0 then redis.call('HINCRBY', key, 'spent_tokens', d[6]) end
    if d[7] > 0 then add(KEYS[d[1]], d[2], 0, 0, d[7], request.now)
    elseif d[7] < 0 then redis.call('HINCRBY', key, 'requests', d[7]) end
  end
end
local results = {{}}
for r, call in ipairs(request.calls) do
  local usd, tokens, now, lease_only, lines = call[1], call[2], call[3], call[4], call[5]
  local result = nil
  if not lease_only then
    for i, line in ipairs(lines) do
      local t = read(KEYS[line[1]], now)
      local passed = nil
      if line[3] and t[1] + t[2] + usd > line[3] then passed = 'usd'
      elseif line[4] and t[3] + t[4] + tokens > line[4] then passed = 'tokens'
      elseif line[5] and t[5] + 1 > line[5] then passed = 'requests'
      elseif line[6] and now - t[6] > line[6] then passed = 'age' end
      if passed then
        result = {{0, i, passed, t[1], t[2], t[3], t[4], t[5], t[6]}}
        break
      end
    end
    if not result then
      for _, line in ipairs(lines) do add(KEYS[line[1]], line[2], usd, tokens, 1, now) end
    end
  end
  if not result then
    local leased = {{}}
    for i, line in ipairs(lines) do
      if line[7] > 0 then leased[i] = lease(KEYS[line[1]], line, usd, tokens, now) else leased[i] = {{0, 0}} end
    end
    result = {{1, leased}}
  end
  results[r] = result
end
local totals = {{}}
for i = 1, #KEYS do
  local t, exists = read(KEYS[i], 0)
  if exists then totals[i] = t else totals[i] = false end
end
return cjson.encode({{results, totals}})
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


def _limited(line: Line) -> bool:
    return any(limit is not None for limit in line[2:])


class _Lease:
    """Room on one Redis counter that this process has already reserved there, for calls it admits itself."""

    __slots__ = ("first_at", "refilling", "requests", "tokens", "usd", "used_at")

    def __init__(self, first_at: float) -> None:
        self.usd = 0.0
        self.tokens = 0
        self.requests = 0
        self.first_at = first_at
        self.used_at = time.monotonic()
        self.refilling = False

    def covers(self, line: Line, usd: float, tokens: int, now: float) -> bool:
        if self.requests < 1 or self.usd < usd - 1e-12 or self.tokens < tokens:
            return False
        return line.limit_age_s is None or now - self.first_at <= line.limit_age_s


class _Change:
    """Changes to one counter not sent yet: held USD and tokens, spent USD and tokens, requests."""

    __slots__ = ("held_tokens", "held_usd", "requests", "spent_tokens", "spent_usd", "ttl_s")

    def __init__(self, ttl_s: int) -> None:
        self.held_usd = self.spent_usd = 0.0
        self.held_tokens = self.spent_tokens = self.requests = 0
        self.ttl_s = ttl_s


class _Call(NamedTuple):
    """A call for the script: reserve it (unless `lease_only`) and lease `want[i]` calls like it on line i."""

    lines: Sequence[Line]
    usd: float
    tokens: int
    now: float
    want: list[int]
    lease_only: bool


class RedisCounters:
    """Counters in Redis (hashes), shared by every gateway process using the same URL and key prefix.

    Everything this process changes goes to Redis through one pipe: one script call at a time
    carries every change, check, lease and read made since the previous call was sent.
    """

    persistent = True

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        self.url = url
        self._client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._apply = self._client.register_script(_APPLY)
        self._seed = self._client.register_script(_SEED)
        self._leases: dict[str, _Lease] = {}
        self._changes: dict[str, _Change] = {}
        self._calls: list[tuple[_Call, asyncio.Future[Exceeded | None] | None]] = []
        self._reads: list[tuple[Sequence[str], asyncio.Future[list[Totals | None]]]] = []
        self._after_settles: list[tuple[Sequence[Line], AfterSettle]] = []
        self._sender: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise CountersUnavailable(f"Redis at {self.url} does not answer: {exc}") from exc

    async def close(self) -> None:
        """Send everything pending (a cancelled call's release included), give back every lease, disconnect."""
        await self._drain()
        self._return_leases(0.0)
        await self._drain()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        await self._client.aclose()

    async def _drain(self) -> None:
        while self._changes or self._calls or self._sender is not None:
            self._send_now()
            assert self._sender is not None
            await asyncio.shield(self._sender)

    async def reserve(self, lines: Sequence[Line], usd: float, tokens: int, now: float) -> Exceeded | None:
        leases = self._leases
        if all(
            (lease := leases.get(line.key)) is not None and lease.covers(line, usd, tokens, now)
            for line in lines
            if _limited(line)
        ):
            self._admit_here(lines, usd, tokens, now)
            return None
        for line in lines:  # what is left of this process's leases must not count against the call it can't cover
            if (lease := leases.pop(line.key, None)) is not None:
                self._give_back(line.key, lease)
        call = _Call(lines, usd, tokens, now, self._wants(lines), False)
        future: asyncio.Future[Exceeded | None] = asyncio.get_running_loop().create_future()
        self._calls.append((call, future))
        self._send_soon()
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:  # the call is gone: release what the script may still reserve for it
            future.add_done_callback(lambda done: self._release(call, done))
            raise

    def _admit_here(self, lines: Sequence[Line], usd: float, tokens: int, now: float) -> None:
        """Admit from the leases (unlimited lines just count the call); ask for more of those running low."""
        used_at = time.monotonic()
        refill = False
        for line in lines:
            if not _limited(line):
                change = self._change(line.key, line.ttl_s)
                change.held_usd += usd
                change.held_tokens += tokens
                change.requests += 1
                continue
            lease = self._leases[line.key]
            lease.usd -= usd
            lease.tokens -= tokens
            lease.requests -= 1
            lease.used_at = used_at
            if not lease.refilling and lease.requests <= LEASE_CALLS // 2:
                lease.refilling = refill = True
        if refill:
            self._calls.append((_Call(lines, usd, tokens, now, self._wants(lines), True), None))
        self._send_soon()

    def _wants(self, lines: Sequence[Line]) -> list[int]:
        """Per line, how many calls to lease to bring its lease up to `LEASE_CALLS` (none on unlimited lines)."""
        wants = []
        for line in lines:
            lease = self._leases.get(line.key)
            wants.append(max(LEASE_CALLS - (lease.requests if lease else 0), 0) if _limited(line) else 0)
        return wants

    def _release(self, call: _Call, done: asyncio.Future[Exceeded | None]) -> None:
        if not done.exception() and done.result() is None:
            self.settle(call.lines, (call.usd, call.tokens), (0.0, 0), lambda _: None)

    def settle(self, lines: Sequence[Line], reserved: Amount, spent: Amount, then: AfterSettle) -> None:
        for line in lines:
            change = self._change(line.key, line.ttl_s)
            change.held_usd -= reserved[0]
            change.held_tokens -= reserved[1]
            change.spent_usd += spent[0]
            change.spent_tokens += spent[1]
        self._after_settles.append((lines, then))
        self._send_soon()

    def _change(self, key: str, ttl_s: int) -> _Change:
        change = self._changes.get(key)
        if change is None:
            change = self._changes[key] = _Change(ttl_s)
        else:
            change.ttl_s = max(change.ttl_s, ttl_s)
        return change

    async def totals(self, keys: Sequence[str]) -> list[Totals | None]:
        """Read after every change this process has made so far is applied (what is leased counts as held)."""
        future: asyncio.Future[list[Totals | None]] = asyncio.get_running_loop().create_future()
        self._reads.append((keys, future))
        self._send_soon()
        return await future

    def _return_leases(self, idle_s: float) -> None:
        """Give back the leases not used for `idle_s` seconds (0: all of them) and not being refilled."""
        unused_since = time.monotonic() - idle_s
        for key, lease in list(self._leases.items()):
            if lease.used_at <= unused_since and not lease.refilling:
                del self._leases[key]
                self._give_back(key, lease)

    def _give_back(self, key: str, lease: _Lease) -> None:
        change = self._change(key, 0)
        change.held_usd -= lease.usd
        change.held_tokens -= lease.tokens
        change.requests -= lease.requests

    def _waiting(self) -> bool:
        return any(future is not None for _, future in self._calls) or bool(self._reads)

    def _send_soon(self) -> None:
        """Send at once what a caller waits for; the rest waits `BATCH_DELAY_S` for company."""
        if self._waiting():
            self._send_now()
        elif self._sender is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(BATCH_DELAY_S, self._send_now)

    def _send_now(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._sender is None:
            self._sender = asyncio.get_running_loop().create_task(self._send_all())

    async def _send_all(self) -> None:
        """One script call, then more while callers wait; what comes meanwhile without a waiter goes a little later."""
        try:
            await self._send_batch()
            while self._waiting():
                await self._send_batch()
        finally:
            self._sender = None
            if self._changes or self._calls:
                self._send_soon()
            if self._leases and self._idle_timer is None:
                self._idle_timer = asyncio.get_running_loop().call_later(LEASE_IDLE_S, self._return_idle_leases)

    def _return_idle_leases(self) -> None:
        self._idle_timer = None
        self._return_leases(LEASE_IDLE_S)
        if self._changes:
            self._send_soon()
        elif self._leases:
            self._idle_timer = asyncio.get_running_loop().call_later(LEASE_IDLE_S, self._return_idle_leases)

    async def _send_batch(self) -> None:
        changes, self._changes = self._changes, {}
        calls, self._calls = self._calls, []
        reads, self._reads = self._reads, []
        after_settles, self._after_settles = self._after_settles, []
        if not (changes or calls or reads):
            return
        positions: dict[str, int] = {}

        def position(key: str) -> int:
            return positions.setdefault(key, len(positions) + 1)

        request = {
            "now": time.time(),
            "share": LOCAL_SHARE,
            "changes": [
                [position(key), c.ttl_s, c.held_usd, c.held_tokens, c.spent_usd, c.spent_tokens, c.requests]
                for key, c in changes.items()
            ],
            "calls": [
                [
                    call.usd,
                    call.tokens,
                    call.now,
                    call.lease_only,
                    [
                        [position(line.key), line.ttl_s, *(limit or False for limit in line[2:]), want]
                        for line, want in zip(call.lines, call.want, strict=True)
                    ],
                ]
                for call, _ in calls
            ],
        }
        for keys, _ in reads:
            for key in keys:
                position(key)
        try:
            reply = await self._apply(keys=list(positions), args=[orjson.dumps(request)])
        except Exception as exc:  # every caller hears of it; none waits forever
            self._failed(exc, changes, calls, reads)
            return
        results, totals = orjson.loads(reply)
        for (call, future), result in zip(calls, results or [], strict=True):
            if result[0] == 0:
                refused: Exceeded | None = Exceeded(result[1] - 1, result[2], _totals(result[3:]))
            else:
                refused = None
                self._leased(call, result[1])
            if future is not None and not future.done():
                future.set_result(refused)
        heard = {
            key: None if values is False else _totals(values)
            for key, values in zip(positions, totals or [], strict=True)
        }
        for keys, future in reads:
            if not future.done():
                future.set_result([heard[key] for key in keys])
        for lines, then in after_settles:
            then([heard[line.key] or _EMPTY for line in lines])

    def _leased(self, call: _Call, leased: list[list[float]]) -> None:
        """Add what the script leased on each line of `call` to this process's leases."""
        for line, (calls, first_at) in zip(call.lines, leased, strict=True):
            lease = self._leases.get(line.key)
            if call.lease_only and lease is not None:
                lease.refilling = False
            if calls < 1:
                continue
            if lease is None:
                lease = self._leases[line.key] = _Lease(first_at)
            lease.usd += calls * call.usd
            lease.tokens += int(calls) * call.tokens
            lease.requests += int(calls)

    def _failed(self, exc: Exception, changes: dict[str, _Change], calls: list[Any], reads: list[Any]) -> None:
        unavailable = CountersUnavailable(repr(exc))
        for call, future in calls:
            if call.lease_only:
                for line in call.lines:
                    if (lease := self._leases.get(line.key)) is not None:
                        lease.refilling = False
            elif future is not None and not future.done():
                future.set_exception(unavailable)
        for _, future in reads:
            if not future.done():
                future.set_exception(unavailable)
        if changes:
            log.warning(
                "could not apply the changes of %d counters in Redis (they are not counted): %r", len(changes), exc
            )

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


def counters_for(backend: str, redis_url: str | None) -> Counters:
    if backend == "redis":
        assert redis_url is not None, "config validation requires redis_url for backend redis"
        return RedisCounters(redis_url)
    return MemoryCounters()
