"""The assembled `meterline serve` process: gateway routes, the JSON API, and the background loader.

This is the one place that wires the packages together (config → providers, pricing, spool,
store, gateway, web); only the CLI imports it.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from meterline.analytics.queries import Analytics
from meterline.config import Config, ConfigError
from meterline.events.loader import SpoolLoader
from meterline.events.spool import SpoolWriter
from meterline.gateway.keys import KeyAuthenticator, KeyStore
from meterline.gateway.metering import Recorder
from meterline.gateway.proxy import Gateway
from meterline.pricing.table import PriceTable
from meterline.providers.base import build_provider
from meterline.store.base import store_for
from meterline.store.control import ControlDB
from meterline.web.analytics_api import AnalyticsApi
from meterline.web.api import Api
from meterline.web.auth import WebAuth
from meterline.web.dashboard import Dashboard
from meterline.web.keys_api import KeysApi


class StartupError(RuntimeError):
    """The server cannot start; the message says what to fix."""


def build_app(config: Config) -> web.Application:
    """The whole server as an aiohttp application; only the control database is opened before it starts."""
    if not config.server.master_key:
        raise ConfigError(
            "server.master_key is not set: set it in the config (e.g. master_key: ${MLINE_MASTER_KEY}) "
            "and export MLINE_MASTER_KEY; clients and the API authenticate with it"
        )
    try:
        providers = {name: build_provider(name, provider) for name, provider in config.providers.items()}
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    price_table = PriceTable.load(
        config.pricing.overrides, {name: provider.pricing_id for name, provider in providers.items()}
    )
    store = store_for(config.store)
    spool = SpoolWriter(config.store.spool_dir)
    loader = SpoolLoader(
        spool,
        store,
        flush_interval_s=config.store.flush_interval_ms / 1000,
        fsync_interval_s=config.store.fsync_interval_ms / 1000,
    )
    keys = KeyStore(ControlDB(config.store.control_path))
    authenticator = KeyAuthenticator(config.server.master_key, keys)
    gateway = Gateway(config, providers, authenticator, Recorder(price_table, spool))
    web_auth = WebAuth(authenticator, config.server.master_key)
    api = Api(store, loader, web_auth, price_table)

    app = web.Application(client_max_size=int(config.server.max_body_mb * 1024 * 1024))
    app.add_routes(gateway.routes())
    app.add_routes(api.routes())
    app.add_routes(AnalyticsApi(Analytics(store, price_table, config.models), web_auth).routes())
    app.add_routes(Dashboard(web_auth).routes())
    app.add_routes(KeysApi(keys, web_auth).routes())

    async def start(_: web.Application) -> None:
        try:
            await loader.open_store()
        except Exception as exc:
            raise StartupError(
                f"cannot open the {config.store.kind} store at {config.store.path}: {exc} "
                "(a DuckDB file admits one writing process: is another `meterline serve` using it?)"
            ) from exc
        await loader.start()
        await gateway.start()

    async def stop(_: web.Application) -> None:
        await gateway.stop()
        await loader.stop()
        await asyncio.to_thread(store.close)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def serve(config: Config) -> None:
    """Run the server until SIGINT/SIGTERM; on shutdown in-flight requests finish and the spool is loaded."""
    app = build_app(config)
    host, port = config.server.host, config.server.port
    web.run_app(
        app,
        host=host,
        port=port,
        access_log=None,
        shutdown_timeout=30,
        print=lambda _: print(f"meterline gateway listening on http://{host}:{port}", flush=True),
        loop=new_event_loop(),
    )


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (it roughly halves per-request overhead), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
