"""What lands in the ledger: attribution, durability across crashes, the events API, re-pricing, start-up checks."""

from __future__ import annotations

import json
import signal

import httpx
import pytest

from tests.conftest import MASTER_KEY, run_cli

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}


def chat(gateway, body: dict | None = None, **headers: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    reply = httpx.post(
        gateway.url + "/v1/chat/completions", json=body or CHAT, headers=gateway.headers(**headers), timeout=30
    )
    assert reply.status_code == 200, reply.text
    return reply


def test_every_attribution_header_lands_on_the_event(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = chat(
        gateway,
        **{
            "x-meterline-user": "user-42",
            "x-meterline-feature": "search",
            "x-meterline-team": "discovery",
            "x-meterline-app": "web",
            "x-meterline-env": "prod",
            "x-meterline-prompt-id": "answer",
            "x-meterline-prompt-version": "v7",
            "x-meterline-session": "sess-1",
            "x-meterline-agent-run": "run-9",
            "x-meterline-agent-step": "3",
            "x-meterline-property-tenant": "acme",
            "x-meterline-property-region": "eu-west",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        },
    )
    (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
    assert event["user"] == "user-42" and event["feature"] == "search" and event["team"] == "discovery"
    assert (event["app"], event["env"]) == ("web", "prod")
    assert (event["prompt_id"], event["prompt_version"]) == ("answer", "v7")
    assert (event["session_id"], event["agent_run_id"], event["agent_step"]) == ("sess-1", "run-9", 3)
    assert event["properties"] == {"tenant": "acme", "region": "eu-west"}
    assert event["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert event["parent_span_id"] == "00f067aa0ba902b7"
    assert event["key_id"] == "master"
    assert event["attempt"] == 1 and event["event_id"] and event["request_id"]


def test_user_comes_from_the_body_when_no_header(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = chat(gateway, {**CHAT, "user": "body-user"})
    (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
    assert event["user"] == "body-user"
    reply = chat(gateway, {**CHAT, "user": "body-user"}, **{"x-meterline-user": "header-user"})
    (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
    assert event["user"] == "header-user"
    message = {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    reply = httpx.post(
        gateway.url + "/v1/messages",
        json={**message, "metadata": {"user_id": "anthropic-user"}},
        headers=gateway.headers(),
    )
    (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
    assert event["user"] == "anthropic-user"


def test_unpriced_model_is_never_zero(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = chat(gateway, {**CHAT, "model": "llama-local"})
    assert reply.headers["x-meterline-cost-usd"] == "unpriced"
    (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
    assert event["cost_usd"] is None and event["price_version"] is None
    assert event["input_tokens"] > 0


def test_events_api_filters_pagination_and_bad_parameters(gateway) -> None:  # type: ignore[no-untyped-def]
    ids = {chat(gateway, **{"x-meterline-feature": "paging"}).headers["x-meterline-request-id"] for _ in range(7)}
    gateway.events(expected=7, feature="paging")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"feature": "paging", "limit": "3", **({"cursor": cursor} if cursor else {})}
        page = httpx.get(gateway.url + "/api/v1/events", params=params, headers=gateway.headers()).json()
        seen.extend(event["request_id"] for event in page["data"])
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(ids)
    times = [e["started_at"] for e in gateway.events(feature="paging")]
    assert times == sorted(times, reverse=True)
    assert gateway.events(feature="paging", model="gpt-4o-mini", provider="openai", since="1h")
    assert gateway.events(feature="paging", until="2000-01-01T00:00:00Z", timeout_s=0) == []
    for params, param in (
        ({"limit": "0"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"colour": "red"}, "colour"),
        ({"cost_basis": "future"}, "cost_basis"),
        ({"cursor": "garbage!"}, "cursor"),
    ):
        reply = httpx.get(gateway.url + "/api/v1/events", params=params, headers=gateway.headers())
        assert reply.status_code == 400, params
        assert reply.json()["error"]["param"] == param


def test_health_and_ready(gateway) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(gateway.url + "/health").json() == {"status": "ok"}
    ready = httpx.get(gateway.url + "/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {"store": "ok", "spool": "ok"}


def test_kill_9_loses_no_answered_event(make_gateway) -> None:  # type: ignore[no-untyped-def]
    gateway = make_gateway()
    ids = [chat(gateway, **{"x-meterline-feature": "crash"}).headers["x-meterline-request-id"] for _ in range(30)]
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={**CHAT, "stream": True},
        headers=gateway.headers(**{"x-meterline-feature": "crash"}),
    ) as reply:
        reply.read()
        ids.append(reply.headers["x-meterline-request-id"])
    gateway.stop(signal.SIGKILL)
    gateway.start()
    events = gateway.events(expected=31, feature="crash")
    assert sorted(e["request_id"] for e in events) == sorted(ids)
    gateway.stop(signal.SIGTERM)  # graceful: flushes the spool, then a second restart changes nothing
    gateway.start()
    assert len(gateway.events(expected=32, feature="crash", timeout_s=1)) == 31


def test_price_correction_reprices_history_on_read(make_gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    overrides = tmp_path / "prices.yaml"
    overrides.write_text("models:\n  - {provider: local, model: llama-local, input_mtok: 1.0, output_mtok: 2.0}\n")
    gateway = make_gateway(pricing=f"pricing: {{overrides: {overrides}}}")
    reply = chat(gateway, {**CHAT, "model": "llama-local"}, **{"x-meterline-feature": "reprice"})
    (event,) = gateway.events(feature="reprice")
    expected = (event["input_tokens"] * 1.0 + event["output_tokens"] * 2.0) / 1e6
    assert event["cost_usd"] == pytest.approx(expected)
    assert float(reply.headers["x-meterline-cost-usd"]) == pytest.approx(expected)

    overrides.write_text(
        "models:\n  - {provider: local, model: llama-local, input_mtok: 1.0, output_mtok: 2.0}\n"
        "  - {provider: local, model: llama-local, effective_from: 2000-01-01, input_mtok: 10.0, output_mtok: 20.0}\n"
    )
    gateway.stop()
    gateway.start()
    (as_recorded,) = gateway.events(feature="reprice")
    assert as_recorded["cost_usd"] == pytest.approx(expected)
    (repriced,) = gateway.events(feature="reprice", cost_basis="current")
    assert repriced["cost_usd"] == pytest.approx(expected * 10)
    assert repriced["price_version"] != as_recorded["price_version"]


def test_bad_config_fails_fast_naming_the_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "server: {port: seventy}\n": "server.port",
        "server: {master_key: abcdefghij}\nproviders: {}\nmodels:\n  - {name: m, provider: ghost}\n": "ghost",
        "server: {master_key: abcdefghij, colour: red}\n": "server.colour",
        "server: {master_key: ${UNSET_FOR_TEST}}\n": "UNSET_FOR_TEST",
        "providers:\n  p: {kind: openai, base_url: ftp://x}\n": "base_url",
        "providers:\n  p: {kind: martian, base_url: http://x}\nserver: {master_key: abcdefghij}\n": "martian",
        "store: {path: [1, 2]}\n": "store.path",
        "server: {port: 4000}\n": "master_key",
    }
    for text, expected in cases.items():
        (tmp_path / "bad.yaml").write_text(text)
        result = run_cli("serve", "--config", "bad.yaml", cwd=tmp_path)
        assert result.returncode != 0, text
        assert expected in result.stderr, (text, result.stderr)
        assert "Traceback" not in result.stderr


def test_second_server_on_the_same_store_is_refused_clearly(gateway, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store_path = gateway.data_dir / "meterline.duckdb"
    (tmp_path / "second.yaml").write_text(
        f"server: {{master_key: abcdefghij, port: 1}}\nstore: {{path: {store_path}, spool_dir: {tmp_path / 'spool'}}}\n"
    )
    result = run_cli("serve", "--config", "second.yaml", cwd=tmp_path)
    assert result.returncode != 0
    assert "one writing process" in result.stderr and "Traceback" not in result.stderr


def test_prices_cli(tmp_path) -> None:  # type: ignore[no-untyped-def]
    shown = run_cli("prices", "show", "claude-sonnet-4-5", "--provider", "anthropic", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "3.75" in shown.stdout and "0.3" in shown.stdout
    (tmp_path / "meterline.yaml").write_text(
        "server: {master_key: abcdefghij}\n"
        "providers:\n  openai: {kind: openai, base_url: http://127.0.0.1:9/v1}\n"
        "  local: {kind: openai_compatible, base_url: http://127.0.0.1:9/v1}\n"
        "models:\n  - {name: gpt-4o-mini, provider: openai}\n  - {name: my-llama, provider: local}\n"
    )
    checked = run_cli("prices", "check", cwd=tmp_path)
    assert checked.returncode == 1
    assert "my-llama" in checked.stdout
    (tmp_path / "prices.yaml").write_text(
        "models:\n  - {provider: local, model: my-llama, gpu: {usd_per_hour: 2, tokens_per_hour: 1000000}}\n"
    )
    with (tmp_path / "meterline.yaml").open("a") as config:
        config.write("pricing: {overrides: prices.yaml}\n")
    checked = run_cli("prices", "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "ok" in checked.stdout


def test_master_key_never_leaks_into_events(gateway) -> None:  # type: ignore[no-untyped-def]
    events = gateway.events(limit=200)
    text = json.dumps(events)
    assert MASTER_KEY not in text and "provider-openai-secret" not in text


def test_demo_runs_and_reports_spend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import free_port

    result = run_cli(
        "demo",
        "--port",
        str(free_port()),
        "--mock-port",
        str(free_port()),
        "--requests",
        "60",
        "--duration",
        "3",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "spend of these calls by feature:" in result.stdout and "by model:" in result.stdout
    assert "$0.000000" not in result.stdout.split("by model:")[1].splitlines()[1]
    demo_dir = tmp_path / "meterline-data" / "demo"
    assert (demo_dir / "meterline.duckdb").exists()
    # the simulated week of history gives the insights something to find
    insights = run_cli("insights", "--config", "meterline.yaml", "--json", cwd=demo_dir)
    assert insights.returncode == 0, insights.stderr
    found = {finding["detector"] for finding in json.loads(insights.stdout)["findings"]}
    assert {"system_prompt_tax", "model_mismatch", "embedding_leak", "output_bloat"} <= found
