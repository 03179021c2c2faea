"""Virtual keys: the keys applications use instead of provider keys, kept hashed in the control database.

A key is `mlk-` followed by 32 random URL-safe characters (192 bits), shown once when it is
created. Only its SHA-256 is stored (a fast hash is right for random secrets of this length; a
slow password hash would only add latency to every call), with a short prefix to recognise it
in listings. A key carries default attribution (team, app, user), the models it may call, an
optional expiry, rate limits, the most retries the gateway makes for it, and whether it may read
its team's data.

`KeyAuthenticator` answers the gateway and the web API: the master key (admin), else a live
virtual key. It keeps the keys in memory and reloads them on the first request after anything
was committed to the control database, so a revocation — from the CLI, the API or another
worker — takes effect on the next request.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import orjson

from meterline.config import MAX_RETRIES
from meterline.gateway.auth import Identity
from meterline.store.control import ControlDB

KEY_PREFIX = "mlk-"
MASTER_KEY_ID = "master"
READ_TEAM_SCOPE = "read:team"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SPAN = re.compile(r"^(\d+)([hdw])$")
_SPAN_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}

_TABLES = (
    """CREATE TABLE IF NOT EXISTS virtual_keys (
        key_id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        key_hash TEXT NOT NULL UNIQUE,
        key_prefix TEXT NOT NULL,
        team TEXT, app TEXT, user TEXT,
        models TEXT NOT NULL DEFAULT '[]',
        scope TEXT,
        rpm_limit INTEGER, tpm_limit INTEGER,
        created_at TEXT NOT NULL,
        expires_at TEXT,
        revoked_at TEXT
    )""",
)
# columns added after the table's first version, with their SQL types
_ADDED_COLUMNS = {"max_retries": "INTEGER"}


class KeyStoreError(ValueError):
    """A key cannot be created or found; the message says why. `field` names the bad input."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class KeySpec(msgspec.Struct, forbid_unknown_fields=True):
    """What a new key carries; `validate` checks it and raises `KeyStoreError` naming the field."""

    name: str
    team: str | None = None
    app: str | None = None
    user: str | None = None
    models: list[str] = []
    expires: str | None = None
    """A span from now (`30d`, `12h`, `2w`) or an ISO time with a timezone."""
    scope: str | None = None
    """None (may call models) or `read:team` (may also read its team's data)."""
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_retries: int | None = None
    """The most retries the gateway makes for this key's calls (None: as configured; 0: none)."""

    def validate(self, now: datetime) -> datetime | None:
        """Raise `KeyStoreError` for a bad field; return the expiry time."""
        if not _NAME.match(self.name):
            raise KeyStoreError(
                "name must be 1-64 letters, digits, '.', '_' or '-', starting with one of the first two", "name"
            )
        for name in ("team", "app", "user"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and 0 < len(value) <= 256):
                raise KeyStoreError(f"{name} must be a non-empty string of at most 256 characters", name)
        if not all(isinstance(model, str) and model for model in self.models):
            raise KeyStoreError("models must be a list of model names or patterns such as 'claude-*'", "models")
        if self.scope not in (None, READ_TEAM_SCOPE):
            raise KeyStoreError(f"scope must be '{READ_TEAM_SCOPE}' or left out", "scope")
        if self.scope == READ_TEAM_SCOPE and not self.team:
            raise KeyStoreError(f"a '{READ_TEAM_SCOPE}' key needs a team", "team")
        for name in ("rpm_limit", "tpm_limit"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise KeyStoreError(f"{name} must be a positive integer", name)
        retries = self.max_retries
        if retries is not None and (isinstance(retries, bool) or not 0 <= retries <= MAX_RETRIES):
            raise KeyStoreError(f"max_retries must be a whole number from 0 to {MAX_RETRIES}", "max_retries")
        return expiry(self.expires, now)


def expiry(expires: str | None, now: datetime) -> datetime | None:
    """The expiry time of `expires`: a span from `now` (`30d`, `12h`, `2w`) or an ISO time with a timezone."""
    if expires is None:
        return None
    span = _SPAN.match(expires)
    if span:
        return now + int(span.group(1)) * _SPAN_UNITS[span.group(2)]
    try:
        moment = datetime.fromisoformat(expires.replace("Z", "+00:00"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise KeyStoreError("expires must be a span such as 30d, 12h or 2w, or an ISO time with a timezone", "expires")
    if moment <= now:
        raise KeyStoreError("expires is in the past", "expires")
    return moment


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyRecord:
    """A stored key as listings show it (never the key itself)."""

    key_id: str
    name: str
    key_prefix: str
    team: str | None
    app: str | None
    user: str | None
    models: list[str]
    scope: str | None
    rpm_limit: int | None
    tpm_limit: int | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None
    max_retries: int | None = None

    def status(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and datetime.fromisoformat(self.expires_at) <= now:
            return "expired"
        return "active"

    def listing(self, now: datetime) -> dict[str, Any]:
        return {**self.__dict__, "status": self.status(now)}

    def identity(self) -> Identity:
        return Identity(
            key_id=self.key_id,
            name=self.name,
            team=self.team,
            app=self.app,
            user=self.user,
            models=tuple(self.models),
            can_read_team=self.scope == READ_TEAM_SCOPE,
            rpm_limit=self.rpm_limit,
            tpm_limit=self.tpm_limit,
            max_retries=self.max_retries,
        )


class KeyStore:
    """Creates, lists and revokes virtual keys in the control database."""

    def __init__(self, db: ControlDB) -> None:
        self.db = db
        db.ensure(*_TABLES)
        db.ensure_columns("virtual_keys", _ADDED_COLUMNS)

    def create(self, spec: KeySpec, now: datetime | None = None) -> tuple[str, KeyRecord]:
        """A new key and its record; the key is returned only here."""
        now = now or datetime.now(UTC)
        expires_at = spec.validate(now)
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        key_id = "key_" + secrets.token_hex(6)
        values = {
            "key_id": key_id,
            "name": spec.name,
            "key_hash": hash_key(key),
            "key_prefix": key[:10],
            "team": spec.team,
            "app": spec.app,
            "user": spec.user,
            "models": orjson.dumps(spec.models).decode(),
            "scope": spec.scope,
            "rpm_limit": spec.rpm_limit,
            "tpm_limit": spec.tpm_limit,
            "max_retries": spec.max_retries,
            "created_at": now.isoformat(timespec="seconds"),
            "expires_at": None if expires_at is None else expires_at.isoformat(timespec="seconds"),
        }
        with self.db.transaction() as connection:
            if connection.execute("SELECT 1 FROM virtual_keys WHERE name = ?", (spec.name,)).fetchone():
                raise KeyStoreError(f"a key named '{spec.name}' exists already; names are unique", "name")
            columns = ", ".join(values)
            connection.execute(
                f"INSERT INTO virtual_keys ({columns}) VALUES ({', '.join(':' + name for name in values)})", values
            )
        return key, self.get(key_id)

    def records(self) -> list[KeyRecord]:
        return [_record(row) for row in self.db.rows("SELECT * FROM virtual_keys ORDER BY created_at, name")]

    def get(self, key_id_or_name: str) -> KeyRecord:
        rows = self.db.rows("SELECT * FROM virtual_keys WHERE key_id = ? OR name = ?", (key_id_or_name, key_id_or_name))
        if not rows:
            raise KeyStoreError(f"no key with id or name '{key_id_or_name}'")
        return _record(rows[0])

    def revoke(self, key_id_or_name: str, now: datetime | None = None) -> KeyRecord:
        """Revoke a key (idempotent); it stops working on the next request in every process."""
        record = self.get(key_id_or_name)
        if record.revoked_at is None:
            with self.db.transaction() as connection:
                connection.execute(
                    "UPDATE virtual_keys SET revoked_at = ? WHERE key_id = ?",
                    ((now or datetime.now(UTC)).isoformat(timespec="seconds"), record.key_id),
                )
        return self.get(record.key_id)

    def live_by_hash(self) -> dict[str, tuple[Identity, datetime | None]]:
        """Every unrevoked key's identity and expiry, by key hash."""
        rows = self.db.rows("SELECT * FROM virtual_keys WHERE revoked_at IS NULL")
        return {
            row["key_hash"]: (
                _record(row).identity(),
                None if row["expires_at"] is None else datetime.fromisoformat(row["expires_at"]),
            )
            for row in rows
        }


def _record(row: object) -> KeyRecord:
    values = dict(row)  # type: ignore[call-overload]
    values.pop("key_hash")
    values["models"] = orjson.loads(values["models"])
    return KeyRecord(**values)


def model_allowed(identity: Identity, model: str) -> bool:
    return not identity.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in identity.models)


class KeyAuthenticator:
    """The master key (admin) or a live virtual key; keys are cached and reloaded after any change."""

    def __init__(self, master_key: str, keys: KeyStore) -> None:
        self._master_key = master_key.encode()
        self.keys = keys
        self._live: dict[str, tuple[Identity, datetime | None]] = {}

    def authenticate(self, api_key: str) -> Identity | None:
        if hmac.compare_digest(api_key.encode(), self._master_key):
            return Identity(key_id=MASTER_KEY_ID, is_admin=True)
        if not api_key.startswith(KEY_PREFIX):
            return None
        found = self._live_keys().get(hash_key(api_key))
        if found is None:
            return None
        identity, expires_at = found
        if expires_at is not None and expires_at <= datetime.now(UTC):
            return None
        return identity

    def is_live(self, key_id: str) -> bool:
        """Whether the key with this id still works (for sessions opened with it)."""
        if key_id == MASTER_KEY_ID:
            return True
        now = datetime.now(UTC)
        return any(
            identity.key_id == key_id and (expires_at is None or expires_at > now)
            for identity, expires_at in self._live_keys().values()
        )

    def _live_keys(self) -> dict[str, tuple[Identity, datetime | None]]:
        """The cached live keys by hash, reloaded first if the control database changed."""
        if self.keys.db.changed():
            self._live = self.keys.live_by_hash()
        return self._live
