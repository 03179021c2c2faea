"""The official openai SDK's AzureOpenAI client works through the gateway with only its endpoint changed; Azure
deployments are called upstream with the provider's api-key and priced by the model they run."""

from __future__ import annotations

import uuid

import openai
import pytest

from tests.conftest import MASTER_KEY, per_million

# Published prices, USD per million tokens (genai-prices: Azure's models fall back to OpenAI's).
GPT_4O = {"input": 2.5, "cached": 1.25, "output": 10.0}
GPT_4O_MINI = {"input": 0.15, "cached": 0.075, "output": 0.6}
EMBEDDING_3_SMALL = {"input": 0.02}
API_VERSION = "2024-10-21"
OVERHEAD = 3  # the mock counts each message's words plus 3

AZURE = """
  azure:
    kind: azure_openai
    base_url: MOCK
    api_key: provider-azure-secret
    api_version: "2024-10-21"
    deployments: {prod-4o: gpt-4o-2024-08-06, embed-small: text-embedding-3-small}
  azure-v1: {kind: azure_openai, base_url: MOCK, api_key: provider-azure-v1-secret, deployments: {eu-mini: gpt-4o-mini}}
"""
MODELS = """
  - {name: prod-4o, provider: azure}
  - {name: embed-small, provider: azure}
  - {name: mini-eu, provider: azure-v1, upstream_model: eu-mini}
"""


@pytest.fixture(scope="module")
def gateway(make_gateway, mock_provider):  # type: ignore[no-untyped-def]
    return make_gateway(extra_providers=AZURE.replace("MOCK", mock_provider.url), extra_models=MODELS)


def azure(gateway, **options) -> openai.AzureOpenAI:  # type: ignore[no-untyped-def]
    """The client as an app configures it for Azure, its endpoint pointed at the gateway."""
    return openai.AzureOpenAI(
        azure_endpoint=gateway.url, api_key=MASTER_KEY, api_version=API_VERSION, max_retries=0, **options
    )


def user() -> str:
    return f"azure-{uuid.uuid4().hex[:10]}"


