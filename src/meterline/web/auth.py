"""Who is reading: an API key in the headers, or the dashboard's signed session cookie.

The dashboard logs in with an admin key (`POST /login`); the server answers with a session
cookie that carries the key's id and rights, signed with an HMAC of a secret derived from the
master key, so no server-side session table is needed and a changed master key logs everyone
out; a session opened with a virtual key ends when the key is revoked. Every JSON API handler
asks `WebAuth.reader(request)` for the caller and the `Scope` it may see: everything for admin
keys, one team's data for `read:team` keys. Only admins may change things (`WebAuth.admin`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import orjson
from aiohttp import web

from meterline.analytics.params import Scope
from meterline.gateway.auth import Identity, api_key_from_headers
from meterline.gateway.keys import KeyAuthenticator

SESSION_COOKIE = "meterline_session"
SESSION_SECONDS = 12 * 3600


class Unauthorized(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class WebAuth:
    def __init__(self, authenticator: KeyAuthenticator, master_key: str) -> None:
        self.authenticator = authenticator
        self._secret = hashlib.sha256(b"meterline-session:" + master_key.encode()).digest()

    def session_cookie(self, identity: Identity, now: float | None = None) -> str:
        """A signed cookie value naming `identity`, valid for `SESSION_SECONDS`."""
        payload = {
            "key_id": identity.key_id,
            "admin": identity.is_admin,
            "team": identity.team,
            "read_team": identity.can_read_team,
            "exp": int((now or time.time()) + SESSION_SECONDS),
        }
        body = base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=")
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return hmac.new(self._secret, body.encode(), hashlib.sha256).hexdigest()

    def identity_from_cookie(self, value: str, now: float | None = None) -> Identity | None:
        body, _, signature = value.partition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            payload = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            return None
        if payload.get("exp", 0) < (now or time.time()) or not self.authenticator.is_live(payload["key_id"]):
            return None
        return Identity(
            key_id=payload["key_id"],
            is_admin=bool(payload["admin"]),
            team=payload.get("team"),
            can_read_team=bool(payload.get("read_team")),
        )

    def identity(self, request: web.Request) -> Identity | None:
        """The caller by API key header, else by session cookie; None when neither is valid."""
        api_key = api_key_from_headers(request.headers)
        if api_key is not None:
            return self.authenticator.authenticate(api_key)
        cookie = request.cookies.get(SESSION_COOKIE)
        return self.identity_from_cookie(cookie) if cookie else None

    def reader(self, request: web.Request) -> tuple[Identity, Scope]:
        """The caller and the data it may read; raises `Unauthorized` (401/403) otherwise."""
        identity = self.identity(request)
        if identity is None:
            raise Unauthorized(
                401, "this API needs an admin or read:team key: send 'Authorization: Bearer <key>' or log in"
            )
        if identity.is_admin:
            return identity, Scope(team=None)
        if identity.can_read_team and identity.team:
            return identity, Scope(team=identity.team)
        raise Unauthorized(403, "this key may call models but not read data; use an admin or read:team key")

    def admin(self, request: web.Request) -> Identity:
        """The caller if it holds an admin key; raises `Unauthorized` (401/403) otherwise."""
        identity, _ = self.reader(request)
        if not identity.is_admin:
            raise Unauthorized(403, "only the master key may do this; read:team keys can only read")
        return identity

    def may_read(self, identity: Identity) -> bool:
        """Whether `identity` may open the dashboard and read through the API."""
        return identity.is_admin or (identity.can_read_team and identity.team is not None)
