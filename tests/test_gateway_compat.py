"""OpenAI-compatible servers (vLLM, DeepSeek, Groq, Together, Mistral, OpenRouter) each report usage their own way;
through the gateway every one lands as exact, normalised tokens priced at its published (or GPU-amortised) rates."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest

from tests.conftest import per_million

# Published prices, USD per million tokens (the bundled genai-prices snapshot).
DEEPSEEK_CHAT = {"input": 0.27, "cached": 0.07, "output": 1.1}
DEEPSEEK_CHAT_OFF_PEAK = {"input": 0.135, "cached": 0.035, "output": 0.55}  # 16:30-00:30 UTC
GROQ_LLAMA_70B = {"input": 0.59, "output": 0.79}
TOGETHER_LLAMA_70B = {"input": 0.88, "output": 0.88}
MISTRAL_SMALL = {"input": 0.15, "cached": 0.015, "output": 0.6}  # from 2026-03-16
OPENROUTER_GPT_4O_MINI = {"input": 0.15, "cached": 0.075, "output": 0.6}  # no cache-write price: the input rate
# A self-hosted GPU: $2/hour, 40M input or 4M output tokens per busy hour, busy half the time.
GPU = {"input": 2 / (40_000_000 * 0.5) * 1e6, "output": 2 / (4_000_000 * 0.5) * 1e6}
OVERHEAD = 3  # the mock counts each message's words plus 3

SERVERS = """
  vllm:
    kind: openai_compatible
    base_url: MOCK/v1
    headers: {x-mock-compat: vllm}
    deployments: {llama-prod: meta-llama/Llama-3.1-8B-Instruct}
  deepseek: {kind: openai_compatible, base_url: MOCK/v1, pricing_provider: deepseek, headers: {x-mock-compat: deepseek}}
  groq: {kind: openai_compatible, base_url: MOCK/v1, pricing_provider: groq, headers: {x-mock-compat: groq}}
  together: {kind: openai_compatible, base_url: MOCK/v1, pricing_provider: together, headers: {x-mock-compat: together}}
  mistral: {kind: openai_compatible, base_url: MOCK/v1, pricing_provider: mistral, headers: {x-mock-compat: mistral}}
  openrouter:
    kind: openai_compatible
    base_url: MOCK/v1
    pricing_provider: openrouter
    headers: {x-mock-compat: openrouter}
"""
MODELS = """
  - {name: llama-vllm, provider: vllm, upstream_model: llama-prod}
  - {name: deepseek-chat, provider: deepseek}
  - {name: llama-3.3-70b-versatile, provider: groq}
  - {name: together-llama, provider: together, upstream_model: meta-llama/Llama-3.3-70B-Instruct-Turbo}
  - {name: mistral-small-latest, provider: mistral}
  - {name: openai/gpt-4o-mini, provider: openrouter}
"""
PRICES = """
models:
  - provider: vllm
    model: meta-llama/Llama-3.1-8B-Instruct
    gpu: {usd_per_hour: 2, input_tokens_per_hour: 40000000, output_tokens_per_hour: 4000000, utilization: 0.5}
