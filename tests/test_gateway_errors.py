"""Bad input and upstream trouble: clear errors in the caller's API shape, nothing crashes, attempts are metered."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, free_port

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}


def post(gateway, path: str, body: object, **headers: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(gateway.url + path, content=content, headers=gateway.headers(**headers), timeout=30)


def openai_error(reply: httpx.Response) -> dict:
    body = reply.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def anthropic_error(reply: httpx.Response) -> dict:
    body = reply.json()
    assert body["type"] == "error" and {"type", "message"} <= set(body["error"])
    return body["error"]


def test_malformed_json_in_both_shapes(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = post(gateway, "/v1/chat/completions", b"{not json")
    assert reply.status_code == 400
    assert "not valid JSON" in openai_error(reply)["message"]
    reply = post(gateway, "/v1/messages", b'{"model": ')
    assert reply.status_code == 400
    assert anthropic_error(reply)["type"] == "invalid_request_error"


def test_wrong_types_name_the_field(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = post(gateway, "/v1/chat/completions", {**CHAT, "messages": "hello"})
    assert reply.status_code == 400
    error = openai_error(reply)
    assert error["param"] == "messages" and "array" in error["message"]
    reply = post(gateway, "/v1/chat/completions", {**CHAT, "max_tokens": "ten"})
    assert openai_error(reply)["param"] == "max_tokens"
    reply = post(gateway, "/v1/messages", {k: v for k, v in MESSAGE.items() if k != "max_tokens"})
    assert reply.status_code == 400 and "max_tokens" in anthropic_error(reply)["message"]
    assert post(gateway, "/v1/chat/completions", [1, 2]).status_code == 400


def test_unknown_model_lists_configured_names(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = post(gateway, "/v1/chat/completions", {**CHAT, "model": "gpt-9000"})
    assert reply.status_code == 404
    message = openai_error(reply)["message"]
    assert "gpt-9000" in message and "gpt-4o-mini" in message and "claude-sonnet-4-5" in message
    with pytest.raises(openai.NotFoundError):
        gateway.openai().chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_model_of_another_wire_format_is_refused(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = post(gateway, "/v1/chat/completions", {**CHAT, "model": "claude-sonnet-4-5"})
    assert reply.status_code == 400 and "anthropic" in openai_error(reply)["message"]


def test_missing_and_wrong_keys(gateway) -> None:  # type: ignore[no-untyped-def]
    reply = httpx.post(gateway.url + "/v1/chat/completions", json=CHAT)
    assert reply.status_code == 401 and "missing API key" in openai_error(reply)["message"]
    reply = httpx.post(gateway.url + "/v1/messages", json=MESSAGE, headers={"x-api-key": "wrong-key-123"})
    assert reply.status_code == 401 and anthropic_error(reply)["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway.url + "/v1", api_key="bad", max_retries=0).models.list()
    reply = httpx.get(gateway.url + "/api/v1/events")
    assert reply.status_code == 401


def test_oversize_body_is_413(gateway) -> None:  # type: ignore[no-untyped-def]
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}
    reply = post(gateway, "/v1/chat/completions", big)
    assert reply.status_code == 413 and "1 MB" in openai_error(reply)["message"]
    reply = post(gateway, "/v1/messages", {**MESSAGE, "system": "y" * (2 * 1024 * 1024)})
    assert reply.status_code == 413 and anthropic_error(reply)["type"] == "request_too_large"


def test_bad_attribution_headers_name_the_header(gateway) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "x-meterline-agent-step": "three",
        "x-meterline-user": "u" * 300,
        "traceparent": "not-a-traceparent",
        "x-meterline-featur": "typo",
        "x-meterline-property-" + "n" * 70: "v",
    }
    for header, value in cases.items():
        reply = post(gateway, "/v1/chat/completions", CHAT, **{header: value})
        assert reply.status_code == 400, header
        assert header.lower() in openai_error(reply)["message"].lower(), header


def test_upstream_errors_pass_through_and_are_metered(gateway) -> None:  # type: ignore[no-untyped-def]
    cases = [
        ("rate_limit", 429, "rate_limit"),
        ("server_error", 500, "server_error"),
        ("context_length", 400, "context_length"),
        ("auth", 401, "auth"),
    ]
    for fault, status, error_class in cases:
        reply = post(gateway, "/v1/chat/completions", CHAT, **{"x-mock-fault": fault})
        assert reply.status_code == status, fault
        openai_error(reply)
        (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
        assert (event["status_code"], event["error_class"]) == (status, error_class)
        assert event["input_tokens"] == 0 and event["cost_usd"] == 0
    reply = post(gateway, "/v1/messages", MESSAGE, **{"x-mock-fault": "overloaded"})
    assert reply.status_code == 529 and anthropic_error(reply)["type"] == "overloaded_error"
    (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
    assert event["error_class"] == "server_error"
    assert reply.headers.get("retry-after") is None or reply.headers["retry-after"]


def test_upstream_garbage_is_502(gateway) -> None:  # type: ignore[no-untyped-def]
    for fault in ("malformed", "truncated"):
        reply = post(gateway, "/v1/chat/completions", CHAT, **{"x-mock-fault": fault})
        assert reply.status_code == 502, fault
        assert "provider 'openai'" in openai_error(reply)["message"]
        (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
        assert event["error_class"] == "invalid_response"


def test_stream_cut_off_upstream_is_metered_with_estimates(gateway) -> None:  # type: ignore[no-untyped-def]
    body = {**CHAT, "stream": True}
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json=body,
        headers=gateway.headers(**{"x-mock-fault": "disconnect"}),
        timeout=30,
    ) as reply:
        text = reply.read().decode()
        request_id = reply.headers["x-meterline-request-id"]
    assert '"error"' in text and "[DONE]" not in text
    (event,) = gateway.events(request_id=request_id)
    assert event["usage_source"] == "estimated"
    assert event["usage_estimator"]
    assert event["input_tokens"] > 0
    assert event["error_class"] in ("network", "invalid_response")
    with pytest.raises(openai.APIError):
        list(
            gateway.openai().chat.completions.create(
                **{**CHAT, "stream": True}, extra_headers={"x-mock-fault": "disconnect"}
            )
        )


@pytest.mark.parametrize(("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGE)])
def test_garbage_in_a_stream_ends_it_with_an_error(gateway, path: str, body: dict) -> None:  # type: ignore[no-untyped-def]
    headers = gateway.headers(**{"x-mock-fault": "malformed"})
    with httpx.stream("POST", gateway.url + path, json={**body, "stream": True}, headers=headers, timeout=30) as reply:
        text = reply.read().decode()
        request_id = reply.headers["x-meterline-request-id"]
    assert "not JSON" in text.split("\n\n")[-2]  # the last event tells the client what went wrong
    (event,) = gateway.events(request_id=request_id)
    assert event["error_class"] == "invalid_response" and event["usage_source"] == "estimated"


def test_anthropic_stream_cut_off_keeps_provider_input_tokens(gateway) -> None:  # type: ignore[no-untyped-def]
    with httpx.stream(
        "POST",
        gateway.url + "/v1/messages",
        json={**MESSAGE, "stream": True},
        headers=gateway.headers(**{"x-mock-fault": "disconnect", "x-meterline-feature": "cut-anthropic"}),
        timeout=30,
    ) as reply:
        text = reply.read().decode()
    assert "event: error" in text
    (event,) = gateway.events(feature="cut-anthropic")
    assert event["usage_source"] == "estimated"
    assert event["input_tokens"] > 0 and event["output_tokens"] > 0


def test_client_disconnect_mid_stream_still_records_an_event(gateway) -> None:  # type: ignore[no-untyped-def]
    body = {**CHAT, "stream": True}
    headers = gateway.headers(**{"x-mock-output-tokens": "400", "x-meterline-feature": "walked-away"})
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body, headers=headers, timeout=30) as reply:
        for _ in reply.iter_bytes():
            break  # read one chunk, then hang up
    (event,) = gateway.events(feature="walked-away", timeout_s=20)
    assert event["streaming"] is True
    assert event["input_tokens"] > 0


def test_unreachable_upstream_is_502_and_timeout_is_504(make_gateway, mock_provider) -> None:  # type: ignore[no-untyped-def]
    dead_port = free_port()
    gateway = make_gateway(
        extra_providers=(
            f"  dead: {{kind: openai, base_url: http://127.0.0.1:{dead_port}/v1, api_key: k}}\n"
            f"  slow: {{kind: openai, base_url: {mock_provider.url}/v1, api_key: k,"
            " timeout: {first_byte_s: 0.5, total_s: 5}}"
        ),
        extra_models="  - {name: dead-model, provider: dead}\n  - {name: slow-model, provider: slow}",
    )
    reply = post(gateway, "/v1/chat/completions", {**CHAT, "model": "dead-model"})
    assert reply.status_code == 502 and "could not be reached" in openai_error(reply)["message"]
    (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
    assert event["error_class"] == "network"
    reply = post(
        gateway,
        "/v1/chat/completions",
        {**CHAT, "model": "slow-model"},
        **{"x-mock-fault": "timeout", "x-mock-timeout-s": "3"},
    )
    assert reply.status_code == 504
    (event,) = gateway.events(request_id=reply.headers["x-meterline-request-id"])
    assert event["error_class"] == "timeout"


def test_server_survives_a_slow_loris_and_keeps_serving(gateway) -> None:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        reply = post(gateway, "/v1/chat/completions", CHAT)
        assert reply.status_code == 200


def test_meterline_headers_and_client_key_are_not_forwarded(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    reply = post(gateway, "/v1/chat/completions", CHAT, **{"x-meterline-user": "bob", "x-custom-trace": "kept"})
    assert reply.status_code == 200
    (received,) = [r for r in mock_requests() if r["path"] == "/v1/chat/completions"]
    headers = {name.lower(): value for name, value in received["headers"].items()}
    assert headers["authorization"] == "Bearer provider-openai-secret"
    assert not any(name.startswith("x-meterline-") for name in headers)
    assert headers["x-custom-trace"] == "kept"
    assert MASTER_KEY not in json.dumps(received)


def test_cookies_a_provider_sets_are_not_sent_on_later_calls(make_gateway, mock_provider, mock_requests) -> None:  # type: ignore[no-untyped-def]
    # reached by host name: a cookie jar would keep a cookie of a named host (not of a bare IP address)
    by_name = mock_provider.url.replace("127.0.0.1", "localhost")
    gateway = make_gateway(
        extra_providers=f"  named: {{kind: openai, base_url: {by_name}/v1, api_key: k}}",
        extra_models="  - {name: named-model, provider: named, upstream_model: gpt-4o-mini}",
    )
    chat = {**CHAT, "model": "named-model"}
    first = post(gateway, "/v1/chat/completions", chat, **{"x-mock-set-cookie": "__cf_bm=caller-one; Path=/"})
    assert first.status_code == 200 and first.headers["set-cookie"].startswith("__cf_bm=caller-one")
    assert post(gateway, "/v1/chat/completions", chat).status_code == 200
    received = [r for r in mock_requests() if r["path"] == "/v1/chat/completions"]
    assert len(received) == 2
    assert not any("cookie" in {name.lower() for name in r["headers"]} for r in received)


def test_stream_asks_upstream_for_usage(gateway, mock_requests) -> None:  # type: ignore[no-untyped-def]
    with httpx.stream(
        "POST", gateway.url + "/v1/chat/completions", json={**CHAT, "stream": True}, headers=gateway.headers()
    ) as r:
        r.read()
    (received,) = [r for r in mock_requests() if r["path"] == "/v1/chat/completions"]
    assert received["body"]["stream_options"] == {"include_usage": True}


def test_concurrent_requests_each_leave_one_event(gateway) -> None:  # type: ignore[no-untyped-def]
    ids: list[str] = []

    def call() -> None:
        reply = post(gateway, "/v1/chat/completions", CHAT, **{"x-meterline-feature": "concurrency"})
        ids.append(reply.headers["x-meterline-request-id"])

    threads = [threading.Thread(target=call) for _ in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = gateway.events(expected=40, feature="concurrency")
    assert sorted(e["request_id"] for e in events) == sorted(ids)
