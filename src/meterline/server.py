"""The assembled `meterline serve` process: gateway routes, the JSON API, and the background loader.

This is the one place that wires the packages together (config → providers, pricing, spool,
store, gateway, web); only the CLI imports it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from meterline.alerts.engine import AlertLoop, Detector, dashboard_url
from meterline.alerts.notices import NoticeBoard, utc_now
from meterline.alerts.notifiers import build_notifiers
from meterline.analytics.queries import Analytics
from meterline.budgets.counters import CountersUnavailable, counters_for
from meterline.budgets.guard import SpendGuard
from meterline.budgets.rules import budget_problem
from meterline.budgets.store import BudgetStore
from meterline.cache.semantic import SemanticUnavailable
from meterline.cache.service import ResponseCache
from meterline.config import Config, ConfigError
from meterline.events.loader import SpoolLoader
from meterline.events.spool import SpoolWriter
from meterline.gateway.auth import Authenticator
from meterline.gateway.batch_registry import BatchRegistry
from meterline.gateway.batches import BatchGateway
from meterline.gateway.caching import GatewayCache
from meterline.gateway.clock import Clock
from meterline.gateway.keys import KeyAuthenticator, KeyStore
from meterline.gateway.metering import CallObserver, Recorder
from meterline.gateway.proxy import COST_HEADER, OPENAI, REQUEST_ID_HEADER, Gateway
from meterline.otel import OTEL_EXTRA_HINT
from meterline.otel.names import EXPORTED_PROVIDER
from meterline.otel.prometheus import GatewayMetrics
from meterline.otel.recent import RecentGatewayCalls
from meterline.pricing.table import PriceTable
from meterline.providers.base import ProviderFamily, build_provider, deployment_models
from meterline.store.base import Store, StoreUnavailable, store_for
from meterline.store.control import ControlDB
from meterline.web.alerts_api import AlertsApi
from meterline.web.analytics_api import AnalyticsApi
from meterline.web.api import Api, api_error, health
from meterline.web.auth import WebAuth
from meterline.web.budgets_api import BudgetsApi
from meterline.web.dashboard import Dashboard
from meterline.web.forward import PrimaryForwarder
from meterline.web.keys_api import KeysApi
from meterline.web.notices_api import NoticesApi
from meterline.web.providers_api import ProvidersApi

log = logging.getLogger("meterline.server")

if TYPE_CHECKING:
    from meterline.otel.pipeline import ExportPipeline
    from meterline.otel.receiver import TraceReceiver


class StartupError(RuntimeError):
    """The server cannot start; the message says what to fix."""


@dataclass(frozen=True)
class WorkerRole:
    """This process's place under `meterline serve --workers N`; worker 0 owns the store."""

    index: int
    primary_port: int
    """Worker 0's internal port on 127.0.0.1, where the others forward API and dashboard requests."""

    @property
    def owns_store(self) -> bool:
        return self.index == 0