"""


@pytest.fixture(scope="module")
def gateway(make_gateway, mock_provider, tmp_path_factory):  # type: ignore[no-untyped-def]
    prices = tmp_path_factory.mktemp("compat-prices") / "prices.yaml"
    prices.write_text(PRICES)
    return make_gateway(
        extra_providers=SERVERS.replace("MOCK", mock_provider.url),
        extra_models=MODELS,
        pricing=f"pricing: {{overrides: {prices}}}",
    )


def user() -> str:
    return f"compat-{uuid.uuid4().hex[:10]}"


def chat(gateway, model: str, text: str, who: str, stream: bool = False, **headers: str):  # type: ignore[no-untyped-def]
    return gateway.openai().chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        stream=stream,
        extra_headers={"x-meterline-user": who, **headers},
    )


def upstream_stream(mock_requests, model: str) -> dict:  # type: ignore[no-untyped-def]
    """The body of the (one) streamed call for `model` the provider received during the test."""
    (request,) = [r for r in mock_requests() if r["body"] and r["body"].get("model") == model and r["body"]["stream"]]
    return request["body"]


def test_vllm_without_usage_details_priced_by_gpu_hours(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    who = user()
    completion = chat(gateway, "llama-vllm", "self hosted", who, **{"x-mock-output-tokens": "9"})
    assert completion.usage.prompt_tokens_details is None
    event = gateway.only_event(user=who)
    assert (event["input_tokens"], event["cache_read_tokens"], event["output_tokens"]) == (2 + OVERHEAD, 0, 9)
    expected = per_million(2 + OVERHEAD, GPU["input"]) + per_million(9, GPU["output"])
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9), "served name llama-prod runs the GPU-priced model"

    who = user()
    chunks = list(chat(gateway, "llama-vllm", "stream it", who, stream=True, **{"x-mock-output-tokens": "5"}))
    assert all(chunk.usage is None for chunk in chunks), "the usage the gateway asked vLLM for is hidden again"
    assert upstream_stream(mock_requests, "llama-prod")["stream_options"] == {"include_usage": True}
    event = gateway.only_event(user=who)
    assert (event["usage_source"], event["input_tokens"], event["output_tokens"]) == ("provider", 2 + OVERHEAD, 5)


def test_deepseek_cache_hits_are_cache_reads(gateway) -> None:  # type: ignore[no-untyped-def]
    who = user()
    completion = chat(gateway, "deepseek-chat", "a cached prefix here", who, **{"x-mock-cached-tokens": "4"})
    usage = completion.model_dump()["usage"]
    assert (usage["prompt_cache_hit_tokens"], usage["prompt_cache_miss_tokens"]) == (4, 4 + OVERHEAD - 4)
    event = gateway.only_event(user=who)
    assert (event["input_tokens"], event["cache_read_tokens"]) == (4 + OVERHEAD, 4)
    started = datetime.fromisoformat(event["started_at"])
    minute = started.hour * 60 + started.minute
    prices = DEEPSEEK_CHAT if 30 <= minute < 16 * 60 + 30 else DEEPSEEK_CHAT_OFF_PEAK
    expected = (
        per_million(4 + OVERHEAD - 4, prices["input"])
        + per_million(4, prices["cached"])
        + per_million(event["output_tokens"], prices["output"])
    )
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9), "priced in the UTC time-of-day window it ran in"


def test_groq_streams_usage_as_x_groq(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    who = user()
    chunks = list(
        chat(gateway, "llama-3.3-70b-versatile", "fast inference", who, stream=True, **{"x-mock-output-tokens": "6"})
    )
    assert chunks[-1].model_dump()["x_groq"]["usage"]["completion_tokens"] == 6
    assert "stream_options" not in upstream_stream(mock_requests, "llama-3.3-70b-versatile")
    event = gateway.only_event(user=who)
    assert (event["usage_source"], event["input_tokens"], event["output_tokens"]) == ("provider", 2 + OVERHEAD, 6)
    expected = per_million(2 + OVERHEAD, GROQ_LLAMA_70B["input"]) + per_million(6, GROQ_LLAMA_70B["output"])
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_together_sends_usage_on_its_last_chunk_unasked(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    who = user()
    chunks = list(chat(gateway, "together-llama", "open weights", who, stream=True, **{"x-mock-output-tokens": "3"}))
    assert chunks[-1].usage.completion_tokens == 3 and chunks[-1].choices, "passed through as Together sends it"
    assert "stream_options" not in upstream_stream(mock_requests, "meta-llama/Llama-3.3-70B-Instruct-Turbo")
    event = gateway.only_event(user=who)
    assert (event["usage_source"], event["output_tokens"]) == ("provider", 3)
    expected = per_million(2 + OVERHEAD, TOGETHER_LLAMA_70B["input"]) + per_million(3, TOGETHER_LLAMA_70B["output"])
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)


def test_mistral_gets_no_stream_options_which_it_would_refuse(gateway) -> None:  # type: ignore[no-untyped-def]
    import openai

    who = user()
    chunks = list(chat(gateway, "mistral-small-latest", "bonjour", who, stream=True, **{"x-mock-output-tokens": "4"}))
    assert chunks[-1].usage.completion_tokens == 4
    event = gateway.only_event(user=who)
    assert (event["usage_source"], event["input_tokens"], event["output_tokens"]) == ("provider", 1 + OVERHEAD, 4)
    expected = per_million(1 + OVERHEAD, MISTRAL_SMALL["input"]) + per_million(4, MISTRAL_SMALL["output"])
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)

    who = user()
    with pytest.raises(openai.UnprocessableEntityError):
        gateway.openai().chat.completions.create(
            model="mistral-small-latest",
            messages=[{"role": "user", "content": "asks for usage itself"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-meterline-user": who},
        )
    assert gateway.only_event(user=who)["error_class"] == "bad_request", "Mistral's own refusal, relayed and metered"


def test_openrouter_cache_writes_and_its_reported_cost(gateway) -> None:  # type: ignore[no-untyped-def]
    who = user()
    headers = {"x-mock-cached-tokens": "3", "x-mock-cache-write-tokens": "2", "x-mock-output-tokens": "5"}
    completion = chat(gateway, "openai/gpt-4o-mini", "routed through openrouter today", who, **headers)
    usage = completion.model_dump()["usage"]
    event = gateway.only_event(user=who)
    prompt = 4 + OVERHEAD
    assert (event["input_tokens"], event["cache_read_tokens"], event["cache_write_tokens"]) == (prompt, 3, 2)
    assert event["properties"]["reported_cost_usd"] == f"{usage['cost']:g}", "OpenRouter's own figure, kept beside"
    expected = (
        per_million(prompt - 3 - 2, OPENROUTER_GPT_4O_MINI["input"])
        + per_million(3, OPENROUTER_GPT_4O_MINI["cached"])
        + per_million(2, OPENROUTER_GPT_4O_MINI["input"])
        + per_million(5, OPENROUTER_GPT_4O_MINI["output"])
    )
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)

    who = user()
    chunks = list(chat(gateway, "openai/gpt-4o-mini", "stream", who, stream=True, **{"x-mock-output-tokens": "2"}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 2, "its usage chunk is its own"
    assert gateway.only_event(user=who)["usage_source"] == "provider"
