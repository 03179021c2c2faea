"""The mock provider speaks Gemini's and Azure OpenAI's wire formats well enough for their official SDKs, and
answers as the OpenAI-compatible servers do when asked to (`x-mock-compat`)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from google import genai
from google.genai import errors, types

from meterline.mock_provider.settings import MockSettings
from tests.test_mock_provider import serve

KEY = "mock-key-1"


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with serve(MockSettings(require_key=KEY)) as url:
        yield url


def gemini(url: str, api_key: str = KEY, **headers: str) -> genai.Client:
    options = types.HttpOptions(base_url=url, headers=headers, retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(api_key=api_key, http_options=options)


def test_gemini_generate_content_reports_every_usage_count(mock_url: str) -> None:
    sdk = gemini(
        mock_url,
        **{"x-mock-cached-tokens": "2", "x-mock-reasoning-tokens": "4", "x-mock-tool-use-prompt-tokens": "1"},
    )
    config = types.GenerateContentConfig(system_instruction="be terse", max_output_tokens=3, candidate_count=2)
    answer = sdk.models.generate_content(model="gemini-2.5-flash", contents="how much is this", config=config)
    assert [c.finish_reason for c in answer.candidates] == [types.FinishReason.MAX_TOKENS] * 2
    assert answer.candidates[0].content.parts[0].text == "word0 word1 word2"
    usage = answer.usage_metadata
    assert (usage.prompt_token_count, usage.cached_content_token_count) == ((4 + 3) + (2 + 3), 2)
    assert (usage.candidates_token_count, usage.thoughts_token_count, usage.tool_use_prompt_token_count) == (6, 4, 1)
    assert usage.total_token_count == 12 + 6 + 4 + 1
    assert answer.model_version == "gemini-2.5-flash" and answer.response_id


def test_gemini_stream_as_sse_or_as_a_json_array(mock_url: str) -> None:
    sdk = gemini(mock_url, **{"x-mock-output-tokens": "3"})
    chunks = list(sdk.models.generate_content_stream(model="gemini-2.5-pro", contents="stream"))
    assert [chunk.text for chunk in chunks] == ["word0", " word1", " word2"]
    assert [chunk.usage_metadata.candidates_token_count for chunk in chunks] == [1, 2, 3]
    assert [chunk.candidates[0].finish_reason for chunk in chunks][-1] == types.FinishReason.STOP
    array = httpx.post(
        f"{mock_url}/v1beta/models/gemini-2.5-pro:streamGenerateContent",
        params={"key": KEY},
        headers={"x-mock-output-tokens": "2"},
        json={"contents": [{"parts": [{"text": "no sse"}]}]},
    )
    assert array.headers["content-type"].startswith("application/json") and len(array.json()) == 2


def test_gemini_embeddings_token_counts_and_errors(mock_url: str) -> None:
    sdk = gemini(mock_url)
    embedded = sdk.models.embed_content(model="gemini-embedding-001", contents=["a b", "c d e"])
    assert [len(item.values) for item in embedded.embeddings] == [8, 8]
    assert sdk.models.count_tokens(model="gemini-2.5-flash", contents="four words right here").total_tokens == 7
    stranger, faulty = gemini(mock_url, api_key="wrong"), gemini(mock_url, **{"x-mock-fault": "rate_limit"})
    with pytest.raises(errors.ClientError) as bad_key:
        stranger.models.generate_content(model="m", contents="x")
    assert (bad_key.value.code, bad_key.value.status) == (400, "INVALID_ARGUMENT")
    assert bad_key.value.details["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    with pytest.raises(errors.ClientError) as limited:
        faulty.models.generate_content(model="m", contents="x")
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")


def test_azure_chat_with_filter_results_and_its_stream(mock_url: str) -> None:
    client = openai.AzureOpenAI(azure_endpoint=mock_url, api_key=KEY, api_version="2024-10-21", max_retries=0)
    completion = client.chat.completions.create(
        model="prod-4o",
        messages=[{"role": "user", "content": "hello"}],
        extra_headers={"x-mock-model": "gpt-4o-2024-08-06"},
    )
    assert completion.model == "gpt-4o-2024-08-06"
    assert completion.model_dump()["prompt_filter_results"][0]["content_filter_results"]["hate"]["filtered"] is False
    chunks = list(
        client.chat.completions.create(
            model="prod-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (chunks[0].choices, chunks[0].model, chunks[0].id) == ([], "", "")
    assert chunks[1].model == "prod-4o" and chunks[-1].usage.completion_tokens == 16
    missing_version = httpx.post(
        f"{mock_url}/openai/deployments/prod-4o/chat/completions",
        headers={"api-key": KEY},
        json={"messages": [{"role": "user", "content": "x"}]},
    )
    assert missing_version.status_code == 404
    assert missing_version.json() == {"error": {"code": "404", "message": "Resource not found"}}


def test_compat_servers_usage_shapes(mock_url: str) -> None:
    def chat(server: str, stream: bool = False, **body: object) -> httpx.Response:
        return httpx.post(
            f"{mock_url}/v1/chat/completions",
            headers={"authorization": f"Bearer {KEY}", "x-mock-compat": server, "x-mock-cached-tokens": "2"},
            json={"model": "m", "messages": [{"role": "user", "content": "a b c"}], "stream": stream, **body},
        )

    assert chat("vllm").json()["usage"]["prompt_tokens_details"] is None
    deepseek = chat("deepseek").json()["usage"]
    assert (deepseek["prompt_cache_hit_tokens"], deepseek["prompt_cache_miss_tokens"]) == (2, 4)
    assert "prompt_tokens_details" not in deepseek
    openrouter = chat("openrouter").json()["usage"]
    assert (
        openrouter["cost"] == pytest.approx((6 + 16) / 1e6)
        and openrouter["prompt_tokens_details"]["cached_tokens"] == 2
    )

    def events(reply: httpx.Response) -> list[dict]:
        return [json.loads(line[6:]) for line in reply.text.split("\n") if line.startswith("data: {")]

    groq = events(chat("groq", stream=True))
    assert groq[-1]["x_groq"]["usage"]["completion_tokens"] == 16 and all("usage" not in e for e in groq)
    together = events(chat("together", stream=True))
    assert together[-1]["choices"] and together[-1]["usage"]["prompt_tokens"] == 6
    routed = chat("openrouter", stream=True)
    assert routed.text.startswith(": OPENROUTER PROCESSING") and events(routed)[-1]["choices"] == []
    refused = chat("mistral", stream=True, stream_options={"include_usage": True})
    assert refused.status_code == 422 and "Extra inputs are not permitted" in refused.json()["error"]["message"]
    assert chat("nonsense").status_code == 400
