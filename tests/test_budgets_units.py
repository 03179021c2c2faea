"""Unit checks of budgets: calendar periods, config checks, counters (memory and real Redis), the guard's limits."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from meterline.alerts.notices import NoticeBoard
from meterline.budgets.agents import prompt_hash
from meterline.budgets.counters import Counters, Exceeded, Line, MemoryCounters, RedisCounters, Totals
from meterline.budgets.guard import Refused, SpendGuard
from meterline.budgets.rules import PeriodClock, format_usd, period_bounds
from meterline.budgets.store import BudgetStore, parse_budget
from meterline.config import ConfigError, parse_config
from meterline.gateway.attribution import Attribution
from meterline.gateway.auth import Identity
from meterline.gateway.metering import CallContext
from meterline.gateway.proxy import OPENAI
from meterline.pricing.table import PriceTable
from meterline.providers.base import build_provider
from meterline.providers.estimate import estimate_tokens
from meterline.store.control import ControlDB
from tests.conftest import TEST_REDIS_URL

BERLIN = ZoneInfo("Europe/Berlin")


def test_periods_are_calendar_periods_in_the_time_zone() -> None:
    moment = datetime(2026, 3, 29, 14, 30, tzinfo=BERLIN)  # a Sunday, the day clocks go forward
    day_start, day_end = period_bounds("day", moment)
    assert (day_start.isoformat(), day_end.isoformat()) == ("2026-03-29T00:00:00+01:00", "2026-03-30T00:00:00+02:00")
    assert day_end.timestamp() - day_start.timestamp() == 23 * 3600
    week_start, week_end = period_bounds("week", moment)
    assert (week_start.date().isoformat(), week_end.date().isoformat()) == ("2026-03-23", "2026-03-30")
    month_start, month_end = period_bounds("month", datetime(2026, 12, 31, 23, 59, tzinfo=BERLIN))
    assert (month_start.isoformat(), month_end.isoformat()) == (
        "2026-12-01T00:00:00+01:00",
        "2027-01-01T00:00:00+01:00",
    )
    hour_start, hour_end = period_bounds("hour", moment)
    assert (hour_start.hour, hour_end.timestamp() - hour_start.timestamp()) == (14, 3600)


def test_period_clock_recomputes_when_a_period_ends() -> None:
    clock = PeriodClock("UTC")
    start, end = clock.bounds("hour", datetime(2026, 1, 1, 10, 59, 59, tzinfo=ZoneInfo("UTC")).timestamp())
    assert end - start == 3600
    assert clock.bounds("hour", end) == (end, end + 3600)


def test_money_in_messages_keeps_small_amounts_readable() -> None:
    assert [format_usd(v) for v in (50, 1234.5, 0.0002484, 0.00001035, 0)] == [
        "$50.00",
        "$1,234.50",
        "$0.000248",
        "$0.00001",
        "$0",
    ]


@pytest.mark.parametrize(
    ("budgets_yaml", "message"),
    [
        ("budgets: [{scope: team, period: day, limit_usd: 1}]", "scope 'team' must be 'gateway' or '<kind>:<value>'"),
        ("budgets: [{scope: 'team:a', period: day}]", "a budget needs limit_usd, limit_tokens or both"),
        ("budgets: [{scope: 'team:a', period: year, limit_usd: 1}]", "budgets.budgets.0.period"),
        (
            "budgets: [{scope: 'team:a', period: day, limit_usd: 1, actions: [throttle, block]}]",
            "choose throttle (429 until the period resets) or block (402), not both",
        ),
        (
            "budgets: [{scope: 'team:a', period: day, limit_usd: 1, actions: [downgrade]}]",
            "the downgrade action needs a downgrade mapping",
        ),
        (
            "budgets: [{scope: 'team:a', period: day, limit_usd: 1, actions: [downgrade], downgrade: {gpt-4o: gpt-9}}]",
            "downgrade: 'gpt-9' is not a configured model",
        ),
        ("budgets: [{scope: 'model:gpt-9', period: day, limit_usd: 1}]", "scope: 'gpt-9' is not a configured model"),
        (
            "budgets: [{name: x, scope: 'team:a', period: day, limit_usd: 1}, {name: x, scope: gateway, period: day, "
            "limit_usd: 1}]",
            "budget names must be unique; listed more than once: x",
        ),
        ("timezone: Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        ("backend: redis", "backend redis needs redis_url"),
        ("agents: {loop_threshold: 1}", "budgets.agents.loop_threshold"),
    ],
)
def test_bad_budget_config_names_the_field(budgets_yaml: str, message: str) -> None:
    text = f"""
