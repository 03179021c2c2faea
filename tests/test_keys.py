"""Virtual keys end to end: created by CLI and API, stored hashed, enforced by the gateway, revoked at once.

Also team isolation: a `read:team` key sees only its team's data through the API and the dashboard.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from meterline.gateway.keys import KeySpec, KeyStore
from meterline.store.control import ControlDB
from tests.conftest import MASTER_KEY, GatewayService

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}


def create_key(gateway: GatewayService, **fields: Any) -> dict[str, Any]:
    reply = httpx.post(gateway.url + "/api/v1/keys", headers=gateway.headers(), json=fields)
    assert reply.status_code == 201, reply.text
    return reply.json()


def chat(gateway: GatewayService, key: str, **headers: str) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}", **headers}, json=CHAT
    )


@pytest.fixture(scope="module")
def gateway(make_gateway) -> GatewayService:  # type: ignore[no-untyped-def]
    return make_gateway()


def test_cli_creates_lists_and_revokes_keys_stored_hashed(gateway: GatewayService) -> None:
    created = gateway.cli(
        "keys",
        "create",
        "--name",
        "cli-app",
        "--team",
        "search",
        "--models",
        "gpt-4o-mini,claude-*",
        "--expires",
        "30d",
    )
    assert created.returncode == 0, created.stderr
    key = next(word for word in created.stdout.split() if word.startswith("mlk-"))

    reply = chat(gateway, key, **{"x-meterline-feature": "cli-made"})
    assert reply.status_code == 200, reply.text
    (event,) = gateway.events(expected=1, feature="cli-made")
    assert event["team"] == "search" and event["key_id"].startswith("key_")

    listed = gateway.cli("keys", "list", "--json")
    assert listed.returncode == 0 and key not in listed.stdout
    assert '"status": "active"' in listed.stdout and '"key_prefix": "' + key[:10] in listed.stdout
    control = sqlite3.connect(gateway.data_dir / "control.sqlite").execute("SELECT * FROM virtual_keys").fetchall()
    assert key not in repr(control)

    revoked = gateway.cli("keys", "revoke", "cli-app")
    assert revoked.returncode == 0, revoked.stderr
    refused = chat(gateway, key)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"

    duplicate = gateway.cli("keys", "create", "--name", "cli-app")
    assert duplicate.returncode != 0 and "exists already" in duplicate.stderr


def test_key_attribution_is_a_default_that_headers_refine_but_never_contradict(gateway: GatewayService) -> None:
    key = create_key(gateway, name="search-app", team="search", app="search-web", user="svc-search")["key"]
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)

    client.chat.completions.create(**CHAT, extra_headers={"x-meterline-feature": "autocomplete"})
    (event,) = gateway.events(expected=1, feature="autocomplete")
    assert (event["team"], event["app"], event["user"]) == ("search", "search-web", "svc-search")

    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(**CHAT, extra_headers={"x-meterline-team": "ads"})
    error = refused.value.body
    assert error["code"] == "attribution_conflict" and error["param"] == "x-meterline-team"  # type: ignore[index]
    assert "'ads'" in error["message"] and "'search'" in error["message"]  # type: ignore[index]

    with pytest.raises(openai.PermissionDeniedError, match="user field"):
        client.chat.completions.create(**CHAT, user="someone-else")
    client.chat.completions.create(**CHAT, user="svc-search", extra_headers={"x-meterline-team": "search"})


def test_a_key_limited_to_some_models_gets_403_listing_them(gateway: GatewayService) -> None:
    key = create_key(gateway, name="haiku-only", models=["claude-haiku-*", "fast"])["key"]
    assert chat(gateway, key).status_code == 403
    body = chat(gateway, key).json()["error"]
    assert body["code"] == "model_not_allowed" and "claude-haiku-*, fast" in body["message"]
    allowed = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {key}"},
        json={**CHAT, "model": "fast"},
    )
    assert allowed.status_code == 200


def test_revoking_through_the_api_takes_effect_on_the_next_request(gateway: GatewayService) -> None:
    created = create_key(gateway, name="short-lived")
    assert chat(gateway, created["key"]).status_code == 200
    reply = httpx.delete(gateway.url + f"/api/v1/keys/{created['key_id']}", headers=gateway.headers())
    assert reply.status_code == 200 and reply.json()["status"] == "revoked"
    assert chat(gateway, created["key"]).status_code == 401
    assert httpx.delete(gateway.url + "/api/v1/keys/nope", headers=gateway.headers()).status_code == 404


def test_an_expired_key_is_refused(gateway: GatewayService) -> None:
    keys = KeyStore(ControlDB(gateway.data_dir / "control.sqlite"))
    key, _ = keys.create(KeySpec(name="expired", expires="1h"), now=datetime.now(UTC) - timedelta(hours=2))
    assert chat(gateway, key).status_code == 401
    listed = httpx.get(gateway.url + "/api/v1/keys", headers=gateway.headers()).json()["data"]
    assert next(item for item in listed if item["name"] == "expired")["status"] == "expired"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "name"),
        ({"name": "bad name!"}, "name"),
        ({"name": "x", "team": 7}, "team"),
        ({"name": "x", "modles": ["gpt-4o"]}, "modles"),
        ({"name": "x", "expires": "tomorrow"}, "expires"),
        ({"name": "x", "scope": "read:team"}, "team"),
        ({"name": "x", "rpm_limit": 0}, "rpm_limit"),
        ({"name": "x", "max_retries": 11}, "max_retries"),
    ],
)
def test_bad_key_requests_are_400_naming_the_field(gateway: GatewayService, body: dict[str, Any], field: str) -> None:
    reply = httpx.post(gateway.url + "/api/v1/keys", headers=gateway.headers(), json=body)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == field, reply.text


def test_team_read_keys_see_only_their_team(gateway: GatewayService) -> None:
    search = create_key(gateway, name="search-caller", team="search")["key"]
    ads = create_key(gateway, name="ads-caller", team="ads")["key"]
    reader = create_key(gateway, name="search-reader", team="search", scope="read:team")["key"]
    for key, feature in ((search, "iso-search"), (ads, "iso-ads"), (ads, "iso-ads")):
        assert chat(gateway, key, **{"x-meterline-feature": feature}).status_code == 200
    ads_event = gateway.events(expected=2, feature="iso-ads")[0]
    gateway.events(expected=1, feature="iso-search")

    def read(path: str, key: str = reader, **params: str) -> httpx.Response:
        return httpx.get(gateway.url + path, params=params, headers={"authorization": f"Bearer {key}"})

    teams = {row["team"] for row in read("/api/v1/spend", group_by="team").json()["rows"]}
    assert teams == {"search"}
    assert read("/api/v1/spend", **{"filter[team]": "ads"}).json()["totals"]["attempts"] == 0
    assert {event["team"] for event in read("/api/v1/events", limit="1000").json()["data"]} == {"search"}
    assert read("/api/v1/events", team="ads").json()["data"] == []
    assert read(f"/api/v1/requests/{ads_event['request_id']}").status_code == 404
    assert read(f"/api/v1/requests/{ads_event['request_id']}", key=MASTER_KEY).status_code == 200

    assert read("/api/v1/spend", key=search).status_code == 403
    assert read("/api/v1/keys").status_code == 403
    created = httpx.post(
        gateway.url + "/api/v1/keys", headers={"authorization": f"Bearer {reader}"}, json={"name": "sneaky"}
    )
    assert created.status_code == 403


def test_provider_keys_never_leave_the_gateway(gateway: GatewayService) -> None:
    key = create_key(gateway, name="leak-check")["key"]
    replies = [
        chat(gateway, key),
        chat(gateway, key, **{"x-meterline-team": "x" * 300}),
        httpx.post(gateway.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, content=b"{"),
        httpx.get(gateway.url + "/api/v1/keys", headers=gateway.headers()),
        httpx.get(gateway.url + "/api/v1/events", params={"limit": "1000"}, headers=gateway.headers()),
    ]
    seen = "".join(reply.text + repr(reply.headers) for reply in replies) + gateway.log_text()
    assert "provider-openai-secret" not in seen and "provider-anthropic-secret" not in seen
