"""The `meterline` command: serve the gateway, run the mock provider or the demo, inspect prices and spend.

Heavy modules are imported inside the commands that use them, so `meterline --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from meterline.config import Config, ConfigError, load_config
from meterline.mock_provider.faults import FAULT_NAMES

if TYPE_CHECKING:
    from meterline.analytics.source import AnalyticsSource
    from meterline.budgets.store import BudgetStore
    from meterline.gateway.keys import KeyStore
    from meterline.pricing.table import PriceTable

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default="meterline.yaml",
    envvar="MLINE_CONFIG",
    show_default=True,
    help="The YAML config file (env: MLINE_CONFIG).",
)


def _load(config_path: Path, required: bool = True) -> Config:
    if not required and not config_path.exists():
        return Config()
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="meterline")
def main() -> None:
    """meterline: an LLM gateway that meters every token.

    \b
    Quick start:
      meterline demo                              # mock provider + gateway + traffic
      meterline serve --config meterline.yaml     # the gateway on 127.0.0.1:4000
      meterline mock-provider --port 4010         # a fake OpenAI+Anthropic upstream
    """


@main.command()
@CONFIG_OPTION
@click.option("--host", help="Listen address (overrides server.host).")
@click.option("--port", type=int, help="Listen port (overrides server.port).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Gateway processes sharing the port (share budgets through budgets.backend: redis).",
)
def serve(config_path: Path, host: str | None, port: int | None, workers: int) -> None:
    """Run the gateway: proxy, meter and store every call.

    \b
    Examples:
      MLINE_MASTER_KEY=sk-admin-123 meterline serve --config meterline.yaml
      meterline serve --config meterline.yaml --host 0.0.0.0 --port 8080
      meterline serve --config meterline.yaml --workers 4

    Point clients at it by changing only their base URL and key, e.g. OpenAI's
    base_url=http://127.0.0.1:4000/v1 or Anthropic's base_url=http://127.0.0.1:4000.
    """
    from meterline.server import StartupError
    from meterline.server import serve as run_server

    config = _load(config_path)
    if workers > 1:
        from meterline.workers import Supervisor

        sys.exit(Supervisor(config_path, workers, host, port).run())
    if host:
        config.server.host = host
    if port:
        config.server.port = port
    try:
        run_server(config)
    except (ConfigError, StartupError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@CONFIG_OPTION
@click.option(
    "--spool-dir",
    "spool_dirs",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="A spool folder to drain (repeatable; default: store.spool_dir).",
)
@click.option("--once", is_flag=True, help="Load what the folders hold now, then exit (exit 1 if the store fails).")
@click.option("--report-every", type=float, default=10, show_default=True, help="Seconds between progress lines.")
def ingest(config_path: Path, spool_dirs: tuple[Path, ...], once: bool, report_every: float) -> None:
    """Drain spool folders into the store, as a process of its own.

    Run gateways with `store.loader: external` and one ingester per machine (or per shared
    spool volume); SIGTERM stops it after a final load.

    \b
    Examples:
      meterline ingest --config meterline.yaml
      meterline ingest --config meterline.yaml --spool-dir /var/spool/meterline/a --spool-dir /var/spool/meterline/b
      meterline ingest --config meterline.yaml --once
    """
    import asyncio

    from meterline.ingest import Ingester, run_until_signalled

    config = _load(config_path)
    try:
        ingester = Ingester(config, list(spool_dirs) or [config.store.spool_dir])
        if once:
            inserted = asyncio.run(ingester.drain_once())
            click.echo(f"loaded {inserted} new event(s); {ingester.pending_bytes} bytes left in the spool")
            return
        asyncio.run(run_until_signalled(ingester, lambda line: click.echo(f"ingest: {line}"), report_every))
    except (ConfigError, RuntimeError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.group()
def store() -> None:
    """Manage the event store (DuckDB file or ClickHouse database)."""


@store.command("migrate")
@CONFIG_OPTION
def store_migrate(config_path: Path) -> None:
    """Create the store's schema, or bring it up to this release's, and apply store.retention_days.

    \b
    Examples:
      meterline store migrate --config meterline.yaml
    """
    from meterline.store.base import store_for

    config = _load(config_path)
    target = config.store.path if config.store.kind == "duckdb" else f"{config.store.url} ({config.store.database})"
    click.echo(f"migrating the {config.store.kind} store at {target} ...")
    try:
        event_store = store_for(config.store)
        event_store.open()
    except (ConfigError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"cannot migrate the {config.store.kind} store at {target}: {exc}") from exc
    try:
        click.echo(f"ok: schema is current; {event_store.count_events()} event(s) stored")
    finally:
        event_store.close()


@main.command("mock-provider")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=4010, show_default=True)
@click.option("--latency-ms", type=float, default=0, show_default=True, help="Fixed delay before each response.")
@click.option("--per-token-ms", type=float, default=0, show_default=True, help="Extra delay per output token.")
@click.option("--output-tokens", type=int, default=16, show_default=True, help="Default reply length in tokens.")
@click.option(
    "--fault",
    type=click.Choice(FAULT_NAMES),
    help="Inject this fault (per request: header x-mock-fault).",
)
@click.option(
    "--fault-rate", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="Share of faulted calls."
)
@click.option("--require-key", help="Refuse requests that do not carry this API key.")
@click.option(
    "--batch-delay-s", type=click.FloatRange(0), default=2.0, show_default=True, help="How long a batch runs."
)
def mock_provider(
    host: str,
    port: int,
    latency_ms: float,
    per_token_ms: float,
    output_tokens: int,
    fault: str | None,
    fault_rate: float,
    require_key: str | None,
    batch_delay_s: float,
) -> None:
    """Run a fake LLM provider speaking the OpenAI, Anthropic, Gemini and Azure OpenAI wire formats.

    Deterministic token counts, configurable latency and fault injection, for demos,
    load tests and CI. Per-request headers: x-mock-fault (with x-mock-fault-times,
    x-mock-fault-key, x-mock-fault-model, x-mock-retry-after, x-mock-timeout-s),
    x-mock-output-tokens, x-mock-prompt-tokens, x-mock-cached-tokens,
    x-mock-cache-write-tokens, x-mock-reasoning-tokens, x-mock-service-tier,
    x-mock-tool-use-prompt-tokens (Gemini), x-mock-model (the model Gemini and Azure
    answers report), x-mock-compat: vllm|deepseek|groq|together|mistral|openrouter (answer
    OpenAI-format calls as that server does); on a batch's create request
    x-mock-batch-delay-s (and the others, applied to each of its requests).

    \b
    Examples:
      meterline mock-provider --port 4010
      meterline mock-provider --port 4010 --latency-ms 50 --per-token-ms 5
      meterline mock-provider --port 4010 --fault rate_limit --fault-rate 0.1
    """
    from meterline.mock_provider.app import run_mock_provider
    from meterline.mock_provider.settings import MockSettings

    settings = MockSettings(
        latency_ms=latency_ms,
        per_token_ms=per_token_ms,
        default_output_tokens=output_tokens,
        fault=fault,
        fault_rate=fault_rate,
        require_key=require_key,
        batch_delay_s=batch_delay_s,
    )
    run_mock_provider(host, port, settings)


@main.command()
@click.option("--port", type=int, default=4000, show_default=True, help="Gateway port.")
@click.option("--mock-port", type=int, default=4010, show_default=True, help="Mock provider port.")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="./meterline-data/demo",
    show_default=True,
    help="Where the demo keeps its config, spool and DuckDB file.",
)
@click.option("--requests", "request_count", type=int, default=300, show_default=True, help="Synthetic calls to send.")
@click.option("--duration", type=float, help="Stop after this many seconds (default: run until Ctrl-C).")
@click.option(
    "--history-days",
    type=click.IntRange(0, 90),
    default=7,
    show_default=True,
    help="Days of simulated history, with the leaks `meterline insights` finds, written into a new demo store "
    "before the gateway starts (0: live traffic only).",
)
def demo(
    port: int, mock_port: int, data_dir: Path, request_count: int, duration: float | None, history_days: int
) -> None:
    """Run the mock provider and the gateway, send synthetic traffic, and show where it went.

    \b
    Examples:
      meterline demo
      meterline demo --requests 1000 --duration 60
      meterline demo --history-days 0
    """
    from meterline.demo import run_demo

    run_demo(
        port=port,
        mock_port=mock_port,
        data_dir=data_dir,
        request_count=request_count,
        duration=duration,
        history_days=history_days,
    )


@main.group()
def prices() -> None:
    """Inspect the price table: bundled genai-prices snapshot plus your overrides."""


def _price_table(config: Config) -> PriceTable:
    from meterline.pricing.table import PriceTable
    from meterline.providers.base import deployment_models, pricing_ids

    try:
        providers = config.providers
        return PriceTable.load(config.pricing.overrides, pricing_ids(providers), deployment_models(providers))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@prices.command("show")
@CONFIG_OPTION
@click.argument("model")
@click.option("--provider", help="Provider name from the config (default: the model's configured provider).")
def prices_show(config_path: Path, model: str, provider: str | None) -> None:
    """Show the prices that apply to MODEL, per period and token kind.

    \b
    Examples:
      meterline prices show gpt-4o-mini
      meterline prices show claude-sonnet-4-5 --provider anthropic
    """
    config = _load(config_path, required=False)
    configured = config.model(model)
    if provider is None and configured is not None:
        provider, model = configured.provider, configured.upstream_name
    click.echo(_price_table(config).describe(provider, model))


@prices.command("check")
@CONFIG_OPTION
def prices_check(config_path: Path) -> None:
    """Check the overrides and that every configured model has a price.

    Unpriced models are listed; their spend is counted as unpriced, never as $0.

    \b
    Example:
      meterline prices check --config meterline.yaml
    """
    config = _load(config_path)
    report = _price_table(config).check([(m.provider, m.upstream_name) for m in config.models])
    for problem in report.problems:
        click.echo(f"problem: {problem}")
    for provider, model in report.unpriced:
        click.echo(f"unpriced: {model} (provider {provider}); add it to the pricing overrides file")
    if not report.ok:
        sys.exit(1)
    click.echo(f"ok: {len(config.models)} configured model(s) priced")


def _source(config_path: Path) -> AnalyticsSource:
    from meterline.analytics.source import SourceError, open_source

    try:
        return open_source(_load(config_path))
    except SourceError as exc:
        raise click.ClickException(str(exc)) from exc


def _fetch(config_path: Path, *calls: tuple[str, dict[str, str]]) -> list[dict[str, Any]]:
    """The bodies of analytics calls (endpoint, parameters), from the running server or else the store."""
    from meterline.analytics.source import SourceError

    source = _source(config_path)
    try:
        return [source.get(endpoint, params) for endpoint, params in calls]
    except SourceError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        source.close()


@main.command()
@CONFIG_OPTION
@click.option(
    "--by", "dimension", default="feature", show_default=True, help="Dimension: feature, user, team, model..."
)
@click.option("--since", default="7d", show_default=True, help="ISO time or a span back from now (24h, 7d, 30d).")
@click.option("--until", help="ISO time (default: now).")
@click.option("--limit", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
def top(config_path: Path, dimension: str, since: str, until: str | None, limit: int, as_json: bool) -> None:
    """Show where the money went: the top spenders of one dimension.

    Reads from the running server when one answers at the configured address, otherwise
    opens the store file read-only.

    \b
    Examples:
      meterline top --by feature --since 7d
      meterline top --by user --since 24h --limit 20 --json
      meterline top --by property.tenant
    """
    from rich.console import Console
    from rich.table import Table

    params = {"by": dimension, "since": since, "limit": str(limit), **({"until": until} if until else {})}
    (result,) = _fetch(config_path, ("top", params))
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"top {dimension} by cost since {since}")
    for column, justify in ((dimension, "left"), ("cost (USD)", "right"), ("share", "right"), ("requests", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in result["rows"]:
        table.add_row(str(row["value"]), f"{row['cost_usd']:,.4f}", f"{row['share']:.1%}", str(row["requests"]))
    unattributed = result["unattributed"]
    table.add_row("(unattributed)", f"{unattributed['cost_usd']:,.4f}", f"{unattributed['share']:.1%}", "")
    Console().print(table)
    click.echo(f"total: ${result['total_cost_usd']:,.4f}")


@main.command()
@CONFIG_OPTION
@click.option("--period", type=click.Choice(["week", "month"]), default="week", show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="./meterline-reports",
    show_default=True,
)
def report(config_path: Path, period: str, out_dir: Path) -> None:
    """Build the weekly (or monthly) review: an HTML report (findings, forecast, spend), showback CSVs per
    team, app and feature, and chargeback per team and app per month as CSV and JSON.

    \b
    Examples:
      meterline report --period week
      meterline report --period month --out ./reports/november
    """
    from rich.progress import Progress

    from meterline.analytics.report import REPORT_STEPS, build_report
    from meterline.analytics.source import SourceError

    source = _source(config_path)
    try:
        with Progress() as progress:
            task = progress.add_task("building the report", total=REPORT_STEPS)

            def step(name: str) -> None:
                progress.update(task, description=name, advance=0 if name == "core views" else 1)

            written = build_report(source, period, out_dir, progress=step)
            progress.update(task, completed=REPORT_STEPS)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        source.close()
    click.echo(f"report:     {written.html}")
    for path in written.csvs:
        click.echo(f"showback:   {path}")
    for path in written.chargeback:
        click.echo(f"chargeback: {path}")


@main.command()
@CONFIG_OPTION
@click.option("--since", default="30d", show_default=True, help="ISO time or a span back from now.")
@click.option("--until", help="ISO time (default: now).")
@click.option(
    "--format", "file_format", type=click.Choice(["csv", "parquet", "jsonl"]), default="csv", show_default=True
)
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Default: events.<format>.")
def export(config_path: Path, since: str, until: str | None, file_format: str, out_path: Path | None) -> None:
    """Export raw events (every field, newest first) as CSV, Parquet or JSON lines.

    \b
    Examples:
      meterline export --since 7d --format parquet --out last-week.parquet
      meterline export --since 2026-11-01T00:00:00Z --until 2026-12-01T00:00:00Z --format csv
    """
    from rich.progress import Progress

    from meterline.analytics.export import write_events
    from meterline.analytics.source import SourceError, iter_events

    source = _source(config_path)
    out_path = out_path or Path(f"events.{file_format}")
    params = {"since": since, **({"until": until} if until else {})}
    try:
        with Progress() as progress:
            task = progress.add_task("exporting events", total=None)
            events = iter_events(source, params)
            count = write_events(events, file_format, out_path, on_batch=lambda count: progress.advance(task, count))
    except SourceError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        source.close()
    click.echo(f"wrote {count} events to {out_path}")


def _usd(value: float | None) -> str:
    return "" if value is None else f"${value:,.2f}"


@main.command()
@CONFIG_OPTION
@click.option("--since", default="7d", show_default=True, help="ISO time or a span back from now (24h, 7d, 30d).")
@click.option("--until", help="ISO time (default: now).")
@click.option("--detector", "detectors", multiple=True, help="Only this detector (repeatable; default: all).")
@click.option("--min-usd", type=float, default=1.0, show_default=True, help="Leave out findings costing less a month.")
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
def insights(
    config_path: Path, since: str, until: str | None, detectors: tuple[str, ...], min_usd: float, as_json: bool
) -> None:
    """Find the waste: retries, uncached system prompts, oversized models, re-embedded inputs, growing
    context, looping agents, unattributed spend and unbounded answers, each priced per month.

    Detectors: retry_amplifier, system_prompt_tax, model_mismatch, embedding_leak, context_growth,
    agent_loops, unattributed_spend, output_bloat. Reads from the running server when one answers
    at the configured address, otherwise opens the store read-only.

    \b
    Examples:
      meterline insights --since 7d
      meterline insights --since 30d --detector system_prompt_tax --detector model_mismatch --json
    """
    from rich import box
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    params = {"since": since, "min_usd": str(min_usd), **({"until": until} if until else {})}
    if detectors:
        params["detector"] = ",".join(detectors)
    (result,) = _fetch(config_path, ("insights", params))
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return
    if not result["findings"]:
        click.echo(f"no findings over ${min_usd:,.2f} a month since {result['since']}")
        return
    table = Table(
        box=box.SIMPLE,
        show_lines=True,
        title=f"{len(result['findings'])} findings, {result['window_days']:.1f} days from {result['since'][:16]} UTC",
        caption=f"$/month: the window's rate over {result['month_days']} days",
    )
    for column, justify in (("$/month", "right"), ("saving", "right"), ("detector", "left"), ("what and fix", "left")):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for finding in result["findings"]:
        where = ", ".join(f"{name} {value}" for name, value in finding["where"].items() if isinstance(value, str))
        text = f"{escape(finding['summary'])}\n[dim]{escape(where)}[/dim]\nfix: {escape(finding['fix'])}"
        if finding["assumptions"]:
            text += f"\n[dim]{escape(finding['assumptions'])}[/dim]"
        table.add_row(_usd(finding["usd_per_month"]), _usd(finding["saving_usd_per_month"]), finding["detector"], text)
    Console(width=160).print(table)
    totals = f"total {_usd(result['total_usd_per_month'])} a month, "
    click.echo(totals + f"estimated saving {_usd(result['total_saving_usd_per_month'])} a month")


@main.command()
@CONFIG_OPTION
@click.option(
    "--invoice",
    "invoices",
    required=True,
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A provider export: OpenAI costs/usage (API JSON or dashboard CSV), Anthropic cost/usage report "
    "(API JSON or CSV). Repeatable, e.g. a cost and a usage export.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def reconcile(config_path: Path, invoices: tuple[Path, ...], as_json: bool) -> None:
    """Compare what meterline metered with what a provider billed, per model and UTC day, and explain the gaps.

    Gaps are put down to traffic that bypassed the gateway (tokens billed but never metered),
    unpriced models, prices that changed since the calls were recorded, or prices that differ
    from the bill (a discount or change missing from the price overrides). Exit status 2 when a
    row does not match.

    \b
    Examples:
      meterline reconcile --invoice openai-costs.csv
      meterline reconcile --invoice anthropic-usage.json --invoice anthropic-cost.json --json
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from meterline.analytics.invoices import InvoiceError, read_invoices
    from meterline.analytics.reconcile import invoice_window
    from meterline.analytics.reconcile import reconcile as line_up
    from meterline.providers.base import pricing_ids

    config = _load(config_path)
    try:
        billed = read_invoices(invoices)
    except InvoiceError as exc:
        raise click.ClickException(str(exc)) from exc
    if not billed:
        raise click.ClickException("the export files hold no billed lines")
    first, after = invoice_window(billed)
    window = {"since": f"{first.isoformat()}T00:00:00Z", "until": f"{after.isoformat()}T00:00:00Z"}
    families = pricing_ids(config.providers)
    recorded, current = _fetch(
        config_path, ("usage/daily", window), ("usage/daily", {**window, "cost_basis": "current"})
    )
    result = line_up(billed, recorded["rows"], current["rows"], lambda provider: families.get(provider, provider))
    if as_json:
        click.echo(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        table = Table(box=box.SIMPLE, title=f"metered vs billed, {result['since']} to {result['until']} (UTC days)")
        for column in ("day", "provider", "model", "metered", "billed", "gap", "tokens metered / billed", "why"):
            table.add_column(column, overflow="fold")
        for row in result["rows"]:
            metered, billed_row = row["metered"] or {}, row["billed"] or {}
            billed_tokens = (
                None
                if billed_row.get("input_tokens") is None
                else billed_row["input_tokens"] + (billed_row.get("output_tokens") or 0)
            )
            tokens = f"{metered.get('tokens', 0):,} / " + ("—" if billed_tokens is None else f"{billed_tokens:,}")
            table.add_row(
                row["day"],
                row["provider"],
                row["model"],
                _usd(metered.get("cost_usd", 0.0)),
                _usd(billed_row.get("cost_usd")),
                _usd(row["gap_usd"]),
                tokens,
                row["explanation"],
            )
        Console(width=180).print(table)
        totals = result["totals"]
        click.echo(
            f"{totals['matched_rows']} of {totals['rows']} rows match; metered {_usd(totals['metered_usd'])}, "
            f"billed {_usd(totals['billed_usd']) or 'n/a (usage export only)'}"
        )
    if result["totals"]["matched_rows"] < result["totals"]["rows"]:
        sys.exit(2)


@main.command()
@CONFIG_OPTION
@click.option("--month", help="A UTC calendar month, YYYY-MM (default: this month so far).")
@click.option("--months", type=click.IntRange(1, 36), default=1, show_default=True, help="Months from --month on.")
@click.option("--by", "dimensions", default="team,app", show_default=True, help="Comma-separated dimensions.")
@click.option("--format", "file_format", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option(
    "--out", "out_path", type=click.Path(dir_okay=False, path_type=Path), help="Default: chargeback-<month>.<format>."
)
def chargeback(
    config_path: Path, month: str | None, months: int, dimensions: str, file_format: str, out_path: Path | None
) -> None:
    """Chargeback: spend per team and app per month with unit economics (per request, per user, per 1k tokens).

    \b
    Examples:
      meterline chargeback --month 2026-03
      meterline chargeback --month 2026-01 --months 3 --by team,app,feature --format json --out q1.json
    """
    from datetime import UTC, datetime

    from meterline.analytics.chargeback import write_chargeback

    try:
        start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC) if month else None
    except ValueError as exc:
        raise click.ClickException(f"--month must be YYYY-MM, e.g. 2026-03; got {month!r}") from exc
    now = datetime.now(UTC)
    start = start or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    index = start.year * 12 + start.month - 1 + months
    end = start.replace(year=index // 12, month=index % 12 + 1)
    params = {"since": start.isoformat(), "until": min(end, now).isoformat(), "group_by": dimensions}
    (body,) = _fetch(config_path, ("chargeback", params))
    path = out_path or Path(f"chargeback-{start:%Y-%m}.{file_format}")
    write_chargeback(body, path, file_format)
    click.echo(f"wrote {len(body['rows'])} rows ({', '.join(body['group_by'])} per month) to {path}")


@main.group()
def keys() -> None:
    """Manage virtual keys: what applications send instead of provider keys.

    Keys live hashed in the control database (store.control_path), so these commands work
    whether or not `meterline serve` is running; a revocation takes effect on the next request.
    """


def _key_store(config_path: Path) -> KeyStore:
    from meterline.gateway.keys import KeyStore
    from meterline.store.control import ControlDB

    return KeyStore(ControlDB(_load(config_path).store.control_path))


@keys.command("create")
@CONFIG_OPTION
@click.option("--name", required=True, help="A unique name, e.g. the application's.")
@click.option("--team", help="Team the key's spend belongs to (headers may not name another).")
@click.option("--app", help="App the key's spend belongs to.")
@click.option("--user", help="User the key's spend belongs to.")
@click.option("--models", help="Comma-separated model names or patterns it may call (default: all).")
@click.option("--expires", help="A span (30d, 12h, 2w) or an ISO time with a timezone.")
@click.option("--scope", type=click.Choice(["read:team"]), help="Also let the key read its team's data.")
@click.option("--rpm", "rpm_limit", type=click.IntRange(min=1), help="Requests per minute it may send.")
@click.option("--tpm", "tpm_limit", type=click.IntRange(min=1), help="Tokens per minute it may use.")
@click.option(
    "--max-retries",
    type=click.IntRange(0, 10),
    help="The most retries the gateway makes for its calls (0: none; default: as configured per model).",
)
def keys_create(
    config_path: Path,
    name: str,
    team: str | None,
    app: str | None,
    user: str | None,
    models: str | None,
    expires: str | None,
    scope: str | None,
    rpm_limit: int | None,
    tpm_limit: int | None,
    max_retries: int | None,
) -> None:
    """Create a key and print it once (only its hash is kept).

    \b
    Examples:
      meterline keys create --name search-app --team search --app search
      meterline keys create --name batch-jobs --team data --models gpt-4o-mini,claude-* --expires 30d
      meterline keys create --name search-dashboard --team search --scope read:team
      meterline keys create --name own-retries --max-retries 0
    """
    from meterline.gateway.keys import KeySpec, KeyStoreError

    spec = KeySpec(
        name=name,
        team=team,
        app=app,
        user=user,
        models=[model.strip() for model in (models or "").split(",") if model.strip()],
        expires=expires,
        scope=scope,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        max_retries=max_retries,
    )
    try:
        key, record = _key_store(config_path).create(spec)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"created key '{record.name}' ({record.key_id}); it is shown only now:\n\n  {key}\n")


@keys.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def keys_list(config_path: Path, as_json: bool) -> None:
    """List keys with their attribution, limits and status (never the keys themselves).

    \b
    Examples:
      meterline keys list
      meterline keys list --json
    """
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    now = datetime.now(UTC)
    listings = [record.listing(now) for record in _key_store(config_path).records()]
    if as_json:
        click.echo(orjson.dumps(listings, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table()
    columns = ("name", "key_id", "key_prefix", "team", "app", "user", "models", "scope", "expires_at", "status")
    for column in columns:
        table.add_column(column)
    for listing in listings:
        shown = {**listing, "models": ",".join(listing["models"]) or "all"}
        table.add_row(*("" if shown[column] is None else str(shown[column]) for column in columns))
    Console().print(table)


@keys.command("revoke")
@CONFIG_OPTION
@click.argument("key")
def keys_revoke(config_path: Path, key: str) -> None:
    """Revoke KEY (its id or name); requests with it fail from the next one on.

    \b
    Example:
      meterline keys revoke search-app
    """
    from meterline.gateway.keys import KeyStoreError

    try:
        record = _key_store(config_path).revoke(key)
    except KeyStoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"revoked key '{record.name}' ({record.key_id}) at {record.revoked_at}")


@main.group()
def budgets() -> None:
    """Budgets: spend limits per key, team, app, user, feature, model or the whole gateway.

    Budgets in the config file are listed as `config`; `set` and `delete` manage budgets kept in
    the control database (store.control_path), whether or not `meterline serve` is running. A
    change applies from the next request on, in every gateway process.
    """


def _budget_store(config: Config) -> BudgetStore:
    from meterline.budgets.store import BudgetStore
    from meterline.providers.base import build_provider
    from meterline.store.control import ControlDB

    providers = {name: build_provider(name, provider) for name, provider in config.providers.items()}
    return BudgetStore(ControlDB(config.store.control_path), config, providers)


@budgets.command("set")
@CONFIG_OPTION
@click.option("--scope", required=True, help="gateway, or key:<id>, team:, app:, user:, feature: or model:<name>.")
@click.option("--period", required=True, type=click.Choice(["hour", "day", "week", "month"]), help="Calendar period.")
@click.option("--limit-usd", type=float, help="Spend limit in USD per period.")
@click.option("--limit-tokens", type=int, help="Limit on input + output tokens per period.")
@click.option(
    "--action",
    "actions",
    multiple=True,
    type=click.Choice(["alert", "throttle", "downgrade", "block"]),
    help="What happens (repeatable; default alert): notify, 429 until reset, serve a cheaper model, 402.",
)
@click.option("--threshold", "thresholds", multiple=True, type=float, help="Alert at this % (repeatable; 80, 100).")
@click.option("--downgrade", "downgrades", multiple=True, help="MODEL=CHEAPER: serve CHEAPER for MODEL when over.")
@click.option("--name", help="Unique name (default: <scope>:<period>); setting an existing name replaces it.")
def budgets_set(
    config_path: Path,
    scope: str,
    period: str,
    limit_usd: float | None,
    limit_tokens: int | None,
    actions: tuple[str, ...],
    thresholds: tuple[float, ...],
    downgrades: tuple[str, ...],
    name: str | None,
) -> None:
    """Create or replace a budget.

    \b
    Examples:
      meterline budgets set --scope team:search --period day --limit-usd 50 --action throttle --action alert
      meterline budgets set --scope gateway --period month --limit-usd 2000 --action alert --threshold 50
      meterline budgets set --scope feature:chat --period day --limit-usd 20 --action downgrade \\
          --downgrade gpt-4o=gpt-4o-mini --name chat-downgrade
      meterline budgets set --scope user:u-42 --period hour --limit-tokens 200000 --action block
    """
    from meterline.budgets.rules import describe, limit_text
    from meterline.budgets.store import BudgetError, parse_budget

    mapping = {}
    for pair in downgrades:
        model, separator, cheaper = pair.partition("=")
        if not separator or not model or not cheaper:
            raise click.BadParameter(f"{pair!r} is not MODEL=CHEAPER", param_hint="--downgrade")
        mapping[model] = cheaper
    definition = {"scope": scope, "period": period, "limit_usd": limit_usd, "limit_tokens": limit_tokens}
    optional = {"name": name, "actions": list(actions), "thresholds": list(thresholds), "downgrade": mapping}
    definition.update({field: value for field, value in optional.items() if value})
    config = _load(config_path)
    try:
        budget = parse_budget(definition)
        _budget_store(config).put(budget)
    except BudgetError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"set {describe(budget)}: {limit_text(budget)}, actions {', '.join(budget.actions)}; "
        "it applies from the next request on"
    )


@budgets.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
def budgets_list(config_path: Path, as_json: bool) -> None:
    """List budgets with this period's spend and when it resets.

    Spend comes from the running server when one answers at the configured address (what its
    counters hold), otherwise from the store file.

    \b
    Examples:
      meterline budgets list
      meterline budgets list --json
    """
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from meterline.analytics.source import ServerSource, SourceError, server_answers, server_url
    from meterline.budgets.rules import format_usd
    from meterline.budgets.store import offline_listing

    config = _load(config_path)
    base_url = server_url(config)
    if config.server.master_key and server_answers(base_url):
        source = ServerSource(base_url, config.server.master_key)
        try:
            rows = source.get("budgets", {})["data"]
        except SourceError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            source.close()
    else:
        rows = offline_listing(_budget_store(config))
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(box=box.SIMPLE, caption=f"periods in {config.budgets.timezone}")
    table.add_column("name", no_wrap=True, min_width=max((len(row["name"]) for row in rows), default=4))
    for column in ("scope", "period", "spent / limit", "used", "resets", "actions", "source"):
        table.add_column(column, overflow="fold")
    for row in rows:
        amounts = []
        if row["limit_usd"] is not None:
            amounts.append(f"{format_usd(row['spent_usd'])} / {format_usd(row['limit_usd'])}")
        if row["limit_tokens"] is not None:
            amounts.append(f"{row['spent_tokens']:,} / {row['limit_tokens']:,} tokens")
        table.add_row(
            row["name"],
            row["scope"],
            row["period"],
            "\n".join(amounts),
            f"{row['percent']:.1f}%",
            row["period_end"][:16].replace("T", " "),
            ", ".join(row["actions"]),
            row["source"],
        )
    Console().print(table)


@budgets.command("delete")
@CONFIG_OPTION
@click.argument("name")
def budgets_delete(config_path: Path, name: str) -> None:
    """Delete the budget NAME (one set with `budgets set` or the API; config budgets live in the file).

    \b
    Example:
      meterline budgets delete team:search:day
    """
    from meterline.budgets.store import BudgetError

    try:
        _budget_store(_load(config_path)).delete(name)
    except BudgetError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"deleted budget '{name}'; it stops applying from the next request on")


