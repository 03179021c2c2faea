"""Who is calling: turns a request's API key into an `Identity`, behind one small interface.

Clients send their key as their provider's SDK sends one: `Authorization: Bearer <key>` (OpenAI),
`x-api-key` (Anthropic), `api-key` (Azure OpenAI) or `x-goog-api-key` (Gemini; its `?key=` query
parameter is read by the gateway for Gemini's URLs). The master key and virtual keys are checked
by `meterline.gateway.keys.KeyAuthenticator`.
"""

from __future__ import annotations

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
    max_retries: int | None = None
    """The most retries the gateway makes for this key's calls (None: as configured)."""


class Authenticator(Protocol):
    def authenticate(self, api_key: str) -> Identity | None:
        """The identity for `api_key`, or None when the key is not valid."""


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return headers.get("x-api-key") or headers.get("api-key") or headers.get("x-goog-api-key") or None
