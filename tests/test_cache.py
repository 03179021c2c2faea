"""The response cache end to end: real gateway processes, the mock provider, real Redis and DuckDB."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import MASTER_KEY, TEST_REDIS_URL, GatewayService
from tests.test_budgets import fresh_minute
from tests.test_dashboard import CHROMIUM, CHROMIUM_ARGS, column, settled, watch

CACHE = """
cache:
  enabled: true
  scope: {scope}
  backend: {backend}
  redis_url: {redis_url}
  key_prefix: "{prefix}"
  rules:
    - {{feature: faq, semantic: true}}
    - {{feature: never, enabled: false}}
  semantic: {{embedding_model: text-embedding-3-small, dimensions: 256, threshold: 0.9}}
"""


def cache_section(scope: str = "team", backend: str = "memory", prefix: str = "meterline:cache:") -> str:
    return CACHE.format(scope=scope, backend=backend, redis_url=TEST_REDIS_URL, prefix=prefix)


@pytest.fixture(scope="module")
def gateway(make_gateway) -> GatewayService:  # type: ignore[no-untyped-def]
    return make_gateway(extra=cache_section())


def chat_body(prompt: str, **fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "temperature": 0, "messages": [{"role": "user", "content": prompt}], **fields}


def post(gateway: GatewayService, body: dict[str, Any], path: str = "/v1/chat/completions", **headers: str):  # type: ignore[no-untyped-def]
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    if "authorization" not in sent:
        sent = gateway.headers(**sent)
    return httpx.post(gateway.url + path, json=body, headers=sent, timeout=30)


def stream(
    gateway: GatewayService, body: dict[str, Any], path: str = "/v1/chat/completions", **headers: str
) -> tuple[httpx.Headers, bytes]:
    sent = gateway.headers(**{name.replace("_", "-"): value for name, value in headers.items()})
    with httpx.stream("POST", gateway.url + path, json={**body, "stream": True}, headers=sent, timeout=30) as reply:
        assert reply.status_code == 200
        return reply.headers, reply.read()


def at_zero_cost(streamed: bytes) -> bytes:
    """The stream as a cache hit replays it: the same bytes, with the cost comment saying 0."""
    cost = next(line for line in streamed.split(b"\n") if line.startswith(b": x-meterline-cost-usd="))
    assert float(cost.split(b"=")[1]) > 0
    return streamed.replace(cost, b": x-meterline-cost-usd=0")


def assert_replayed(gateway: GatewayService, body: dict[str, Any], path: str, **headers: str) -> bytes:
    """Stream `body` twice: a miss, then a hit replaying the first stream; returns the hit's bytes."""
    first_headers, first = stream(gateway, body, path, **headers)
    second_headers, second = stream(gateway, body, path, **headers)
    assert (first_headers["x-meterline-cache"], second_headers["x-meterline-cache"]) == ("miss", "hit_exact")
    assert second == at_zero_cost(first)
    return second


def event_of(gateway: GatewayService, request_id: str) -> dict[str, Any]:
    (event,) = gateway.events(request_id=request_id)
    return event


def new_key(gateway: GatewayService, name: str, team: str) -> str:
    reply = httpx.post(gateway.url + "/api/v1/keys", json={"name": name, "team": team}, headers=gateway.headers())
    assert reply.status_code == 201, reply.text
    return reply.json()["key"]


