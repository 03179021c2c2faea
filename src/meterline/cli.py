"""The `meterline` command: serve the gateway, run the mock provider or the demo, inspect prices."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from meterline.config import Config, ConfigError, load_config

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
def serve(config_path: Path, host: str | None, port: int | None) -> None:
    """Run the gateway: proxy, meter and store every call.

    \b
    Examples:
      MLINE_MASTER_KEY=sk-admin-123 meterline serve --config meterline.yaml
      meterline serve --config meterline.yaml --host 0.0.0.0 --port 8080

    Point clients at it by changing only their base URL and key, e.g. OpenAI's
    base_url=http://127.0.0.1:4000/v1 or Anthropic's base_url=http://127.0.0.1:4000.
    """
    from meterline.server import StartupError
    from meterline.server import serve as run_server

    config = _load(config_path)
    if host:
        config.server.host = host
    if port:
        config.server.port = port
    try:
        run_server(config)
    except (ConfigError, StartupError) as exc:
        raise click.ClickException(str(exc)) from exc


@main.command("mock-provider")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=4010, show_default=True)
@click.option("--latency-ms", type=float, default=0, show_default=True, help="Fixed delay before each response.")
@click.option("--per-token-ms", type=float, default=0, show_default=True, help="Extra delay per output token.")
@click.option("--output-tokens", type=int, default=16, show_default=True, help="Default reply length in tokens.")
@click.option(
    "--fault",
    type=click.Choice(
        [
            "rate_limit",
            "server_error",
            "overloaded",
            "timeout",
            "malformed",
            "disconnect",
            "truncated",
            "context_length",
            "auth",
        ]
    ),
    help="Inject this fault (per request: header x-mock-fault).",
)
@click.option(
    "--fault-rate", type=click.FloatRange(0, 1), default=1.0, show_default=True, help="Share of faulted calls."
)
@click.option("--require-key", help="Refuse requests that do not carry this API key.")
def mock_provider(
    host: str,
    port: int,
    latency_ms: float,
    per_token_ms: float,
    output_tokens: int,
    fault: str | None,
    fault_rate: float,
    require_key: str | None,
) -> None:
    """Run a fake LLM provider speaking the OpenAI and Anthropic wire formats.

    Deterministic token counts, configurable latency and fault injection, for demos,
    load tests and CI. Per-request headers: x-mock-fault, x-mock-output-tokens,
    x-mock-cached-tokens, x-mock-cache-write-tokens, x-mock-reasoning-tokens.

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
def demo(port: int, mock_port: int, data_dir: Path, request_count: int, duration: float | None) -> None:
    """Run the mock provider and the gateway, send synthetic traffic, and show where it went.

    \b
    Examples:
      meterline demo
      meterline demo --requests 1000 --duration 60
    """
    from meterline.demo import run_demo

    run_demo(port=port, mock_port=mock_port, data_dir=data_dir, request_count=request_count, duration=duration)


@main.group()
def prices() -> None:
    """Inspect the price table: bundled genai-prices snapshot plus your overrides."""


def _price_table(config: Config):  # type: ignore[no-untyped-def]
    from meterline.pricing.table import PriceTable
    from meterline.providers.base import build_provider

    pricing_ids = {name: build_provider(name, provider).pricing_id for name, provider in config.providers.items()}
    try:
        return PriceTable.load(config.pricing.overrides, pricing_ids)
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
