"""The official google-genai SDK works through the gateway with only its base URL changed; each call is one event
with Gemini's usage normalised and priced at the published rates (long-context tier included)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from google import genai
from google.genai import errors, types

from tests.conftest import MASTER_KEY, per_million

# Published prices, USD per million tokens (the bundled genai-prices snapshot).
FLASH = {"input": 0.30, "cached": 0.03, "output": 2.50}
PRO = {"input": 1.25, "cached": 0.125, "output": 10.0}
PRO_ABOVE_200K = {"input": 2.50, "cached": 0.25, "output": 15.0}
EMBEDDING = {"input": 0.15}
OVERHEAD = 3  # the mock counts each content's words plus 3

GEMINI = """
  gemini: {kind: gemini, base_url: MOCK/v1beta, api_key: provider-gemini-secret}
"""
MODELS = """
  - {name: gemini-2.5-flash, provider: gemini}
  - {name: gemini-2.5-pro, provider: gemini}
  - {name: gemini-embedding-001, provider: gemini}
  - {name: pro-or-flash, provider: gemini, upstream_model: gemini-2.5-pro, fallbacks: [gemini-2.5-flash]}
"""


def gemini_gateway(make_gateway, mock_provider, extra: str = ""):  # type: ignore[no-untyped-def]
    return make_gateway(extra_providers=GEMINI.replace("MOCK", mock_provider.url), extra_models=MODELS, extra=extra)


@pytest.fixture(scope="module")
def gateway(make_gateway, mock_provider):  # type: ignore[no-untyped-def]
    return gemini_gateway(make_gateway, mock_provider)


def client(gateway, api_key: str = MASTER_KEY, **headers: str) -> genai.Client:  # type: ignore[no-untyped-def]
    """The SDK as an app configures it, its base URL pointed at the gateway; no SDK retries, so attempts are ours."""
    options = types.HttpOptions(base_url=gateway.url, headers=headers, retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key=api_key, http_options=options)


def user() -> str:
    return f"gemini-{uuid.uuid4().hex[:10]}"


def test_generate_content_with_thoughts_cache_and_tool_use_tokens(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    who = user()
    sdk = client(
        gateway,
        **{
            "x-meterline-user": who,
            "x-meterline-feature": "gemini-faq",
            "x-mock-output-tokens": "20",
            "x-mock-cached-tokens": "4",
            "x-mock-reasoning-tokens": "6",
            "x-mock-tool-use-prompt-tokens": "5",
        },
    )
    answer = sdk.models.generate_content(
        model="gemini-2.5-flash",
        contents="how much does this cost",
        config=types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=12),
    )
    assert answer.text == " ".join(f"word{i}" for i in range(12))
    usage = answer.usage_metadata
    prompt = (5 + OVERHEAD) + (2 + OVERHEAD)
    assert (usage.prompt_token_count, usage.cached_content_token_count) == (prompt, 4)
    assert (usage.candidates_token_count, usage.thoughts_token_count, usage.tool_use_prompt_token_count) == (12, 6, 5)
    event = gateway.only_event(user=who)
    assert (event["provider"], event["operation"], event["streaming"]) == ("gemini", "generate_content", False)
    assert event["input_tokens"] == prompt + 5, "tool-use prompt tokens are input"
    assert event["cache_read_tokens"] == 4
    assert event["output_tokens"] == 12 + 6, "thoughts are output"
    assert event["reasoning_tokens"] == 6, "and reasoning"
    assert (event["finish_reason"], event["response_model"], event["feature"]) == (
        "MAX_TOKENS",
        "gemini-2.5-flash",
        "gemini-faq",
    )
    assert event["response_id"] == answer.response_id and event["usage_source"] == "provider"
    expected = (
        per_million(prompt + 5 - 4, FLASH["input"])
        + per_million(4, FLASH["cached"])
        + per_million(12 + 6, FLASH["output"])
    )
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert float(answer.sdk_http_response.headers["x-meterline-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    (upstream,) = [r for r in mock_requests() if r["path"].endswith(":generateContent")]
    assert upstream["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert upstream["headers"]["x-goog-api-key"] == "provider-gemini-secret"
    assert MASTER_KEY not in str(upstream), "the client's meterline key never goes upstream"


def test_stream_is_passed_through_and_metered_from_its_last_chunk(gateway) -> None:  # type: ignore[no-untyped-def]
    who = user()
    sdk = client(gateway, **{"x-meterline-user": who, "x-mock-output-tokens": "7", "x-mock-reasoning-tokens": "3"})
    chunks = list(sdk.models.generate_content_stream(model="gemini-2.5-flash", contents="stream this please"))
    assert len(chunks) == 7
    assert "".join(chunk.text for chunk in chunks) == " ".join(f"word{i}" for i in range(7))
    final = chunks[-1].usage_metadata
    assert (final.candidates_token_count, final.thoughts_token_count) == (7, 3)
    event = gateway.only_event(user=who)
    assert (event["streaming"], event["finish_reason"], event["usage_source"]) == (True, "STOP", "provider")
    assert (event["input_tokens"], event["output_tokens"], event["reasoning_tokens"]) == (3 + OVERHEAD, 10, 3)
    assert event["ttft_ms"] is not None and event["ttft_ms"] <= event["duration_ms"]
    expected = per_million(3 + OVERHEAD, FLASH["input"]) + per_million(10, FLASH["output"])
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_async_client_streams_too(gateway) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    who = user()
    sdk = client(gateway, **{"x-meterline-user": who, "x-mock-output-tokens": "4"})

    async def run() -> str:
        text = ""
        async for chunk in await sdk.aio.models.generate_content_stream(model="gemini-2.5-pro", contents="async"):
            text += chunk.text
        return text

    assert asyncio.run(run()) == "word0 word1 word2 word3"
    event = gateway.only_event(user=who)
    assert event["cost_usd"] == pytest.approx(per_million(1 + OVERHEAD, PRO["input"]) + per_million(4, PRO["output"]))


@pytest.mark.parametrize(("prompt", "prices"), [(200_000, PRO), (250_000, PRO_ABOVE_200K)])
def test_long_context_tier_prices_every_token_above_200k_prompt_tokens(gateway, prompt, prices) -> None:  # type: ignore[no-untyped-def]
    who = user()
    headers = {"x-meterline-user": who, "x-mock-prompt-tokens": str(prompt), "x-mock-cached-tokens": "50000"}
    sdk = client(gateway, **headers, **{"x-mock-output-tokens": "10"})
    answer = sdk.models.generate_content(model="gemini-2.5-pro", contents="a long document")
    assert answer.usage_metadata.prompt_token_count == prompt
    event = gateway.only_event(user=who)
    assert (event["input_tokens"], event["cache_read_tokens"], event["output_tokens"]) == (prompt, 50_000, 10)
    expected = (
        per_million(prompt - 50_000, prices["input"])
        + per_million(50_000, prices["cached"])
        + per_million(10, prices["output"])
    )
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_embeddings_are_metered_and_token_counts_are_relayed(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    who = user()
    sdk = client(gateway, **{"x-meterline-user": who})
    embedded = sdk.models.embed_content(
        model="gemini-embedding-001",
        contents=["one two three", "four five six seven"],
        config=types.EmbedContentConfig(output_dimensionality=16),
    )
    assert [len(item.values) for item in embedded.embeddings] == [16, 16]
    event = gateway.only_event(user=who)
    assert (event["operation"], event["input_tokens"], event["output_tokens"]) == ("embeddings", 7, 0)
    assert event["cost_usd"] == pytest.approx(per_million(7, EMBEDDING["input"]), rel=1e-9)
    (upstream,) = [r for r in mock_requests() if r["path"].endswith(":batchEmbedContents")]
    assert {request["model"] for request in upstream["body"]["requests"]} == {"models/gemini-embedding-001"}

    single = httpx.post(
        f"{gateway.url}/v1beta/models/gemini-embedding-001:embedContent",
        params={"key": MASTER_KEY},
        headers={"x-meterline-user": who},
        json={"content": {"parts": [{"text": "a key in the query, as Gemini allows"}]}},
    )
    assert single.status_code == 200 and len(single.json()["embedding"]["values"]) == 8
    assert len(gateway.events(expected=2, user=who)) == 2

    counted = sdk.models.count_tokens(model="gemini-2.5-flash", contents="count these four words")
    assert counted.total_tokens == 4 + OVERHEAD


def test_errors_come_in_geminis_shape(gateway) -> None:  # type: ignore[no-untyped-def]
    stranger, sdk = client(gateway, api_key="mlk-not-a-key"), client(gateway)
    with pytest.raises(errors.ClientError) as refused:
        stranger.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert (refused.value.code, refused.value.status) == (401, "UNAUTHENTICATED")
    with pytest.raises(errors.ClientError) as unknown:
        sdk.models.generate_content(model="gemini-9-ultra", contents="x")
    assert (unknown.value.code, unknown.value.status) == (404, "NOT_FOUND")
    assert "gemini-2.5-flash" in unknown.value.message, "the configured models are listed"

    url = f"{gateway.url}/v1beta/models/gemini-2.5-flash"
    bad = httpx.post(f"{url}:generateContent", headers={"x-goog-api-key": MASTER_KEY}, json={"contents": "hello"})
    assert bad.status_code == 400
    error = bad.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT") and "contents" in error["message"]
    assert error["details"][0]["metadata"] == {"param": "contents"}
    unkeyed = httpx.post(f"{url}:generateContent", json={"contents": []})
    assert unkeyed.status_code == 401 and "x-goog-api-key" in unkeyed.json()["error"]["message"]
    array_stream = httpx.post(f"{url}:streamGenerateContent", params={"key": MASTER_KEY}, json={"contents": []})
    assert array_stream.status_code == 400 and "alt=sse" in array_stream.json()["error"]["message"]


def test_upstream_errors_are_relayed_and_metered(gateway) -> None:  # type: ignore[no-untyped-def]
    who = user()
    sdk = client(gateway, **{"x-meterline-user": who, "x-mock-fault": "rate_limit"})
    with pytest.raises(errors.ClientError) as limited:
        sdk.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert gateway.only_event(user=who)["error_class"] == "rate_limit"

    who = user()
    sdk = client(gateway, **{"x-meterline-user": who, "x-mock-fault": "disconnect", "x-mock-output-tokens": "8"})
    with pytest.raises(errors.APIError) as cut:
        list(sdk.models.generate_content_stream(model="gemini-2.5-flash", contents="cut me off"))
    assert cut.value.code == 502
    event = gateway.only_event(user=who)
    assert event["usage_source"] == "estimated" and event["input_tokens"] > 0 and event["cost_usd"] > 0

    who = user()
    sdk = client(gateway, **{"x-meterline-user": who, "x-mock-fault": "auth"})
    with pytest.raises(errors.ClientError):
        sdk.models.generate_content(model="gemini-2.5-flash", contents="x")
    assert gateway.only_event(user=who)["error_class"] == "auth", "Gemini's 400 API_KEY_INVALID is an auth failure"


def test_a_failing_model_falls_back(gateway) -> None:  # type: ignore[no-untyped-def]
    who = user()
    faults = {"x-mock-fault": "overloaded", "x-mock-fault-model": "gemini-2.5-pro", "x-mock-output-tokens": "3"}
    sdk = client(gateway, **{"x-meterline-user": who}, **faults)
    answer = sdk.models.generate_content(model="pro-or-flash", contents="fall back")
    assert answer.model_version == "gemini-2.5-flash"
    failed, served = sorted(gateway.events(expected=2, user=who), key=lambda event: event["attempt"])
    assert failed["request_id"] == served["request_id"]
    assert (failed["upstream_model"], failed["error_class"]) == ("gemini-2.5-pro", "server_error")
    assert (served["served_model"], served["error_class"]) == ("gemini-2.5-flash", "none")
    assert served["cost_usd"] == pytest.approx(
        per_million(2 + OVERHEAD, FLASH["input"]) + per_million(3, FLASH["output"])
    )


def test_the_cache_replays_gemini_answers_streamed_and_not(make_gateway, mock_provider) -> None:  # type: ignore[no-untyped-def]
    cached = gemini_gateway(make_gateway, mock_provider, extra="cache: {enabled: true}")
    who = user()
    sdk = client(cached, **{"x-meterline-user": who, "x-mock-output-tokens": "5"})
    config = types.GenerateContentConfig(temperature=0)
    first = sdk.models.generate_content(model="gemini-2.5-flash", contents="cache me", config=config)
    again = sdk.models.generate_content(model="gemini-2.5-flash", contents="cache me", config=config)
    assert again.text == first.text and again.sdk_http_response.headers["x-meterline-cache"] == "hit_exact"
    streamed = [
        c.text for c in sdk.models.generate_content_stream(model="gemini-2.5-flash", contents="cache me", config=config)
    ]
    replayed = [
        c.text for c in sdk.models.generate_content_stream(model="gemini-2.5-flash", contents="cache me", config=config)
    ]
    assert replayed == streamed == ["word0", " word1", " word2", " word3", " word4"]
    statuses = [
        event["cache_status"] for event in sorted(cached.events(expected=4, user=who), key=lambda e: e["started_at"])
    ]
    assert statuses == ["miss", "hit_exact", "miss", "hit_exact"], "a stream and a JSON answer are cached apart"