providers: {{openai: {{kind: openai, base_url: http://127.0.0.1:1/v1}}}}
models: [{{name: gpt-4o, provider: openai}}, {{name: gpt-4o-mini, provider: openai}}]
budgets: {{{budgets_yaml}}}
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, Path("."))
    assert message in str(raised.value)


def test_budget_names_default_to_scope_and_period() -> None:
    config = parse_config("budgets: {budgets: [{scope: 'team:search', period: day, limit_usd: 5}]}", Path("."))
    (budget,) = config.budgets.budgets
    assert (budget.name, budget.actions, budget.thresholds) == ("team:search:day", ["alert"], [80.0, 100.0])


def test_the_loop_detector_ignores_spacing_and_case_but_not_the_model_or_words() -> None:
    same = prompt_hash("gpt-4o", "Plan the  next step\n\tplease")
    assert same == prompt_hash("gpt-4o", "plan the next step please")
    assert same != prompt_hash("gpt-4o-mini", "plan the next step please")
    assert same != prompt_hash("gpt-4o", "plan the last step please")


@dataclass
class Backend:
    """A counters backend under test, made inside the test's event loop, and the key prefix to use."""

    kind: str
    prefix: str

    async def open(self) -> Counters:
        counters: Counters = MemoryCounters() if self.kind == "memory" else RedisCounters(TEST_REDIS_URL)
        await counters.start()
        return counters


@pytest.fixture(params=["memory", "redis"])
def counters(request: pytest.FixtureRequest, new_redis_prefix) -> Backend:  # type: ignore[no-untyped-def]
    return Backend(request.param, "test:" if request.param == "memory" else new_redis_prefix())


def test_reserve_is_all_or_nothing_and_settle_moves_it_to_spent(counters: Backend) -> None:
    prefix = counters.prefix

    async def scenario() -> None:
        backend = await counters.open()
        budget = Line(prefix + "budget", 60, limit_usd=1.0)
        quota = Line(prefix + "quota", 60, limit_requests=2)
        now = 1_000.0
        assert await backend.reserve([budget, quota], 0.4, 100, now) is None
        assert await backend.totals([budget.key, quota.key]) == [Totals(0.0, 0.4, 0, 100, 1, now)] * 2
        assert await backend.reserve([budget, quota], 0.4, 100, now) is None
        refused = await backend.reserve([budget, quota], 0.1, 10, now)  # the quota's third request
        assert refused == Exceeded(1, "requests", Totals(0.0, 0.8, 0, 200, 2, now))
        assert (await backend.totals([budget.key]))[0] == Totals(0.0, 0.8, 0, 200, 2, now)  # nothing reserved

        assert (await backend.totals([prefix + "missing"])) == [None]

        settled: list[list[Totals]] = []
        backend.settle([budget], (0.4, 100), (0.25, 80), settled.append)
        backend.settle([budget], (0.4, 100), (0.30, 90), settled.append)
        await backend.close()  # waits for background settles (Redis)
        assert settled[-1][0].spent_usd == pytest.approx(0.55)
        assert settled[-1][0][1:] == pytest.approx((0.0, 170, 0, 2, now))

    asyncio.run(scenario())


def test_a_counter_passes_no_limit_even_by_a_little(counters: Backend) -> None:
    prefix = counters.prefix

    async def scenario() -> None:
        backend = await counters.open()
        tokens = Line(prefix + "tokens", 60, limit_tokens=1000)
        assert await backend.reserve([tokens], 0.0, 1000, 0.0) is None
        assert await backend.reserve([tokens], 0.0, 1, 0.0) == Exceeded(0, "tokens", Totals(0.0, 0.0, 0, 1000, 1, 0.0))
        age = Line(prefix + "run", 60, limit_age_s=30)
        assert await backend.reserve([age], 0.0, 0, 100.0) is None
        assert await backend.reserve([age], 0.0, 0, 130.0) is None
        refused = await backend.reserve([age], 0.0, 0, 130.5)
        assert isinstance(refused, Exceeded) and refused.limit == "age"
        await backend.close()

    asyncio.run(scenario())


def test_concurrent_reservations_are_each_all_or_nothing(counters: Backend) -> None:
    prefix = counters.prefix

    async def scenario() -> None:
        backend = await counters.open()
        shared = Line(prefix + "shared", 60, limit_requests=10)
        results = await asyncio.gather(
            *(backend.reserve([Line(prefix + f"own-{n}", 60), shared], 0.5, 5, 0.0) for n in range(50))
        )
        assert sum(result is None for result in results) == 10
        assert {result.index for result in results if result is not None} == {1}
        owners = await backend.totals([prefix + f"own-{n}" for n in range(50)])
        assert sum(totals is not None for totals in owners) == 10  # the refused ones reserved nothing anywhere
        await backend.close()

    asyncio.run(scenario())


def test_a_call_cancelled_while_redis_reserves_releases_its_reservation(new_redis_prefix) -> None:  # type: ignore[no-untyped-def]
    line = Line(new_redis_prefix() + "cancelled", 60, limit_usd=1.0)

    async def scenario() -> None:
        backend = RedisCounters(TEST_REDIS_URL)
        await backend.start()
        call = asyncio.ensure_future(backend.reserve([line], 0.75, 10, 0.0))
        await asyncio.sleep(0)  # the reservation is on its way to Redis when the call is cancelled
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        await backend.close()  # waits for the reservation, then for its release
        backend = RedisCounters(TEST_REDIS_URL)
        assert await backend.totals([line.key]) == [Totals(0.0, 0.0, 0, 0, 1, 0.0)]
        await backend.close()

    asyncio.run(scenario())


def test_a_redis_counter_leases_room_and_admits_from_it_without_waiting_for_redis(new_redis_prefix) -> None:  # type: ignore[no-untyped-def]
    line = Line(new_redis_prefix() + "roomy", 60, limit_usd=100.0, limit_requests=1000)

    async def scenario() -> None:
        backend = RedisCounters(TEST_REDIS_URL)
        await backend.start()
        assert await backend.reserve([line], 1.0, 10, 0.0) is None  # checked in Redis, which also leases
        # a tenth of the room left ($99) fits 9 more such calls: they are held in Redis as this process's lease
        assert await backend.totals([line.key]) == [Totals(0.0, 10.0, 0, 100, 10, 0.0)]
        local = backend.reserve([line], 1.0, 10, 0.0)
        with pytest.raises(StopIteration) as finished:  # admitted from the lease: the coroutine never suspends
            local.send(None)
        assert finished.value.value is None
        await backend.close()  # gives back the unused lease
        reader = RedisCounters(TEST_REDIS_URL)
        assert await reader.totals([line.key]) == [Totals(0.0, 2.0, 0, 20, 2, 0.0)]
        await reader.close()

    asyncio.run(scenario())


def test_a_call_its_lease_cannot_cover_gives_the_lease_back_before_redis_checks_it(new_redis_prefix) -> None:  # type: ignore[no-untyped-def]
    line = Line(new_redis_prefix() + "steps", 60, limit_usd=100.0, limit_requests=12)

    async def scenario() -> None:
        backend = RedisCounters(TEST_REDIS_URL)
        await backend.start()
        assert await backend.reserve([line], 1.0, 0, 0.0) is None  # leases one more $1 call (a tenth of 11 requests)
        assert await backend.totals([line.key]) == [Totals(0.0, 2.0, 0, 0, 2, 0.0)]
        assert await backend.reserve([line], 5.0, 0, 0.0) is None  # $5 is more than the lease holds: checked in Redis
        # the $1 lease went back first, then the call and a new lease of one $5 call were reserved
        assert await backend.totals([line.key]) == [Totals(0.0, 11.0, 0, 0, 3, 0.0)]
        await backend.close()

    asyncio.run(scenario())


def test_processes_sharing_redis_counters_admit_exactly_up_to_the_limit(new_redis_prefix) -> None:  # type: ignore[no-untyped-def]
    prefix = new_redis_prefix()
    lines = [Line(prefix + "requests", 60, limit_requests=200), Line(prefix + "usd", 60, limit_usd=12.5)]

    async def scenario() -> None:
        processes = [RedisCounters(TEST_REDIS_URL), RedisCounters(TEST_REDIS_URL)]
        for process in processes:
            await process.start()
        admitted = 0
        for _ in range(40):  # waves of concurrent calls on both, so each admits from its view between replies
            results = await asyncio.gather(*(processes[n % 2].reserve(lines, 0.05, 0, 0.0) for n in range(16)))
            admitted += sum(result is None for result in results)
        assert admitted == 200  # 40 waves x 16 = 640 calls; the request limit binds (the USD one would at 250)
        for process in processes:
            await process.close()

    asyncio.run(scenario())


def test_seed_creates_only_missing_counters_and_first_time_is_once(counters: Backend) -> None:
    prefix = counters.prefix

    async def scenario() -> None:
        backend = await counters.open()
        seeded = Totals(2.5, 0.0, 300, 0, 4, 50.0)
        await backend.seed(prefix + "seeded", seeded, 60)
        await backend.seed(prefix + "seeded", Totals(9.0, 0.0, 9, 0, 9, 9.0), 60)
        assert await backend.totals([prefix + "seeded"]) == [seeded]
        assert [await backend.first_time(prefix + "once", 60) for _ in range(3)] == [True, False, False]
        await backend.close()

    asyncio.run(scenario())


def guard_for(tmp_path: Path, budgets_yaml: str) -> SpendGuard:
    config = parse_config(
        f"""
providers: {{openai: {{kind: openai, base_url: http://127.0.0.1:1/v1}}}}
models: [{{name: gpt-4o, provider: openai}}, {{name: gpt-4o-mini, provider: openai}}]
budgets: {budgets_yaml}
""",
        tmp_path,
    )
    providers = {name: build_provider(name, provider) for name, provider in config.providers.items()}
    control = tmp_path / "control.sqlite"
    return SpendGuard(
        config,
        providers,
        PriceTable.load(None, {"openai": "openai"}),
        MemoryCounters(),
        BudgetStore(ControlDB(control), config, providers),
        NoticeBoard(ControlDB(control), []),
        None,
    )


def call(identity: Identity, **attribution: str) -> CallContext:
    body = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hello"}]}
    return CallContext(
        operation="chat",
        dialect=OPENAI,
        body=body,
        identity=identity,
        attribution=Attribution(**attribution),
        requested_model="gpt-4o-mini",
    )


def test_a_keys_rate_limit_refuses_its_next_request_in_the_minute(tmp_path: Path) -> None:
    guard = guard_for(tmp_path, "{}")
    limited = Identity(key_id="k-limited", rpm_limit=2, tpm_limit=10_000)

    async def scenario() -> None:
        await guard.start()
        assert await guard.admit(call(Identity(key_id="k-free"))) is None  # nothing applies: nothing to do
        for _ in range(2):
            assert await guard.admit(call(limited)) is not None
        with pytest.raises(Refused) as refused:
            await guard.admit(call(limited))
        error = refused.value.error
        assert (error.status, error.kind) == (429, "rate_limit_exceeded")
        assert "key 'k-limited' may send 2 requests per minute (the key's limit) and has sent 2" in error.message
        assert 1 <= int(error.headers["Retry-After"]) <= 60
        await guard.stop()

    asyncio.run(scenario())


def test_a_keys_token_limit_counts_the_estimate(tmp_path: Path) -> None:
    guard = guard_for(tmp_path, "{}")
    per_call = estimate_tokens("hello") + 50  # input estimated from the text, output from max_tokens
    limited = Identity(key_id="k-tpm", tpm_limit=2 * per_call + per_call // 2)

    async def scenario() -> None:
        await guard.start()
        assert await guard.admit(call(limited)) is not None
        assert await guard.admit(call(limited)) is not None
        with pytest.raises(Refused) as refused:
            await guard.admit(call(limited))
        expected = f"may use {limited.tpm_limit} tokens per minute (the key's limit): {2 * per_call} are used and "
        assert expected + f"this call is estimated at {per_call}" in refused.value.error.message
        await guard.stop()

    asyncio.run(scenario())


def test_budget_set_at_run_time_applies_on_the_next_call(tmp_path: Path) -> None:
    guard = guard_for(tmp_path, "{}")

    async def scenario() -> None:
        await guard.start()
        assert await guard.admit(call(Identity(key_id="k"), team="t")) is None
        other_process = BudgetStore(ControlDB(tmp_path / "control.sqlite"), guard.config, guard.providers)
        budget = {"scope": "team:t", "period": "day", "limit_usd": 0.00001, "actions": ["block"]}
        other_process.put(parse_budget(budget))
        with pytest.raises(Refused) as refused:
            await guard.admit(call(Identity(key_id="k"), team="t"))
        assert refused.value.error.status == 402
        assert "budget 'team:t:day' (team t, per day) is a hard cap and is used up" in refused.value.error.message
        await guard.stop()

    asyncio.run(scenario())
