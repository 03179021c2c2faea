"""Unit checks of the Gemini, Azure and OpenAI-compatible pieces: usage normalisation, stream meters, URLs, config
and the price table's deployment names; and the OTel provider names they export."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meterline.config import OtelExportConfig, ProviderConfig, parse_config
from meterline.events.schema import UsageEvent, new_id, new_span_id
from meterline.otel.export import OtlpExporter
from meterline.pricing.table import PriceTable
from meterline.providers.base import (
    ApiError,
    Endpoint,
    RequestInvalid,
    SSEEvent,
    build_provider,
    classify_upstream_error,
    error_details,
)
from meterline.providers.gemini import GeminiDialect, GenerateContentStreamMeter, usage_from_gemini
from meterline.providers.openai import ChatStreamMeter, usage_from_openai
from meterline.server import otlp_exporter

NOW = datetime(2026, 9, 1, 12, 0, tzinfo=UTC)


def sse(data: dict) -> SSEEvent:
    text = orjson.dumps(data).decode()
    return SSEEvent(raw=f"data: {text}\n\n".encode(), event=None, data=text)


def provider(kind: str, **settings: object):  # type: ignore[no-untyped-def]
    return build_provider("p", ProviderConfig(kind=kind, base_url="https://example.test/base", **settings))


def test_gemini_usage_counts_thoughts_as_output_and_reasoning_and_tool_prompts_as_input() -> None:
    usage = usage_from_gemini(
        {
            "promptTokenCount": 1000,
            "cachedContentTokenCount": 600,
            "candidatesTokenCount": 50,
            "thoughtsTokenCount": 30,
            "toolUsePromptTokenCount": 20,
            "totalTokenCount": 1100,
        }
    )
    assert usage is not None
    assert (usage.input_tokens, usage.cache_read_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        1020,
        600,
        80,
        30,
    )
    garbage = usage_from_gemini({"promptTokenCount": "5", "candidatesTokenCount": -2})
    assert garbage is not None and (garbage.input_tokens, garbage.output_tokens) == (0, 0)
    assert usage_from_gemini(None) is None


def test_gemini_stream_completes_on_the_finish_reason_with_the_latest_usage() -> None:
    meter = GenerateContentStreamMeter()
    first = {
        "candidates": [{"content": {"parts": [{"text": "hel"}], "role": "model"}}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 1},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r1",
    }
    assert meter.feed(sse(first)) is not None and not meter.state.finished
    last = {
        "candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 2, "thoughtsTokenCount": 4},
    }
    meter.feed(sse(last))
    state = meter.state
    assert state.finished and state.finish_reason == "STOP" and "".join(state.output_text_parts) == "hello"
    assert state.usage is not None and (state.usage.input_tokens, state.usage.output_tokens) == (9, 6)
    assert (state.response_model, state.response_id) == ("gemini-2.5-flash", "r1")

    blocked = GenerateContentStreamMeter()
    blocked.feed(sse({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}))
    assert blocked.state.finished and blocked.state.finish_reason == "SAFETY"

    failed = GenerateContentStreamMeter()
    failed.feed(sse({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}))
    assert (failed.state.error_class, failed.state.error_message, failed.state.finished) == (
        "rate_limit",
        "quota",
        False,
    )


def test_compatible_servers_usage_fields() -> None:
    deepseek = usage_from_openai(
        "chat",
        {"prompt_tokens": 10, "completion_tokens": 2, "prompt_cache_hit_tokens": 6, "prompt_cache_miss_tokens": 4},
    )
    assert deepseek is not None and (deepseek.input_tokens, deepseek.cache_read_tokens) == (10, 6)
    openrouter = usage_from_openai(
        "chat",
        {
            "prompt_tokens": 10,
            "completion_tokens": 2,
            "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 5},
            "cost": 0.0012,
        },
    )
    assert openrouter is not None and (openrouter.cache_read_tokens, openrouter.cache_write_tokens) == (3, 5)
    assert openrouter.reported_cost_usd == 0.0012
    vllm = usage_from_openai("chat", {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": None})
    assert vllm is not None and (vllm.cache_read_tokens, vllm.reported_cost_usd) == (0, None)

    meter = ChatStreamMeter("chat", injected_usage_request=False)
    meter.feed(sse({"id": "c", "choices": [{"index": 0, "delta": {"content": "x"}}]}))
    final = {
        "id": "c",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "x_groq": {"id": "req_1", "usage": {"prompt_tokens": 7, "completion_tokens": 1}},
    }
    assert meter.feed(sse(final)) is not None
    assert meter.state.usage is not None and (meter.state.usage.input_tokens, meter.state.usage.output_tokens) == (7, 1)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, {"code": 400, "status": "INVALID_ARGUMENT", "details": [{"reason": "API_KEY_INVALID"}]}, "auth"),
        (429, {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}, "rate_limit"),
        (
            400,
            {"code": 400, "message": "The input token count (5) exceeds the maximum number of tokens allowed (4)."},
            "context_length",
        ),
        (400, {"code": "content_filter", "message": "filtered"}, "content_filter"),
        (503, {"code": 503, "status": "UNAVAILABLE"}, "server_error"),
    ],
)
def test_google_and_azure_errors_are_classified(status: int, body: dict, expected: str) -> None:
    code, message = error_details({"error": body})
    assert classify_upstream_error(status, code, message) == expected


def test_endpoints_say_where_the_model_and_the_stream_flag_are() -> None:
    in_body, in_path = Endpoint("/v1/chat/completions", "chat"), Endpoint("/m/{model}:x", "generate_content", True)
    assert in_body.requested_model({}, {"model": "gpt"}) == "gpt" and in_body.streaming({"stream": True})
    assert in_path.requested_model({"model": "gemini"}, {"model": "ignored"}) == "gemini"
    assert in_path.streaming({"stream": False}) is True
    with pytest.raises(RequestInvalid, match="missing required field 'model'"):
        in_body.requested_model({}, {})
    with pytest.raises(RequestInvalid, match="must be a string, got int"):
        in_body.requested_model({}, {"model": 4})
    with pytest.raises(RequestInvalid, match="alt=sse"):
        Endpoint("/s", "generate_content", True, (("alt", "sse"),)).check_query({})


def test_gemini_dialect_reads_both_spellings_and_requires_one_of() -> None:
    dialect = GeminiDialect()
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi there"}]}],
        "system_instruction": {"parts": [{"text": "be brief"}]},
        "generationConfig": {"maxOutputTokens": 64, "temperature": 0},
    }
    dialect.validate("generate_content", body)
    assert dialect.request_text("generate_content", body) == "be brief\nhi there"
    assert (dialect.max_output_tokens(body), dialect.temperature(body)) == (64, 0.0)
    with pytest.raises(RequestInvalid, match=r"'content'.*'requests'"):
        dialect.validate("embeddings", {"taskType": "RETRIEVAL_QUERY"})
    with pytest.raises(RequestInvalid, match="'generationConfig' must be an object"):
        dialect.validate("generate_content", {"contents": [], "generationConfig": 1})
    error = dialect.error_body(ApiError(402, "over budget", "budget_exceeded"))
    assert (
        error["error"]["status"] == "FAILED_PRECONDITION"
        and error["error"]["details"][0]["reason"] == "BUDGET_EXCEEDED"
    )


def test_upstream_urls_and_models() -> None:
    deployments = provider("azure_openai", api_key="k", api_version="2024-10-21")
    assert deployments.url("chat", {}, "prod 4o", False) == (
        "https://example.test/base/openai/deployments/prod%204o/chat/completions?api-version=2024-10-21"
    )
    assert (
        deployments.url("responses", {}, "prod", False)
        == "https://example.test/base/openai/responses?api-version=2024-10-21"
    )
    assert deployments.auth_headers() == {"api-key": "k"}
    v1 = provider("azure_openai")
    assert v1.url("embeddings", {}, "emb", False) == "https://example.test/base/openai/v1/embeddings"

    gemini = provider("gemini", api_key="g")
    assert gemini.url("generate_content", {}, "gemini-2.5-pro", True) == (
        "https://example.test/base/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    )
    batch = {"requests": [{"model": "models/alias", "content": {"parts": []}}]}
    assert gemini.url("embeddings", batch, "e1", False).endswith("/models/e1:batchEmbedContents")
    prepared = gemini.prepare("embeddings", batch, b"{}", "e1", {}, False)
    assert orjson.loads(prepared.body)["requests"][0]["model"] == "models/e1" and "model" not in orjson.loads(
        prepared.body
    )
    assert prepared.headers["x-goog-api-key"] == "g"
    untouched = gemini.prepare("generate_content", {"contents": []}, b'{"contents":[]}', "m", {}, False)
    assert untouched.body == b'{"contents":[]}', "the client's bytes go up when nothing changed"


def test_stream_usage_is_asked_for_unless_the_server_sends_it_unasked() -> None:
    streamed = {"stream": True, "messages": []}
    assert provider("openai_compatible").shape_body("chat", dict(streamed)) is True
    assert provider("openai_compatible", pricing_provider="mistral").shape_body("chat", dict(streamed)) is False
    asked = provider("openai_compatible", pricing_provider="mistral", stream_usage="request")
    assert asked.shape_body("chat", dict(streamed)) is True


def test_provider_settings_a_kind_does_not_use_are_config_errors() -> None:
    with pytest.raises(ValueError, match=r"providers\.p\.api_version: kind openai does not use it; .*azure_openai"):
        provider("openai", api_version="2024-10-21")
    with pytest.raises(ValueError, match=r"providers\.p\.stream_usage: kind gemini does not use it"):
        provider("gemini", stream_usage="request")


def test_a_deployment_is_priced_as_the_model_it_runs(tmp_path: Path) -> None:
    table = PriceTable.load(None, {"azure": "azure"}, {"azure": {"prod-4o": "gpt-4o-2024-08-06"}})
    priced = table.price("azure", "prod-4o", NOW, input_tokens=1_000_000, output_tokens=100_000)
    assert priced is not None and priced.cost_usd == pytest.approx(2.5 + 1.0)
    assert table.check([("azure", "prod-4o")]).ok
    assert "runs 'gpt-4o-2024-08-06'" in table.describe("azure", "prod-4o")
    assert table.context_window("azure", "prod-4o") == table.context_window("azure", "gpt-4o-2024-08-06")
    (tmp_path / "prices.yaml").write_text(
        "models:\n  - {provider: local, model: llama-3.1-8b, gpu: {usd_per_hour: 2, tokens_per_hour: 1000000, "
        "utilization: 0.25}}\n"
    )
    gpu = PriceTable.load(tmp_path / "prices.yaml", {"local": None}, {"local": {"served-llama": "llama-3.1-8b"}})
    priced = gpu.price("local", "served-llama", NOW, input_tokens=500_000, output_tokens=500_000)
    assert priced is not None and priced.cost_usd == pytest.approx(8.0), "$2/h over 1M tokens/h busy 1/4 = $8/M"


def test_exported_spans_name_providers_as_the_semconv_does() -> None:
    config = parse_config(
        """
