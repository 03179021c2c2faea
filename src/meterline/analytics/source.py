"""Where the CLI reads analytics from: the running server's API, or the store file directly.

A DuckDB file admits one writing process. When `meterline serve` owns the store, CLI commands
ask its JSON API; when no server answers at the configured address, they open the file
read-only and run the same analytics queries in process. Both sources return the same dicts
(the bodies documented in docs/api.md), so commands do not care which one they got.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import httpx

from meterline.analytics.params import Scope
from meterline.analytics.queries import Analytics
from meterline.config import Config
from meterline.pricing.table import PriceTable
from meterline.providers.base import deployment_models, pricing_ids
from meterline.store.base import Store, store_for
from meterline.store.duckdb import DuckDBStore

EVENTS_PAGE = 1000


class AnalyticsSource(Protocol):
    description: str

    def get(self, endpoint: str, params: Mapping[str, str]) -> dict[str, Any]:
        """The body of `GET /api/v1/<endpoint>?<params>`."""

    def close(self) -> None: ...


class SourceError(RuntimeError):
    """The source answered with an error; the message is the API's."""


class ServerSource:
    """Reads through a running server's JSON API with the master key."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.description = f"the server at {base_url}"
        self._client = httpx.Client(
            base_url=base_url + "/api/v1/", headers={"authorization": f"Bearer {api_key}"}, timeout=120
        )

    def get(self, endpoint: str, params: Mapping[str, str]) -> dict[str, Any]:
        reply = self._client.get(endpoint, params=dict(params))
        body = reply.json()
        if reply.status_code != 200:
            raise SourceError(body.get("error", {}).get("message", reply.text))
        return body

    def close(self) -> None:
        self._client.close()


class LocalSource:
    """Opens the store (a DuckDB file read-only, or ClickHouse) and runs the analytics queries in this process."""

    def __init__(self, config: Config) -> None:
        self._store: Store
        if config.store.kind == "duckdb":
            self.description = f"the store file {config.store.path}"
            self._store = DuckDBStore(config.store, read_only=True)
        else:
            self.description = f"the {config.store.kind} store at {config.store.url}"
            self._store = store_for(config.store)
        self._store.open()
        providers = config.providers
        price_table = PriceTable.load(config.pricing.overrides, pricing_ids(providers), deployment_models(providers))
        self._analytics = Analytics(self._store, price_table, config.models)
        self._scope = Scope()

    def get(self, endpoint: str, params: Mapping[str, str]) -> dict[str, Any]:
        try:
            return self._analytics.run(endpoint, params, self._scope)
        except ValueError as exc:
            raise SourceError(str(exc)) from exc

    def close(self) -> None:
        self._store.close()


def server_answers(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def server_url(config: Config) -> str:
    """Where the configured server answers on this machine."""
    host = "127.0.0.1" if config.server.host in ("0.0.0.0", "::") else config.server.host
    return f"http://{host}:{config.server.port}"


def open_source(config: Config) -> AnalyticsSource:
    """The running server's API if one answers at the configured address, else the store file."""
    base_url = server_url(config)
    if server_answers(base_url):
        if not config.server.master_key:
            raise SourceError("a server is running but server.master_key is not set in the config")
        return ServerSource(base_url, config.server.master_key)
    if config.store.kind == "duckdb" and not config.store.path.exists():
        raise SourceError(f"no server answers at {base_url} and there is no store file at {config.store.path}")
    return LocalSource(config)


def iter_events(source: AnalyticsSource, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    """Every event matching `params`, newest first, following the cursor page by page."""
    cursor: str | None = None
    while True:
        page = source.get("events", {**params, "limit": str(EVENTS_PAGE), **({"cursor": cursor} if cursor else {})})
        yield from page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            return