def test_chat_on_a_deployment_priced_by_the_model_azure_reports(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    who = user()
    raw = azure(gateway).chat.completions.with_raw_response.create(
        model="prod-4o",
        messages=[{"role": "user", "content": "what does this cost on azure"}],
        extra_headers={"x-meterline-user": who, "x-mock-model": "gpt-4o-2024-08-06", "x-mock-cached-tokens": "3"},
    )
    completion = raw.parse()
    assert completion.model == "gpt-4o-2024-08-06"
    usage = completion.usage
    assert (usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens) == (6 + OVERHEAD, 3)
    event = gateway.only_event(user=who)
    assert (event["provider"], event["requested_model"], event["upstream_model"]) == ("azure", "prod-4o", "prod-4o")
    assert (event["response_model"], event["input_tokens"], event["cache_read_tokens"]) == ("gpt-4o-2024-08-06", 9, 3)
    assert event["output_tokens"] == usage.completion_tokens
    expected = (
        per_million(9 - 3, GPT_4O["input"])
        + per_million(3, GPT_4O["cached"])
        + per_million(usage.completion_tokens, GPT_4O["output"])
    )
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9)
    assert float(raw.headers["x-meterline-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    (upstream,) = [r for r in mock_requests() if "/deployments/" in r["path"]]
    assert upstream["path"] == "/openai/deployments/prod-4o/chat/completions"
    assert upstream["query"] == f"api-version={API_VERSION}"
    assert upstream["headers"]["api-key"] == "provider-azure-secret"
    assert MASTER_KEY not in str(upstream), "the client's key never goes upstream"


def test_stream_priced_through_the_deployment_map(gateway) -> None:  # type: ignore[no-untyped-def]
    who = user()
    chunks = list(
        azure(gateway).chat.completions.create(
            model="prod-4o",
            messages=[{"role": "user", "content": "stream from azure"}],
            stream=True,
            extra_headers={"x-meterline-user": who, "x-mock-output-tokens": "6"},
        )
    )
    assert chunks[0].choices == [] and chunks[0].prompt_filter_results, "Azure's opening chunk is passed through"
    assert all(chunk.usage is None for chunk in chunks), "the usage chunk the gateway asked for is hidden again"
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == " ".join(f"word{i}" for i in range(6))
    event = gateway.only_event(user=who)
    assert (event["streaming"], event["response_model"], event["finish_reason"]) == (True, "prod-4o", "stop")
    assert (event["input_tokens"], event["output_tokens"], event["usage_source"]) == (3 + OVERHEAD, 6, "provider")
    expected = per_million(3 + OVERHEAD, GPT_4O["input"]) + per_million(6, GPT_4O["output"])
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9), "deployment prod-4o runs gpt-4o-2024-08-06"


def test_a_client_bound_to_a_deployment_and_embeddings(gateway) -> None:  # type: ignore[no-untyped-def]
    who = user()
    bound = azure(gateway, azure_deployment="prod-4o")
    bound.chat.completions.create(
        model="unused-by-azure",
        messages=[{"role": "user", "content": "bound"}],
        extra_headers={"x-meterline-user": who, "x-mock-output-tokens": "2"},
    )
    event = gateway.only_event(user=who)
    assert event["requested_model"] == "prod-4o", "the deployment in the URL names the model, as on Azure"

    who = user()
    embedded = azure(gateway).embeddings.create(
        model="embed-small", input=["one two", "three four five"], extra_headers={"x-meterline-user": who}
    )
    assert len(embedded.data) == 2
    event = gateway.only_event(user=who)
    assert (event["operation"], event["input_tokens"]) == ("embeddings", 5)
    assert event["cost_usd"] == pytest.approx(per_million(5, EMBEDDING_3_SMALL["input"]), rel=1e-9)


def test_the_v1_api_both_ways(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    who = user()
    v1 = openai.OpenAI(base_url=gateway.url + "/openai/v1", api_key=MASTER_KEY, max_retries=0)
    v1.chat.completions.create(
        model="mini-eu",
        messages=[{"role": "user", "content": "v1 style"}],
        extra_headers={"x-meterline-user": who, "x-mock-output-tokens": "4"},
    )
    (upstream,) = [r for r in mock_requests() if r["path"].startswith("/openai/v1/")]
    assert (upstream["path"], upstream["query"]) == ("/openai/v1/chat/completions", "")
    assert upstream["body"]["model"] == "eu-mini" and upstream["headers"]["api-key"] == "provider-azure-v1-secret"
    event = gateway.only_event(user=who)
    expected = per_million(2 + OVERHEAD, GPT_4O_MINI["input"]) + per_million(4, GPT_4O_MINI["output"])
    assert event["cost_usd"] == pytest.approx(expected, rel=1e-9), "deployment eu-mini runs gpt-4o-mini"

    who = user()
    gateway.openai().chat.completions.create(
        model="mini-eu", messages=[{"role": "user", "content": "plain openai"}], extra_headers={"x-meterline-user": who}
    )
    assert gateway.only_event(user=who)["provider"] == "azure-v1", "OpenAI's own URLs reach Azure models too"


def test_errors_in_the_shape_the_azure_client_reads(gateway) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as unknown:
        azure(gateway).chat.completions.create(model="no-such-deployment", messages=[{"role": "user", "content": "x"}])
    assert "prod-4o" in unknown.value.message, "the configured models are listed"
    stranger = openai.AzureOpenAI(
        azure_endpoint=gateway.url, api_key="mlk-wrong", api_version=API_VERSION, max_retries=0
    )
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="prod-4o", messages=[{"role": "user", "content": "x"}])
    who = user()
    with pytest.raises(openai.RateLimitError):
        azure(gateway).chat.completions.create(
            model="prod-4o",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-meterline-user": who, "x-mock-fault": "rate_limit"},
        )
    assert gateway.only_event(user=who)["error_class"] == "rate_limit"