def test_a_hit_returns_the_same_bytes_costs_nothing_and_records_what_it_saved(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    body = chat_body("exact cache: first question", max_tokens=12)
    first = post(gateway, body, x_meterline_feature="exact")
    second = post(gateway, body, x_meterline_feature="exact")
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert (first.headers["x-meterline-cache"], second.headers["x-meterline-cache"]) == ("miss", "hit_exact")
    assert float(first.headers["x-meterline-cost-usd"]) > 0 and second.headers["x-meterline-cost-usd"] == "0"
    assert (first.headers["x-meterline-attempts"], second.headers["x-meterline-attempts"]) == ("1", "0")
    assert second.headers["content-type"] == first.headers["content-type"]
    assert len(mock_requests()) == 1  # the hit never reached the provider

    miss = event_of(gateway, first.headers["x-meterline-request-id"])
    hit = event_of(gateway, second.headers["x-meterline-request-id"])
    assert miss["cache_status"] == "miss" and miss["saved_usd"] is None and miss["input_tokens"] > 0
    assert hit["cache_status"] == "hit_exact"
    assert (hit["input_tokens"], hit["output_tokens"], hit["cost_usd"]) == (0, 0, 0.0)
    assert hit["saved_usd"] == pytest.approx(miss["cost_usd"])
    assert hit["response_model"] == miss["response_model"] and hit["status_code"] == 200


def test_key_order_and_the_stream_flag_do_not_split_keys_but_sampling_does(gateway) -> None:  # type: ignore[no-untyped-def]
    body = chat_body("exact cache: normalised", max_tokens=10, user="alice", top_p=1)
    assert post(gateway, body).headers["x-meterline-cache"] == "miss"
    reordered = dict(reversed(list(body.items())))
    reordered["user"] = "bob"  # the end-user id is attribution, not part of the question
    assert post(gateway, reordered).headers["x-meterline-cache"] == "hit_exact"
    assert post(gateway, {**body, "max_tokens": 11}).headers["x-meterline-cache"] == "miss"
    assert post(gateway, {**body, "seed": 7}).headers["x-meterline-cache"] == "miss"


def test_a_stream_is_replayed_byte_for_byte_with_its_cost_comment_at_zero(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    body = chat_body("exact cache: a streamed answer", max_tokens=20, stream_options={"include_usage": True})
    first_headers, first = stream(gateway, body)
    second_headers, second = stream(gateway, body)
    assert (first_headers["x-meterline-cache"], second_headers["x-meterline-cache"]) == ("miss", "hit_exact")
    assert second == at_zero_cost(first)
    assert first.count(b"data: ") > 5 and first.rstrip().endswith(b"data: [DONE]")
    assert len(mock_requests()) == 1
    hit = event_of(gateway, second_headers["x-meterline-request-id"])
    assert hit["streaming"] is True and hit["cache_status"] == "hit_exact" and hit["saved_usd"] > 0

    # the same question without streaming is stored apart: a JSON answer is not a stream
    plain = post(gateway, {k: v for k, v in body.items() if k != "stream_options"})
    assert plain.headers["x-meterline-cache"] == "miss"


def test_the_official_sdk_reads_streamed_hits(gateway) -> None:  # type: ignore[no-untyped-def]
    client = gateway.openai()
    texts = []
    for _ in range(2):
        chunks = client.chat.completions.create(
            model="gpt-4o-mini",
            temperature=0,
            messages=[{"role": "user", "content": "exact cache: via the SDK"}],
            stream=True,
        )
        texts.append("".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices))
    assert texts[0] and texts[1] == texts[0]


def test_sampled_calls_bypass_the_cache_unless_asked(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    body = chat_body("exact cache: sampled", temperature=0.7)
    replies = [post(gateway, body), post(gateway, body)]
    assert [r.headers["x-meterline-cache"] for r in replies] == ["bypass", "bypass"]
    assert replies[0].content != replies[1].content  # the mock's ids differ: both went upstream
    unset = {k: v for k, v in body.items() if k != "temperature"}  # the provider's default temperature is 1
    assert post(gateway, unset).headers["x-meterline-cache"] == "bypass"
    asked = [post(gateway, body, x_meterline_cache="on") for _ in range(2)]
    assert [r.headers["x-meterline-cache"] for r in asked] == ["miss", "hit_exact"]
    assert asked[1].content == asked[0].content
    assert len(mock_requests()) == 4
    (event,) = gateway.events(request_id=replies[0].headers["x-meterline-request-id"])
    assert event["cache_status"] == "bypass"


def test_off_refresh_and_disabled_features(gateway) -> None:  # type: ignore[no-untyped-def]
    body = chat_body("exact cache: refreshed")
    first = post(gateway, body)
    assert post(gateway, body, x_meterline_cache="off").headers["x-meterline-cache"] == "bypass"
    refreshed = post(gateway, body, x_meterline_cache="refresh")
    assert refreshed.headers["x-meterline-cache"] == "refresh" and refreshed.content != first.content
    after = post(gateway, body)
    assert after.headers["x-meterline-cache"] == "hit_exact" and after.content == refreshed.content
    (event,) = gateway.events(request_id=refreshed.headers["x-meterline-request-id"])
    assert event["cache_status"] == "refresh" and event["cost_usd"] > 0

    never = [post(gateway, body, x_meterline_feature="never", x_meterline_cache="on") for _ in range(2)]
    assert [r.headers["x-meterline-cache"] for r in never] == ["bypass", "bypass"]


def test_a_bad_cache_header_is_refused_in_the_apis_error_shape(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = post(gateway, chat_body("x"), x_meterline_cache="sometimes")
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"] == "x-meterline-cache" and "on, off, refresh, semantic" in error["message"]
    anthropic = post(
        gateway,
        {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
        path="/v1/messages",
        x_meterline_cache="maybe",
    )
    assert anthropic.status_code == 400 and anthropic.json()["type"] == "error"


def test_anthropic_messages_are_cached_too(gateway) -> None:  # type: ignore[no-untyped-def]
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 9,
        "temperature": 0,
        "messages": [{"role": "user", "content": "hi"}],
    }
    replies = [post(gateway, body, path="/v1/messages", anthropic_version="2023-06-01") for _ in range(2)]
    assert [r.headers["x-meterline-cache"] for r in replies] == ["miss", "hit_exact"]
    assert replies[1].content == replies[0].content
    beta = post(gateway, body, path="/v1/messages", anthropic_version="2023-06-01", anthropic_beta="some-beta")
    assert beta.headers["x-meterline-cache"] == "miss"  # a beta header can change the answer

    replayed = assert_replayed(gateway, body, "/v1/messages", anthropic_version="2023-06-01")
    assert replayed.index(b": x-meterline-cost-usd=0") < replayed.index(b"event: message_stop")


def test_responses_api_answers_and_streams_are_cached(gateway) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "gpt-4o-mini", "temperature": 0, "input": "exact cache: the responses API"}
    replies = [post(gateway, body, path="/v1/responses") for _ in range(2)]
    assert [r.headers["x-meterline-cache"] for r in replies] == ["miss", "hit_exact"]
    assert replies[1].content == replies[0].content
    assert b"response.completed" in assert_replayed(gateway, body, "/v1/responses")


def test_identical_embedding_inputs_are_served_from_cache(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "text-embedding-3-small", "input": ["dedup me", "and me"]}
    replies = [post(gateway, body, path="/v1/embeddings", x_meterline_feature="rag") for _ in range(3)]
    assert [r.headers["x-meterline-cache"] for r in replies] == ["miss", "hit_exact", "hit_exact"]
    assert replies[2].content == replies[0].content
    assert len(mock_requests()) == 1
    other = post(gateway, {**body, "input": ["dedup me", "but not me"]}, path="/v1/embeddings")
    assert other.headers["x-meterline-cache"] == "miss"


def test_answers_never_cross_teams(gateway) -> None:  # type: ignore[no-untyped-def]
    team_a, team_b = new_key(gateway, "scope-a", "alpha"), new_key(gateway, "scope-b", "beta")
    other_a = new_key(gateway, "scope-a2", "alpha")
    body = chat_body("exact cache: team secret")
    first = post(gateway, body, authorization=f"Bearer {team_a}")
    other_team = post(gateway, body, authorization=f"Bearer {team_b}")
    same_team = post(gateway, body, authorization=f"Bearer {other_a}")
    assert first.headers["x-meterline-cache"] == "miss"
    assert other_team.headers["x-meterline-cache"] == "miss" and other_team.content != first.content
    assert same_team.headers["x-meterline-cache"] == "hit_exact" and same_team.content == first.content
    # the master key belongs to no team: what it asks for one team is not served for another
    by_master = [post(gateway, body, x_meterline_team=team) for team in ("alpha", "beta", "alpha")]
    assert [r.headers["x-meterline-cache"] for r in by_master] == ["miss", "miss", "hit_exact"]
    assert by_master[0].content not in (first.content, by_master[1].content)


def test_a_shared_cache_serves_every_team(make_gateway) -> None:  # type: ignore[no-untyped-def]
    shared = make_gateway(extra=cache_section(scope="shared"))
    team_a, team_b = new_key(shared, "shared-a", "alpha"), new_key(shared, "shared-b", "beta")
    body = chat_body("exact cache: common knowledge")
    first = post(shared, body, authorization=f"Bearer {team_a}")
    second = post(shared, body, authorization=f"Bearer {team_b}")
    assert (first.headers["x-meterline-cache"], second.headers["x-meterline-cache"]) == ("miss", "hit_exact")
    assert second.content == first.content


def test_semantic_hits_need_the_threshold_and_the_same_context(gateway) -> None:  # type: ignore[no-untyped-def]
    question = chat_body("What is the capital city of France?")
    first = post(gateway, question, x_meterline_feature="faq")
    assert first.headers["x-meterline-cache"] == "miss"
    # 6 of 7 words shared: cosine 6/sqrt(42) = 0.93 with the mock's word embeddings, above 0.9
    close = post(gateway, chat_body("what is the capital city of france, please"), x_meterline_feature="faq")
    assert close.headers["x-meterline-cache"] == "hit_semantic" and close.content == first.content
    # 5 of 6 words shared: cosine 5/6 = 0.83, below 0.9
    far = post(gateway, chat_body("What is the capital city of Spain?"), x_meterline_feature="faq")
    assert far.headers["x-meterline-cache"] == "miss" and far.content != first.content
    # the same question under another system prompt is another question
    system = {"role": "system", "content": "Answer in French."}
    framed = chat_body("what is the capital city of france, please")
    framed["messages"].insert(0, system)
    assert post(gateway, framed, x_meterline_feature="faq").headers["x-meterline-cache"] == "miss"
    # another feature has its own index; asked per request with the header
    elsewhere = post(gateway, chat_body("what is the capital city of france, please"), x_meterline_cache="semantic")
    assert elsewhere.headers["x-meterline-cache"] == "miss"

    hit = event_of(gateway, close.headers["x-meterline-request-id"])
    miss = event_of(gateway, first.headers["x-meterline-request-id"])
    assert hit["cache_status"] == "hit_semantic" and hit["saved_usd"] == pytest.approx(miss["cost_usd"])
    assert 0.9 <= float(hit["properties"]["cache_similarity"]) < 1
    # each lookup embedded its prompt through the gateway: a metered call of its own, deduplicated
    lookups = gateway.events(expected=4, model="text-embedding-3-small", feature="faq")
    assert all(e["properties"] == {"cache": "semantic_lookup"} and e["operation"] == "embeddings" for e in lookups)
    assert sorted(e["cache_status"] for e in lookups) == ["hit_exact", "miss", "miss", "miss"]
    assert all(e["cost_usd"] > 0 for e in lookups if e["cache_status"] == "miss")


def test_semantic_lookups_are_refused_when_not_configured(make_gateway) -> None:  # type: ignore[no-untyped-def]
    plain = make_gateway(extra="cache: {enabled: true}")
    reply = post(plain, chat_body("x"), x_meterline_cache="semantic")
    assert reply.status_code == 400 and "cache.semantic.embedding_model" in reply.json()["error"]["message"]


def test_the_cache_api_and_dashboard_show_hit_rate_and_savings_by_feature(make_gateway) -> None:  # type: ignore[no-untyped-def]
    fresh = make_gateway(extra=cache_section())
    body = chat_body("exact cache: analytics")
    replies = [post(fresh, body, x_meterline_feature="reports") for _ in range(4)]
    cost = float(replies[0].headers["x-meterline-cost-usd"])
    post(fresh, chat_body("exact cache: another feature", temperature=1), x_meterline_feature="drafts")
    fresh.events(expected=5)
    rows = httpx.get(fresh.url + "/api/v1/cache", params={"group_by": "feature"}, headers=fresh.headers()).json()
    by_feature = {row["feature"]: row for row in rows["rows"]}
    reports, drafts = by_feature["reports"], by_feature["drafts"]
    assert (reports["requests"], reports["hits"], reports["hit_rate"]) == (4, 3, 0.75)
    assert reports["saved_usd"] == pytest.approx(3 * cost)
    assert (drafts["requests"], drafts["hits"], drafts["saved_usd"]) == (1, 0, 0)

    if not Path(CHROMIUM).exists():
        return
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(base_url=fresh.url)
        problems = watch(page, fresh.url)
        page.goto("/login?next=/cache")
        page.fill("input[name=key]", MASTER_KEY)
        page.click("button[type=submit]")
        page.wait_for_url(fresh.url + "/cache")
        settled(page)
        features = column(page, "cache-table", "Feature")
        row = features.index("reports")
        assert column(page, "cache-table", "Cache hits")[row] == "3"
        assert column(page, "cache-table", "Hit rate")[row] == "75.0%"
        assert column(page, "cache-table", "Saved")[row] not in ("$0.00", "unpriced")
        assert column(page, "cache-table", "Hit rate")[features.index("drafts")] == "0.0%"
        browser.close()
    assert problems == []


def test_a_hit_is_not_charged_to_budgets(make_gateway) -> None:  # type: ignore[no-untyped-def]
    limited = make_gateway(
        extra=cache_section()
        + """
budgets:
  default_output_tokens: 50
  budgets:
    - {name: tight, scope: "team:frugal", period: month, limit_usd: 0.00005, actions: [block]}
    - {name: cheaper, scope: "feature:thrifty", period: month, limit_usd: 0.000001, actions: [downgrade],
       downgrade: {gpt-4o: gpt-4o-mini}}
"""
    )
    body = chat_body("exact cache: within budget", max_tokens=50)
    first = post(limited, body, x_meterline_team="frugal", x_mock_output_tokens="50")
    assert first.status_code == 200

    def spent() -> float:
        rows = httpx.get(limited.url + "/api/v1/budgets", headers=limited.headers()).json()["data"]
        return next(row for row in rows if row["name"] == "tight")["spent_usd"]

    before = spent()
    assert before == pytest.approx(float(first.headers["x-meterline-cost-usd"]))
    hits = [post(limited, body, x_meterline_team="frugal", x_mock_output_tokens="50") for _ in range(5)]
    assert all(r.status_code == 200 and r.headers["x-meterline-cache"] == "hit_exact" for r in hits)
    assert spent() == pytest.approx(before)
    # a call that is not cached still meets the budget
    uncached = post(limited, body, x_meterline_team="frugal", x_meterline_cache="off", x_mock_output_tokens="50")
    assert uncached.status_code == 402

    # an answer from a cheaper model a budget downgraded the call to is not the requested model's
    downgraded = [post(limited, {**body, "model": "gpt-4o"}, x_meterline_feature="thrifty") for _ in range(2)]
    assert [r.headers["x-meterline-cache"] for r in downgraded] == ["miss", "miss"]
    (event,) = limited.events(request_id=downgraded[1].headers["x-meterline-request-id"])
    assert (event["requested_model"], event["served_model"]) == ("gpt-4o", "gpt-4o-mini")


def test_hits_count_towards_rate_limits_and_agent_guardrails(make_gateway) -> None:  # type: ignore[no-untyped-def]
    limited = make_gateway(
        extra=cache_section()
        + """
budgets:
  quotas: {user_rpm: 3}
  agents: {max_steps: 3, loop_threshold: 100}
"""
    )
    fresh_minute()
    body = chat_body("exact cache: rate limited")
    replies = [post(limited, body, x_meterline_user="cached-user") for _ in range(4)]
    assert [r.status_code for r in replies] == [200, 200, 200, 429]
    assert [r.headers.get("x-meterline-cache") for r in replies] == ["miss", "hit_exact", "hit_exact", None]
    refused = event_of(limited, replies[3].headers["x-meterline-request-id"])
    assert (refused["error_class"], refused["cache_status"]) == ("budget_blocked", "none")

    # an agent run's steps answered from the cache are steps, and repeats of one prompt a loop
    steps = [post(limited, chat_body("exact cache: next step"), x_meterline_agent_run="cached-run") for _ in range(4)]
    assert [r.status_code for r in steps] == [200, 200, 200, 400]
    assert "agent run 'cached-run' has made 3 calls" in steps[3].json()["error"]["message"]
    looping = make_gateway(extra=cache_section() + "budgets:\n  agents: {loop_threshold: 3}\n")
    repeats = [post(looping, chat_body("exact cache: again"), x_meterline_agent_run="loop-run") for _ in range(3)]
    assert [r.status_code for r in repeats] == [200, 200, 400]
    assert "sent the same model the same prompt 3 times" in repeats[2].json()["error"]["message"]


def test_a_redis_cache_is_shared_by_two_gateway_processes(make_gateway, new_redis_prefix, mock_requests) -> None:  # type: ignore[no-untyped-def]
    section = cache_section(backend="redis", prefix=new_redis_prefix())
    one, two = make_gateway(extra=section), make_gateway(extra=section)
    body = chat_body("exact cache: shared through redis")
    first = post(one, body)
    second = post(two, body)
    assert (first.headers["x-meterline-cache"], second.headers["x-meterline-cache"]) == ("miss", "hit_exact")
    assert second.content == first.content
    _, streamed = stream(one, body)
    _, replayed = stream(two, body)
    assert replayed == at_zero_cost(streamed)
    # the semantic cache's prompts are shared too: one gateway embeds, the other finds it
    first = post(one, chat_body("Which river flows through the city of Paris?"), x_meterline_feature="faq")
    close = post(two, chat_body("which river flows through the city of paris today"), x_meterline_feature="faq")
    assert (first.headers["x-meterline-cache"], close.headers["x-meterline-cache"]) == ("miss", "hit_semantic")
    assert close.content == first.content
    upstream = [request["path"] for request in mock_requests()]
    assert upstream.count("/v1/chat/completions") == 3 and upstream.count("/v1/embeddings") == 2