def build_app(config: Config, role: WorkerRole | None = None, clock: Clock | None = None) -> web.Application:
    """The whole server as an aiohttp application; only the control database is opened before it starts.

    Alone (`role` None) or as worker 0 it serves everything, and evaluates the alert rules every
    `alerts.interval_s`; another worker proxies LLM calls and forwards the rest to worker 0 (see
    `meterline.web.forward`). `clock` times retries and circuit breakers (tests pass one whose
    waits return at once).
    """
    if not config.server.master_key:
        raise ConfigError(
            "server.master_key is not set: set it in the config (e.g. master_key: ${MLINE_MASTER_KEY}) "
            "and export MLINE_MASTER_KEY; clients and the API authenticate with it"
        )
    try:
        providers = {name: build_provider(name, provider) for name, provider in config.providers.items()}
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    pricing_ids = {name: provider.pricing_id for name, provider in providers.items()}
    price_table = PriceTable.load(config.pricing.overrides, pricing_ids, deployment_models(config.providers))
    store = store_for(config.store) if role is None or role.owns_store else None
    spool = SpoolWriter(config.store.spool_dir)
    # with store.loader: external, `meterline ingest` loads the spool; this process only reads the store
    loads_spool = config.store.loader == "embedded"
    loader = SpoolLoader(
        spool,
        store if loads_spool else None,
        flush_interval_s=config.store.flush_interval_ms / 1000,
        fsync_interval_s=config.store.fsync_interval_ms / 1000,
    )
    budgets = config.budgets
    for budget in budgets.budgets:
        problem = budget_problem(budget, config, providers)
        if problem is not None:
            raise ConfigError(f"budgets.budgets ({budget.name!r}): {problem}")
    if role is not None and budgets.backend == "memory" and budgets.declares_limits:
        raise ConfigError(
            "serve --workers would count budgets, quotas and guardrails in each worker apart with "
            "budgets.backend: memory; set budgets.backend: redis (and redis_url) so the workers share them"
        )
    keys = KeyStore(ControlDB(config.store.control_path))
    authenticator = KeyAuthenticator(config.server.master_key, keys)
    alerts = config.alerts
    notices = NoticeBoard(
        ControlDB(config.store.control_path),
        build_notifiers(alerts),
        cooldown=timedelta(minutes=alerts.cooldown_minutes),
        delivery_attempts=alerts.delivery_attempts,
        backoff_s=alerts.delivery_backoff_s,
    )
    guard = SpendGuard(
        config,
        providers,
        price_table,
        counters_for(budgets.backend, budgets.redis_url),
        BudgetStore(ControlDB(config.store.control_path), config, providers),
        notices,
        store,
    )
    metrics = GatewayMetrics()
    exporter = otlp_exporter(config, providers)
    receiver = None if store is None else trace_receiver(config, authenticator, pricing_ids, spool, store, metrics)
    observers: list[CallObserver] = [metrics]
    observers += [] if exporter is None else [exporter]
    observers += [] if receiver is None else [receiver.recent]
    recorder = Recorder(price_table, spool, observers)
    cache = build_cache(config, providers, recorder)
    gateway = Gateway(config, providers, authenticator, recorder, guard, clock, cache)
    batch_registry = BatchRegistry(ControlDB(config.store.control_path))
    # one process polls unfinished batches: the one that owns the store
    batches = BatchGateway(gateway, batch_registry, config.batches, poll=store is not None)
    web_auth = WebAuth(authenticator, config.server.master_key)

    app = web.Application(client_max_size=int(config.server.max_body_mb * 1024 * 1024))
    app.add_routes(gateway.routes())
    app.add_routes(batches.routes())
    forwarder = None
    alert_loop = None
    if store is None:
        assert role is not None
        forwarder = PrimaryForwarder(role.primary_port)
        app.add_routes([web.get("/health", health), forwarder.route()])
    else:
        app.add_routes(Api(store, loader, web_auth, price_table).routes())
        app.add_routes(AnalyticsApi(Analytics(store, price_table, config.models), web_auth).routes())
        app.add_routes(Dashboard(web_auth).routes())
        app.add_routes(KeysApi(keys, web_auth).routes())
        app.add_routes(BudgetsApi(guard, web_auth).routes())
        app.add_routes(NoticesApi(notices, web_auth).routes())
        app.add_routes(ProvidersApi(gateway.breakers, web_auth).routes())
        detector = Detector(store, alerts, dashboard_url(config))
        app.add_routes(AlertsApi(notices.alerts, detector, web_auth, utc_now).routes())
        if alerts.evaluate:
            alert_loop = AlertLoop(detector, notices, alerts.interval_s)
        traces = web.post("/v1/traces", ingest_off) if receiver is None else receiver.route()
        app.add_routes([metrics.route(config.server.metrics_tokens()), traces])
        metrics.watch_loader(loader)
        if exporter is not None:
            metrics.watch(exporter.gauges)

    async def start(_: web.Application) -> None:
        try:
            if loads_spool:
                await loader.open_store()
            elif store is not None:
                await asyncio.to_thread(store.open)
        except StoreUnavailable as exc:  # serve anyway: events wait in the spool, the store is opened when it answers
            log.warning("%s; serving anyway: events wait in the spool and are loaded once the store answers", exc)
        except Exception as exc:
            raise StartupError(f"cannot open the {config.store.kind} store {_store_name(config)}: {exc}") from exc
        await loader.start()
        try:
            await guard.start()  # after the loader has loaded what the spool held, so budgets see all spend
        except CountersUnavailable as exc:
            raise StartupError(f"budgets.backend is {budgets.backend}: {exc}") from exc
        if cache is not None:
            await cache.cache.start()
        await gateway.start()
        await batches.start()
        if exporter is not None:
            exporter.start()
        if receiver is not None:
            await receiver.start()
        if forwarder is not None:
            await forwarder.start()
        if alert_loop is not None:
            alert_loop.start()

    async def stop(_: web.Application) -> None:
        if alert_loop is not None:
            await alert_loop.stop()
        if forwarder is not None:
            await forwarder.stop()
        await batches.stop()
        await gateway.stop()
        if cache is not None:
            await cache.cache.close()
        if receiver is not None:
            await receiver.stop()
        if exporter is not None:
            await asyncio.to_thread(exporter.stop)
        await guard.stop()
        await loader.stop()
        if store is not None:
            await asyncio.to_thread(store.close)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    return app


