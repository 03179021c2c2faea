"""How the ClickHouse store talks to the engine: run a statement, read Arrow, insert Arrow. Nothing else.

The store builds every statement itself (see `clickhouse` and `clickhouse_sql`), so a
transport is a thin seam with three calls and no SQL of its own besides the INSERT it issues:

- `HttpTransport` reaches a ClickHouse server over HTTP with `clickhouse-connect` (the runtime
  extra `meterline[clickhouse]`); `store.url: http(s)://host:8123`.
- `ChdbTransport` runs the same engine in this process with `chdb`; `store.url: chdb:///folder`.
  It is what the tests run the backend on (no server can be installed here), and it serves a
  single process that wants ClickHouse's engine without a server.

`transport_for(config)` picks one by the URL's scheme.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import pyarrow as pa

from meterline.config import ConfigError, StoreConfig
from meterline.store.base import StoreUnavailable


class TransportError(RuntimeError):
    """The engine refused a statement or could not be reached; the message is the engine's."""


class Transport(Protocol):
    description: str

    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns no rows (DDL, ALTER)."""

    def query_arrow(self, sql: str, settings: Mapping[str, Any] | None = None) -> pa.Table:
        """The rows of one SELECT as Arrow (strings as strings, timestamps with their time zone)."""

    def insert_arrow(self, table: str, data: pa.Table, settings: Mapping[str, Any] | None = None) -> None:
        """Insert an Arrow table whose column names match `table`'s (`table` is `database.name`)."""

    def close(self) -> None: ...


def _settings_clause(settings: Mapping[str, Any] | None) -> str:
    if not settings:
        return ""
    return " SETTINGS " + ", ".join(f"{name} = {_setting_value(value)}" for name, value in settings.items())


def _setting_value(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


class ChdbTransport:
    """ClickHouse's engine in this process (chdb); one session per process, statements serialised."""

    _lock = threading.Lock()  # chdb runs one query at a time per process

    def __init__(self, folder: str) -> None:
        try:
            from chdb import session
        except ImportError as exc:
            raise ConfigError(
                "store.url chdb://... needs the chdb package: pip install chdb (or use an http:// ClickHouse server)"
            ) from exc
        self.description = f"chDB in {folder}"
        self._session = session.Session(folder)

    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        self._run(sql + _settings_clause(settings), "CSV")

    def query_arrow(self, sql: str, settings: Mapping[str, Any] | None = None) -> pa.Table:
        result = self._run(sql + _settings_clause(settings), "ArrowTable")
        assert isinstance(result, pa.Table)
        return result

    def insert_arrow(self, table: str, data: pa.Table, settings: Mapping[str, Any] | None = None) -> None:
        columns = ", ".join(f'"{name}"' for name in data.column_names)
        # chdb's Python() table function reads the Arrow table named `data` from this frame
        self._run(f"INSERT INTO {table} ({columns}){_settings_clause(settings)} SELECT * FROM Python(data)", "CSV")

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def _run(self, sql: str, fmt: str) -> Any:
        with self._lock:
            try:
                return self._session.query(sql, fmt)
            except Exception as exc:  # chdb raises its own RuntimeError subclasses
                raise TransportError(str(exc)) from exc


class HttpTransport:
    """A ClickHouse server over HTTP(S) with clickhouse-connect (its client pools connections and is thread-safe)."""

    def __init__(self, url: str, user: str, password: str) -> None:
        try:
            import clickhouse_connect
        except ImportError as exc:
            raise ConfigError(
                "store.kind clickhouse needs clickhouse-connect: pip install 'meterline[clickhouse]'"
            ) from exc
        parts = urlsplit(url)
        self.description = f"ClickHouse at {parts.scheme}://{parts.hostname}:{parts.port or ''}"
        self._errors: tuple[type[BaseException], ...] = (clickhouse_connect.driver.exceptions.Error,)
        try:
            self._client = clickhouse_connect.get_client(
                interface=parts.scheme,
                host=parts.hostname or "localhost",
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                username=user,
                password=password,
                autogenerate_session_id=False,  # no session: concurrent queries from several threads
                settings={"output_format_arrow_string_as_string": 1},
            )
        except self._errors as exc:
            raise StoreUnavailable(f"ClickHouse does not answer at {url}: {exc}") from exc

    def command(self, sql: str, settings: Mapping[str, Any] | None = None) -> None:
        self._call(self._client.command, sql, settings=dict(settings or {}))

    def query_arrow(self, sql: str, settings: Mapping[str, Any] | None = None) -> pa.Table:
        table: pa.Table = self._call(self._client.query_arrow, sql, settings=dict(settings or {}), use_strings=True)
        return table

    def insert_arrow(self, table: str, data: pa.Table, settings: Mapping[str, Any] | None = None) -> None:
        self._call(self._client.insert_arrow, table, data, settings=dict(settings or {}))

    def close(self) -> None:
        self._client.close()

    def _call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except self._errors as exc:
            raise TransportError(str(exc)) from exc


def transport_for(config: StoreConfig) -> Transport:
    """The transport `store.url` names: http(s):// a server, chdb:///folder the in-process engine."""
    url = config.url or ""
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        return HttpTransport(url, config.user, config.password)
    if scheme == "chdb":
        folder = urlsplit(url).path
        if not folder:
            raise ConfigError(f"store.url {url!r}: name a folder, e.g. chdb:///var/lib/meterline/chdb")
        return ChdbTransport(folder)
    raise ConfigError(f"store.url {url!r}: use http://host:8123, https://host:8443 or chdb:///folder")
