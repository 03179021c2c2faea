"""Unit checks of the retry policy, the circuit breaker's states and the resilience config."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from meterline.config import BackoffConfig, BreakerConfig, ConfigError, parse_config
from meterline.gateway.breaker import Breaker, BreakerBoard
from meterline.gateway.breaker_sync import BreakerSync
from meterline.gateway.clock import SystemClock
from meterline.gateway.keys import KeySpec, KeyStore
from meterline.gateway.retries import (
    RetriesHeaderInvalid,
    Routes,
    backoff_s,
    requested_retries,
    retry_after_s,
    retryable,
)
from meterline.pricing.table import PriceTable
from meterline.providers.base import build_provider, classify_upstream_error
from meterline.store.control import ControlDB
from tests.conftest import TEST_REDIS_URL

PROVIDERS = """
providers:
  o: {kind: openai, base_url: http://127.0.0.1:1/v1}
  a: {kind: anthropic, base_url: http://127.0.0.1:1}
"""


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (429, None, True),
        (408, None, True),
        (409, None, True),
        (500, None, True),
        (503, None, True),
        (529, "overloaded_error", True),
        (400, None, False),
        (401, None, False),
        (403, None, False),
        (404, None, False),
        (400, "content_filter", False),
        (400, "context_length_exceeded", False),
    ],
)
def test_only_retryable_classes_are_retried(status: int, code: str | None, expected: bool) -> None:
    assert retryable(classify_upstream_error(status, code, ""), status) is expected


def test_retry_after_prefers_milliseconds_and_reads_dates() -> None:
    assert retry_after_s({"retry-after-ms": "2500", "retry-after": "3"}) == 2.5
    assert retry_after_s({"retry-after": "7"}) == 7.0
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_s({"retry-after": "Thu, 01 Jan 2026 12:00:30 GMT"}, now) == 30.0
    assert retry_after_s({"retry-after": "soon"}) is None
    assert retry_after_s({}) is None


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    backoff = BackoffConfig(initial_s=0.5, max_s=3)
    rng = random.Random(7)
    for retry, cap in ((1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (9, 3.0)):
        waits = [backoff_s(retry, backoff, rng) for _ in range(200)]
        assert all(0 <= wait <= cap for wait in waits) and max(waits) > cap / 2


def test_retries_header_is_a_small_whole_number() -> None:
    assert requested_retries({}) is None
    assert requested_retries({"x-meterline-retries": " 0 "}) == 0
    for bad in ("-1", "two", "11", "1.5"):
        with pytest.raises(RetriesHeaderInvalid, match="x-meterline-retries"):
            requested_retries({"x-meterline-retries": bad})


def test_breaker_opens_half_opens_and_closes() -> None:
    breaker = Breaker("o", "m", BreakerConfig(failures=2, window_s=10, cooldown_s=5), 2)
    breaker.record("server_error", "boom", 0)
    breaker.record("server_error", "boom", 11)  # the first fell out of the window
    assert breaker.state == "closed" and breaker.allows(11)
    breaker.record("timeout", None, 12)
    assert breaker.state == "open" and not breaker.allows(16.9)
    assert "2 failures within 10 s" in breaker.describe(12) and "(in 5.0 s)" in breaker.describe(12)
    assert breaker.allows(17) and breaker.state == "half_open"
    assert not breaker.allows(17)  # one probe at a time
    breaker.record("client_cancelled", None, 17)  # a cancelled probe frees the slot
    assert breaker.allows(17)
    breaker.record("rate_limit", None, 18)
    assert breaker.state == "open" and "its probe failed" in breaker.describe(18)
    assert breaker.allows(23)
    breaker.record("bad_request", "the provider answered", 23)
    assert breaker.state == "closed" and breaker.snapshot(23)["recent_failures"] == 0


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "the change did not arrive"
        await asyncio.sleep(0.01)


def test_breakers_open_and_close_in_every_process_sharing_a_redis(new_redis_prefix) -> None:  # type: ignore[no-untyped-def]
    prefix = new_redis_prefix()
    settings = BreakerConfig(failures=2, window_s=60, cooldown_s=30, redis_url=TEST_REDIS_URL, key_prefix=prefix)
    models = [("o", "m"), ("o", "other")]
    clock = SystemClock()

    async def process() -> tuple[BreakerBoard, BreakerSync]:
        board = BreakerBoard(settings, models, clock)
        sync = BreakerSync(board, TEST_REDIS_URL, prefix)
        await sync.start()
        return board, sync

    async def scenario() -> None:
        (board_one, sync_one), (board_two, sync_two) = await process(), await process()
        one, two = board_one.get("o", "m"), board_two.get("o", "m")
        assert one is not None and two is not None
        await asyncio.sleep(0.1)  # both are listening
        one.record("server_error", "boom", clock.now())
        one.record("server_error", "boom", clock.now())
        assert one.state == "open"
        await until(lambda: two.state == "open")
        assert not two.allows(clock.now()), "two skips the model without a failure of its own"
        assert two.retry_at == pytest.approx(one.retry_at, abs=0.5)
        assert "2 failures within 60 s in another gateway process" in two.describe(clock.now())
        assert "(last: server_error: boom)" in two.describe(clock.now())
        assert one.cause == "2 failures within 60 s", "a process does not adopt its own change"
        assert board_two.get("o", "other").state == "closed"  # type: ignore[union-attr]

        board_three, sync_three = await process()  # started while the breaker is open: reads the hash
        three = board_three.get("o", "m")
        assert three is not None
        await until(lambda: three.state == "open")

        two.record("none", None, clock.now())  # a call two let through succeeds: closed everywhere
        assert two.state == "closed"
        await until(lambda: one.state == "closed" and three.state == "closed")
        assert one.allows(clock.now()) and not one.failures
        for sync in (sync_one, sync_two, sync_three):
            await sync.stop()

        board_four, sync_four = await process()  # nothing open any more: nothing adopted
        await asyncio.sleep(0.2)
        assert board_four.get("o", "m").state == "closed"  # type: ignore[union-attr]
        await sync_four.stop()

    asyncio.run(scenario())


def test_a_control_database_from_before_max_retries_gets_the_column(tmp_path: Path) -> None:
    path = tmp_path / "control.sqlite"
    with sqlite3.connect(path) as old:
        old.execute(
            "CREATE TABLE virtual_keys (key_id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, key_hash TEXT NOT NULL "
            "UNIQUE, key_prefix TEXT NOT NULL, team TEXT, app TEXT, user TEXT, models TEXT NOT NULL DEFAULT '[]', "
            "scope TEXT, rpm_limit INTEGER, tpm_limit INTEGER, created_at TEXT NOT NULL, expires_at TEXT, "
            "revoked_at TEXT)"
        )
        old.execute(
            "INSERT INTO virtual_keys VALUES ('key_1', 'old', 'h', 'mlk-x', NULL, NULL, NULL, '[]', NULL, NULL, NULL, "
            "'2026-01-01T00:00:00+00:00', NULL, NULL)"
        )
    store = KeyStore(ControlDB(path))
    assert store.get("old").max_retries is None
    _, created = store.create(KeySpec(name="new", max_retries=0))
    assert created.identity().max_retries == 0


def test_fallbacks_must_be_configured_models(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fallback 'nope' is not a configured model"):
        parse_config(PROVIDERS + "models:\n  - {name: m, provider: o, fallbacks: [nope]}\n", tmp_path)
    with pytest.raises(ConfigError, match="lists the model itself"):
        parse_config(PROVIDERS + "models:\n  - {name: m, provider: o, fallbacks: [m]}\n", tmp_path)
    with pytest.raises(ConfigError, match="more than once"):
        parse_config(
            PROVIDERS + "models:\n  - {name: m, provider: o, fallbacks: [n, n]}\n  - {name: n, provider: o}\n", tmp_path
        )
    with pytest.raises(ConfigError, match="retries"):
        parse_config(PROVIDERS + "models:\n  - {name: m, provider: o, retries: 11}\n", tmp_path)


def test_a_fallback_must_speak_the_same_api(tmp_path: Path) -> None:
    config = parse_config(
        PROVIDERS + "models:\n  - {name: m, provider: o, fallbacks: [c]}\n  - {name: c, provider: a}\n", tmp_path
    )
    providers = {name: build_provider(name, provider) for name, provider in config.providers.items()}
    prices = PriceTable.load(None, {name: provider.pricing_id for name, provider in providers.items()})
    with pytest.raises(ConfigError, match="a fallback must take the same request format"):
        Routes(config, providers, prices)


def test_context_windows_come_from_config_or_the_price_data(tmp_path: Path) -> None:
    config = parse_config(
        PROVIDERS
        + "resilience: {retries: 3}\n"
        + "models:\n  - {name: m, provider: o, upstream_model: gpt-4o-mini, context_window: 8000, fallbacks: [big]}\n"
        + "  - {name: big, provider: o, upstream_model: gpt-4.1, retries: 0}\n",
        tmp_path,
    )
    providers = {name: build_provider(name, provider) for name, provider in config.providers.items()}
    prices = PriceTable.load(None, {name: provider.pricing_id for name, provider in providers.items()})
    first, big = Routes(config, providers, prices).route("m")
    assert (first.context_window, first.retries) == (8000, 3)
    assert (big.context_window, big.retries) == (1_000_000, 0)