@main.group()
def alerts() -> None:
    """Evaluate the alert rules now or at a past instant, and list alert states."""


def _findings_table(findings: list[dict[str, object]], title: str) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE, title=title, show_lines=True)
    for column in ("rule", "about", "observed", "baseline", "band", "at stake", "what"):
        table.add_column(column, overflow="fold")
    for finding in findings:
        table.add_row(
            str(finding["rule"]) + (f" ({finding['signal']})" if finding.get("signal") else ""),
            f"{finding['dimension']} {finding['value']}",
            f"{finding['observed']:.4g} {finding['unit']}",
            f"{finding['baseline']:.4g}",
            f"{finding['band']:.4g}",
            f"${finding['usd_at_stake']:,.2f}",
            f"{finding['summary']}\n{finding['link']}",
        )
    Console(width=160).print(table)


@alerts.command("check")
@CONFIG_OPTION
@click.option("--at", "at_text", help="Evaluate at this ISO time (UTC if no offset) instead of now, to replay history.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def alerts_check(config_path: Path, at_text: str | None, as_json: bool) -> None:
    """Evaluate every enabled alert rule once and print what is wrong (exit status 2 when something is).

    A dry run: the stored alert states are not changed and nothing is sent. The running server's
    API answers when one is up at the configured address, else the store file is read directly.

    \b
    Examples:
      meterline alerts check
      meterline alerts check --at 2026-03-02T14:00:00Z --json
    """
    from datetime import UTC, datetime

    from meterline.alerts.engine import Detector, dashboard_url
    from meterline.analytics.params import BadParameter, parse_time
    from meterline.analytics.source import ServerSource, SourceError, server_answers, server_url
    from meterline.store.duckdb import DuckDBStore

    config = _load(config_path)
    try:
        at = parse_time("at", at_text) if at_text else datetime.now(UTC)
    except BadParameter as exc:
        raise click.ClickException(str(exc)) from exc
    base_url = server_url(config)
    if config.server.master_key and server_answers(base_url):
        source = ServerSource(base_url, config.server.master_key)
        try:
            findings = source.get("alerts/check", {"at": at.isoformat()})["data"]
        except SourceError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            source.close()
    else:
        store = DuckDBStore(config.store, read_only=True)
        try:
            store.open()
        except FileNotFoundError as exc:
            raise click.ClickException(str(exc)) from exc
        try:
            detector = Detector(store, config.alerts, dashboard_url(config))
            findings = [finding.as_json() for finding in detector.findings(at)]
        finally:
            store.close()
    if as_json:
        click.echo(orjson.dumps({"at": at.isoformat(), "data": findings}, option=orjson.OPT_INDENT_2).decode())
    elif findings:
        _findings_table(findings, f"{len(findings)} alert condition(s) at {at.isoformat()}")
    else:
        click.echo(f"no alert conditions at {at.isoformat()}")
    if findings:
        sys.exit(2)


@alerts.command("list")
@CONFIG_OPTION
@click.option("--state", type=click.Choice(["firing", "resolved"]), help="Only alerts in this state.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the API's JSON instead of a table.")
def alerts_list(config_path: Path, state: str | None, limit: int, as_json: bool) -> None:
    """List stored alerts (from the server's evaluations and budget thresholds), newest first.

    \b
    Examples:
      meterline alerts list --state firing
    """
    from datetime import UTC, datetime, timedelta

    from rich import box
    from rich.console import Console
    from rich.table import Table

    from meterline.alerts.state import AlertStore
    from meterline.store.control import ControlDB

    config = _load(config_path)
    store = AlertStore(ControlDB(config.store.control_path), timedelta(minutes=config.alerts.cooldown_minutes))
    rows = store.listing(datetime.now(UTC), state, limit)
    if as_json:
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        click.echo(f"no {state or 'stored'} alerts")
        return
    table = Table(box=box.SIMPLE)
    for column in ("id", "state", "rule", "about", "fired", "resolved", "silenced until", "summary"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["state"],
            row["rule"],
            f"{row['dimension']} {row['value']}",
            row["fired_at"][:16].replace("T", " "),
            (row["resolved_at"] or "")[:16].replace("T", " "),
            (row["silenced_until"] or "")[:16].replace("T", " "),
            row["summary"],
        )
    Console(width=160).print(table)


@main.command()
@CONFIG_OPTION
@click.option(
    "--store",
    "store_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="DuckDB file to write (default: store.path of the config). It must not be in use by a server.",
)
@click.option("--days", type=click.IntRange(1, 365), default=30, show_default=True)
@click.option(
    "--incidents",
    default="all",
    show_default=True,
    help="Comma-separated incident types to inject, 'all' or 'none': retry_storm, prompt_bloat, "
    "runaway_user, model_swap, cache_breakage, provider_outage.",
)
@click.option("--per-type", type=click.IntRange(1, 20), default=2, show_default=True, help="Incidents of each type.")
@click.option(
    "--leaks",
    default="none",
    show_default=True,
    help="Comma-separated leaks for the insights to find, 'all' or 'none': retry_amplifier, system_prompt_tax, "
    "model_mismatch, embedding_leak, context_growth, agent_loops, unattributed_spend, output_bloat.",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--end", "end_text", help="ISO time the traffic ends at (default: the current hour).")
def simulate(
    config_path: Path,
    store_path: Path | None,
    days: int,
    incidents: str,
    per_type: int,
    leaks: str,
    seed: int,
    end_text: str | None,
) -> None:
    """Write synthetic traffic with labelled incidents and leaks into a store, to measure the alerts and insights.

    Incidents (for the alerts) start after a week of warm-up; leaks (for `meterline insights`)
    run from the first hour at fixed rates, so their cost can be worked out by hand (see
    meterline/leaks.py). The labels go beside the store as <store>.incidents.json;
    bench/alerts.py replays the alert detector over the store and scores it against them.

    \b
    Examples:
      meterline simulate --store sim.duckdb --days 30
      meterline simulate --store sim.duckdb --days 14 --incidents retry_storm,model_swap --seed 3
      meterline simulate --store leaks.duckdb --days 7 --incidents none --leaks all
    """
    from datetime import UTC, datetime, timedelta

    from rich.progress import Progress

    from meterline.analytics.params import BadParameter, parse_time
    from meterline.config import StoreConfig
    from meterline.leaks import LEAK_TYPES
    from meterline.pricing.table import PriceTable
    from meterline.simulate import INCIDENT_TYPES, PROVIDERS, hour_floor, labels_path, write_labels
    from meterline.simulate import simulate as run_simulation
    from meterline.store.duckdb import DuckDBStore

    config = _load(config_path, required=False)
    path = store_path or config.store.path
    kinds = list(INCIDENT_TYPES) if incidents == "all" else [] if incidents == "none" else incidents.split(",")
    leak_kinds = list(LEAK_TYPES) if leaks == "all" else [] if leaks == "none" else leaks.split(",")
    try:
        end = hour_floor(parse_time("end", end_text) if end_text else datetime.now(UTC))
    except BadParameter as exc:
        raise click.ClickException(str(exc)) from exc
    store = DuckDBStore(StoreConfig(path=path))
    try:
        store.open()
    except Exception as exc:
        raise click.ClickException(f"cannot open the store {path} for writing: {exc}") from exc
    try:
        with Progress(transient=True) as progress:
            task = progress.add_task("simulating days", total=days)
            written, injected = run_simulation(
                store,
                PriceTable.load(config.pricing.overrides, PROVIDERS),
                days=days,
                end=end,
                kinds=kinds,
                per_kind=per_type,
                seed=seed,
                leaks=leak_kinds,
                progress=lambda day: progress.update(task, completed=day),
            )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    labels = labels_path(path)
    write_labels(labels, injected, end - timedelta(days=days), end, leak_kinds)
    click.echo(f"wrote {written:,} events over {days} days to {path}")
    for leak in leak_kinds:
        click.echo(f"  leak {leak}")
    for incident in injected:
        about = incident.feature or incident.provider
        who = f" user {incident.user}" if incident.user else ""
        click.echo(f"  {incident.kind:<16} {incident.start:%Y-%m-%d %H:%M} to {incident.end:%H:%M} UTC  {about}{who}")
    click.echo(f"labels: {labels}")
