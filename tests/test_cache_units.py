"""Unit checks of the cache: policy, keys and scopes, the LRU and Redis backends, the vector index, config checks."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from meterline.cache.backends import MemoryBackend, RedisBackend, RedisLink
from meterline.cache.entries import CachedAnswer, decode_answer, encode_answer
from meterline.cache.policy import CacheHeaderInvalid, CachePolicy, SemanticNotConfigured
from meterline.cache.requests import request_key, scope_of, semantic_prompt
from meterline.cache.semantic import SemanticIndex
from meterline.cache.service import stream_answer
from meterline.cache.shared import SharedPrompts
from meterline.config import CacheConfig, ConfigError, parse_config
from meterline.providers.base import build_provider
from meterline.server import build_cache
from tests.conftest import TEST_REDIS_URL


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def answer(body: bytes = b"{}", cost: float | None = 0.01) -> CachedAnswer:
    return CachedAnswer(status=200, content_type="application/json", body=body, cost_usd=cost)


CHAT = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}


def test_the_key_ignores_order_stream_flag_and_end_user_but_not_what_changes_the_answer() -> None:
    key = request_key("chat", "m", CHAT, [""], False)
    assert request_key("chat", "m", dict(reversed(list(CHAT.items()))), [""], False) == key
    assert request_key("chat", "m", {**CHAT, "user": "alice", "metadata": {"a": 1}}, [""], False) == key
    assert request_key("chat", "m", {**CHAT, "stream": False}, [""], False) == key
    assert request_key("chat", "m", {**CHAT, "stream": True}, [""], True) != key  # a stream is stored apart
    assert request_key("generate_content", "m", {"contents": []}, [""], True) != request_key(
        "generate_content", "m", {"contents": []}, [""], False
    ), "a Gemini stream (the URL says so, not the body) is stored apart too"
    different = [
        request_key("chat", "other", CHAT, [""], False),
        request_key("responses", "m", CHAT, [""], False),
        request_key("chat", "m", {**CHAT, "temperature": 0.5}, [""], False),
        request_key("chat", "m", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, [""], False),
        request_key("chat", "m", CHAT, ["beta-1"], False),
    ]
    assert key not in different and len(set(different)) == len(different)


def test_scopes_keep_teams_and_keys_apart() -> None:
    assert scope_of("team", "k1", "alpha", "alpha") == scope_of("team", "k2", "alpha", "alpha") == "team:alpha"
    assert scope_of("team", "master", None, "alpha") != scope_of("team", "master", None, "beta")
    assert scope_of("team", "k1", None, None) != scope_of("team", "k2", None, None)
    assert scope_of("key", "k1", "alpha", "alpha") != scope_of("key", "k2", "alpha", "alpha")
    assert scope_of("shared", "k1", "alpha", "alpha") == scope_of("shared", "k2", "beta", "beta")


def test_the_semantic_prompt_is_the_last_user_message_and_the_rest_must_agree() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second question"}]},
    ]
    text, context = semantic_prompt("chat", "m", {"model": "m", "messages": messages}, False) or ("", "")
    assert text == "second question"
    changed = [*messages[:3], {"role": "user", "content": "another question"}]
    assert semantic_prompt("chat", "m", {"model": "m", "messages": changed}, False) == ("another question", context)
    other_system = [{"role": "system", "content": "be long"}, *messages[1:]]
    assert semantic_prompt("chat", "m", {"model": "m", "messages": other_system}, False)[1] != context  # type: ignore[index]
    assert semantic_prompt("completion", "m", {"prompt": "a prompt"}, False)[0] == "a prompt"  # type: ignore[index]
    assert semantic_prompt("chat", "m", {"messages": [{"role": "system", "content": "x"}]}, False) is None
    assert semantic_prompt("embeddings", "m", {"input": "x"}, False) is None
    gemini = {"contents": [{"role": "user", "parts": [{"text": "what is a token"}]}]}
    assert semantic_prompt("generate_content", "m", gemini, True)[0] == "what is a token"  # type: ignore[index]


def test_policy_caches_deterministic_calls_and_obeys_the_header_and_rules() -> None:
    config = CacheConfig.model_validate(
        {
            "enabled": True,
            "ttl_s": 60,
            "rules": [
                {"feature": "faq", "ttl_s": 600, "semantic": True},
                {"model": "big", "enabled": False},
                {"model": "m", "feature": "slow", "ttl_s": 5},
            ],
            "semantic": {"embedding_model": "e"},
        }
    )
    policy = CachePolicy(config)

    def decide(header: str | None = None, feature: str | None = None, model: str = "m", temperature: float = 0):  # type: ignore[no-untyped-def]
        return policy.decide("chat", model, feature, temperature, header)

    assert (decide().action, decide().ttl_s, decide().semantic) == ("lookup", 60, False)
    assert policy.decide("chat", "m", None, None, None).action == "bypass", "no temperature: the provider's default, 1"
    assert decide(temperature=0.2).action == "bypass"
    assert decide("on", temperature=0.2).action == "lookup"
    assert decide("off").action == "bypass"
    assert decide("refresh").action == "refresh"
    assert (decide(feature="faq").ttl_s, decide(feature="faq").semantic) == (600, True)
    assert decide(feature="slow").ttl_s == 5
    assert decide("semantic").semantic is True
    assert decide("on", model="big").action == "bypass"
    assert policy.decide("embeddings", "m", None, None, None).action == "lookup"
    with pytest.raises(CacheHeaderInvalid, match="on, off, refresh, semantic"):
        decide("yes")
    opt_in = CachePolicy(parse_config("cache: {default: off, max_temperature: null}", Path(".")).cache)
    assert opt_in.decide("chat", "m", None, CHAT, None).action == "bypass"
    assert opt_in.decide("chat", "m", None, {**CHAT, "temperature": 1.5}, "on").action == "lookup"
    with pytest.raises(SemanticNotConfigured):
        opt_in.decide("chat", "m", None, CHAT, "semantic")


def test_the_memory_backend_is_an_lru_bounded_in_bytes_with_expiry() -> None:
    clock = Clock()
    backend = MemoryBackend(max_bytes=3 * answer(b"x" * 100).size, clock=clock)

    async def run() -> None:
        for name in ("a", "b", "c"):
            await backend.put(name, answer(b"x" * 100), ttl_s=60)
        assert await backend.get("a") is not None  # now the most recently used
        await backend.put("d", answer(b"x" * 100), ttl_s=60)
        assert await backend.get("b") is None  # the least recently used went
        assert [await backend.get(n) is not None for n in ("a", "c", "d")] == [True, True, True]
        assert backend.used_bytes <= backend.max_bytes
        await backend.put("huge", answer(b"x" * 1000), ttl_s=60)  # larger than the whole cache: not kept
        assert await backend.get("huge") is None and len(backend) == 3
        clock.now += 61
        assert await backend.get("a") is None and backend.used_bytes == 2 * answer(b"x" * 100).size

    asyncio.run(run())


def test_the_redis_backend_shares_answers_and_misses_when_redis_is_down(new_redis_prefix) -> None:  # type: ignore[no-untyped-def]
    prefix = new_redis_prefix()

    async def run() -> None:
        one, two = RedisBackend(RedisLink(TEST_REDIS_URL), prefix), RedisBackend(RedisLink(TEST_REDIS_URL), prefix)
        await one.start()
        await two.start()
        await one.put("k", answer(b'{"a":1}', cost=0.5), ttl_s=30)
        found = await two.get("k")
        assert found is not None and (found.body, found.cost_usd) == (b'{"a":1}', 0.5)
        assert await two.get("other") is None
        assert 0 < await one.link.client.pttl(prefix + "answer:k") <= 30_000  # Redis expires it with its TTL
        await one.close()
        await two.close()
        down = RedisBackend(RedisLink("redis://127.0.0.1:1/0"), prefix)
        await down.start()
        await down.put("k", answer(), ttl_s=30)
        assert await down.get("k") is None
        await down.close()

    asyncio.run(run())


def test_answers_round_trip_and_streams_split_at_the_cost_comment() -> None:
    stream = CachedAnswer(status=200, content_type="text/event-stream", body=b"data: 1\n\n", stream_tail=b"data: 2\n\n")
    assert decode_answer(encode_answer(stream)) == stream and decode_answer(b"junk") is None
    written = [b"data: 1\n\n", b": x-meterline-cost-usd=0.01\n\n", b"data: 2\n\n", b"data: [DONE]\n\n"]
    assert stream_answer(written) == (b"data: 1\n\n", b"data: 2\n\ndata: [DONE]\n\n")
    assert stream_answer(written[:1]) is None


def unit(*values: float) -> list[float]:
    norm = sum(v * v for v in values) ** 0.5
    return [v / norm for v in values]


def test_the_vector_index_respects_threshold_namespace_and_expiry() -> None:
    clock = Clock()
    index = SemanticIndex(threshold=0.9, max_entries=100, clock=clock)
    space = ("team:a", "m", "faq", "ctx")
    index.add(space, unit(1, 0, 0), "answer-1", ttl_s=60)
    index.add(space, unit(0, 1, 0), "answer-2", ttl_s=60)
    key, similarity = index.search(space, unit(1, 0.3, 0)) or ("", 0.0)
    assert key == "answer-1" and similarity == pytest.approx(1 / (1.09**0.5), abs=1e-4)  # 0.958
    assert index.search(space, unit(1, 0.6, 0)) is None  # 0.857: below the threshold
    assert index.search(("team:b", "m", "faq", "ctx"), unit(1, 0, 0)) is None
    assert index.search(space, [1.0, 0.0]) is None  # another embedding size
    clock.now += 61
    assert index.search(space, unit(1, 0, 0)) is None


def test_the_vector_index_stays_bounded() -> None:
    index = SemanticIndex(threshold=0.5, max_entries=3)
    for number in range(5):
        index.add(("s", str(number % 2)), unit(1, number + 1), f"answer-{number}", ttl_s=60)
    assert len(index) <= 3
    assert index.search(("s", "0"), unit(1, 5)) == ("answer-4", pytest.approx(1.0))


def test_prompts_published_to_redis_reach_every_replica_until_they_expire(new_redis_prefix) -> None:  # type: ignore[no-untyped-def]
    prefix, wall = new_redis_prefix(), Clock()
    space = ("team:a", "m", "faq", "ctx")

    async def run() -> None:
        link = RedisLink(TEST_REDIS_URL)
        await link.start()
        shared = SharedPrompts(link, prefix, max_entries=100, wall_clock=wall)
        here, there = SemanticIndex(0.9, 100), SemanticIndex(0.9, 100)
        assert await shared.publish(space, unit(1, 0, 0), "answer-1", ttl_s=60)
        assert await shared.publish(space, unit(0, 1, 0), "answer-2", ttl_s=5)
        await shared.sync(space, there)
        assert there.search(space, unit(1, 0.1, 0))[0] == "answer-1"  # type: ignore[index]
        await shared.sync(space, there)  # nothing new: nothing added twice
        assert len(there) == 2
        wall.now += 10  # the second prompt's TTL has passed when the other replica first reads
        await shared.sync(space, here)
        assert len(here) == 1 and here.search(space, unit(0, 1, 0)) is None
        assert 0 < await link.client.pttl(shared.stream_key(space)) <= 60_000
        await link.close()

    asyncio.run(run())


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ("cache: {backend: redis}", "backend redis needs redis_url"),
        ("cache: {rules: [{ttl_s: 5}]}", "a cache rule needs model, feature or both"),
        ("cache: {rules: [{feature: f, semantic: true}]}", "needs semantic.embedding_model"),
        ("cache: {rules: [{model: nope}]}", "cache.rules[0].model: 'nope' is not a configured model"),
        ("cache: {semantic: {embedding_model: nope}}", "cache.semantic.embedding_model: 'nope'"),
        ("cache: {semantic: {threshold: 1.5}}", "semantic.threshold"),
        ("cache: {scope: everyone}", "cache.scope"),
    ],
)
def test_bad_cache_config_says_what_to_fix(section: str, problem: str) -> None:
    text = f"providers: {{p: {{kind: openai, base_url: 'http://x'}}}}\nmodels: [{{name: m, provider: p}}]\n{section}"
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text, Path("."))


def test_a_semantic_cache_needs_an_openai_style_embeddings_model() -> None:
    config = parse_config(
        """