server: {master_key: abcdefghij}
otel: {export: {enabled: true}}
providers:
  gem: {kind: gemini, base_url: https://generativelanguage.googleapis.com/v1beta}
  az: {kind: azure_openai, base_url: https://r.openai.azure.com}
  ds: {kind: openai_compatible, base_url: https://api.deepseek.com, pricing_provider: deepseek}
  box: {kind: openai_compatible, base_url: http://127.0.0.1:8000/v1}
""",
        Path("."),
    )
    pipeline = otlp_exporter(config, {name: build_provider(name, p) for name, p in config.providers.items()})
    assert pipeline is not None
    assert pipeline.provider_systems == {"gem": "gcp.gemini", "az": "azure.ai.openai", "ds": "deepseek", "box": "box"}

    spans = InMemorySpanExporter()
    exporter = OtlpExporter(
        OtelExportConfig(enabled=True),
        {},
        span_exporter=spans,
        metric_reader=InMemoryMetricReader(),
        provider_systems=pipeline.provider_systems,
    )
    event = UsageEvent(
        event_id=new_id(),
        request_id=new_id(),
        span_id=new_span_id(),
        started_at=NOW,
        ended_at=NOW,
        duration_ms=1,
        operation="generate_content",
        provider="gem",
        requested_model="gemini-2.5-flash",
        status_code=200,
    )
    exporter.export([event], {})
    exporter.flush()
    (attempt,) = [span for span in spans.get_finished_spans() if span.kind == SpanKind.CLIENT]
    assert attempt.attributes["gen_ai.provider.name"] == "gcp.gemini"
    assert attempt.attributes["gen_ai.operation.name"] == "generate_content"
    exporter.shutdown()