def build_cache(config: Config, providers: dict[str, ProviderFamily], recorder: Recorder) -> GatewayCache | None:
    """The response cache when `cache.enabled`; a semantic cache needs an OpenAI-style embeddings model and usearch."""
    settings = config.cache
    if not settings.enabled:
        return None
    embedding_model = config.model(settings.semantic.embedding_model or "")
    if embedding_model is not None:
        provider = providers[embedding_model.provider]
        if provider.dialect != OPENAI.name or "embeddings" not in provider.operations:
            raise ConfigError(
                f"cache.semantic.embedding_model: {embedding_model.name!r} is served by provider "
                f"{embedding_model.provider!r} ({provider.kind}), which has no OpenAI-style embeddings endpoint; "
                "name an embeddings model of an openai or openai_compatible provider"
            )
    try:
        cache = ResponseCache(settings)
    except SemanticUnavailable as exc:
        raise ConfigError(str(exc)) from exc
    return GatewayCache(cache, config, recorder, OPENAI, (REQUEST_ID_HEADER, COST_HEADER))


def _store_name(config: Config) -> str:
    if config.store.kind == "duckdb":
        path = config.store.path
        return f"at {path} (a DuckDB file admits one writing process: is another `meterline serve` using it?)"
    return f"at {config.store.url} (database {config.store.database})"


def otlp_exporter(config: Config, providers: dict[str, ProviderFamily]) -> ExportPipeline | None:
    """The OTLP export `otel.export` asks for, or None; `ConfigError` if the otel extra is missing."""
    if not config.otel.export.enabled:
        return None
    try:
        import meterline.otel.export  # noqa: F401  (the exporter process needs the SDK: fail here, not there)
        from meterline.otel.pipeline import ExportPipeline
    except ImportError as exc:
        raise ConfigError(f"otel.export.enabled is true, but {exc.name} is not installed: {OTEL_EXTRA_HINT}") from exc
    urls = {name: provider.config.base_url for name, provider in providers.items()}
    systems = {name: EXPORTED_PROVIDER.get(provider.pricing_id or "", name) for name, provider in providers.items()}
    return ExportPipeline(config.otel.export, urls, systems)


def trace_receiver(
    config: Config,
    authenticator: Authenticator,
    pricing_ids: dict[str, str | None],
    spool: SpoolWriter,
    store: Store,
    metrics: GatewayMetrics,
) -> TraceReceiver | None:
    """The OTLP receiver for `POST /v1/traces` when `otel.ingest` is on; `ConfigError` if the otel extra is missing."""
    ingest = config.otel.ingest
    if not ingest.enabled:
        return None
    try:
        from meterline.otel.ingest import MapperSpec
        from meterline.otel.receiver import TraceReceiver
    except ImportError as exc:
        raise ConfigError(f"otel.ingest.enabled is true, but {exc.name} is not installed: {OTEL_EXTRA_HINT}") from exc
    mapper = MapperSpec(config.pricing.overrides, pricing_ids, tuple(ingest.feature_attributes))
    return TraceReceiver(ingest, authenticator, mapper, spool, store, metrics, RecentGatewayCalls())


async def ingest_off(request: web.Request) -> web.Response:
    return api_error(404, "OTLP ingest is off on this gateway: set otel.ingest.enabled: true in its config")


def serve(config: Config, role: WorkerRole | None = None) -> None:
    """Run the server until SIGINT/SIGTERM; on shutdown in-flight requests finish and the spool is loaded.

    As one of several workers it binds the port with SO_REUSEPORT (the kernel spreads connections
    over the workers), and worker 0 also listens on its internal port.
    """
    app = build_app(config, role)
    app.on_startup.append(freeze_startup_objects)
    host, port = config.server.host, config.server.port
    if role is None:
        listen: dict[str, Any] = {"host": host, "port": port}
        banner = f"meterline gateway listening on http://{host}:{port}"
    else:
        sockets = [_socket(host, port, reuse_port=True)]
        if role.owns_store:
            sockets.append(_socket("127.0.0.1", role.primary_port, reuse_port=False))
        listen = {"sock": sockets}
        banner = f"meterline gateway worker {role.index} listening on http://{host}:{port}"
    web.run_app(
        app,
        **listen,
        access_log=None,
        shutdown_timeout=30,
        print=lambda _: print(banner, flush=True),
        loop=new_event_loop(),
    )


async def freeze_startup_objects(_: web.Application) -> None:
    """Move what start-up built (config, price tables, routes, clients) out of the cyclic GC's reach.

    It lives as long as the process, yet every full collection would walk it: ~120k objects,
    a 40-140 ms pause of the event loop each time. Frozen, a full collection walks only what
    serving allocated since.
    """
    gc.collect()
    gc.freeze()


def _socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    listener.listen(1024)
    listener.setblocking(False)
    return listener


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (it roughly halves per-request overhead), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