providers: {a: {kind: anthropic, base_url: 'http://x'}, o: {kind: openai, base_url: 'http://x'}}
models: [{name: claude, provider: a}, {name: embed, provider: o}]
cache: {enabled: true, semantic: {embedding_model: claude}}
""",
        Path("."),
    )
    providers = {name: build_provider(name, provider) for name, provider in config.providers.items()}
    with pytest.raises(ConfigError, match="no OpenAI-style embeddings endpoint"):
        build_cache(config, providers, recorder=None)  # type: ignore[arg-type]
    config.cache.semantic.embedding_model = "embed"
    assert build_cache(config, providers, recorder=None) is not None  # type: ignore[arg-type]


def test_a_semantic_cache_without_usearch_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(
        """
providers: {o: {kind: openai, base_url: 'http://x'}}
models: [{name: embed, provider: o}]
cache: {enabled: true, semantic: {embedding_model: embed}}
""",
        Path("."),
    )
    providers = {name: build_provider(name, provider) for name, provider in config.providers.items()}
    monkeypatch.setitem(sys.modules, "usearch.index", None)  # as if usearch were not installed
    with pytest.raises(ConfigError, match=re.escape("pip install 'meterline[semantic]'")):
        build_cache(config, providers, recorder=None)  # type: ignore[arg-type]
    config.cache.semantic.embedding_model = None  # the exact cache alone needs no usearch
    assert build_cache(config, providers, recorder=None) is not None  # type: ignore[arg-type]
