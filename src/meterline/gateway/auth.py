"""Who is calling: turns a request's API key into an `Identity`, behind one small interface.

Clients send their key as `Authorization: Bearer <key>` (OpenAI style) or `x-api-key`
(Anthropic style). At this stage the only accepted key is the server's master key; virtual
keys plug in as another `Authenticator`.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Identity:
    """The caller behind a key, with the attribution defaults and rights the key carries."""

    key_id: str
    is_admin: bool = False
    team: str | None = None
    app: str | None = None
    user: str | None = None
    name: str | None = None
    models: tuple[str, ...] = ()
    """Model name patterns (`fnmatch`, e.g. `claude-*`) the key may call; empty: every model."""
    can_read_team: bool = False
    """A `read:team` key: may read its team's data through the API and dashboard."""
    rpm_limit: int | None = None
    """Requests per minute this key may send (None: no limit)."""
    tpm_limit: int | None = None
    """Tokens per minute (estimated input + output) this key may use (None: no limit)."""


class Authenticator(Protocol):
    def authenticate(self, api_key: str) -> Identity | None:
        """The identity for `api_key`, or None when the key is not valid."""


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or None


class MasterKeyAuthenticator:
    """Accepts only the configured master key (compared in constant time)."""

    def __init__(self, master_key: str | None) -> None:
        self._master_key = master_key.encode() if master_key else None

    def authenticate(self, api_key: str) -> Identity | None:
        if self._master_key is None or not hmac.compare_digest(api_key.encode(), self._master_key):
            return None
        return Identity(key_id="master", is_admin=True)
