"""One typed configuration for meterline: a YAML file with ${ENV_VAR} interpolation, validated at start-up.

A bad file fails fast with `ConfigError`, whose message names the field and says how to fix it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which field and what to do."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(4000, ge=1, le=65535)
    master_key: str | None = Field(None, min_length=8)
    max_body_mb: float = Field(20, gt=0)


class StoreConfig(_Section):
    kind: str = "duckdb"
    path: Path = Path("./meterline-data/meterline.duckdb")
    spool_dir: Path = Path("./meterline-data/spool")
    control_path: Path = Field(
        Path("./meterline-data/control.sqlite"),
        description="SQLite file for virtual keys and budgets, shared by every process on the machine "
        "(default: control.sqlite beside the store file)",
    )
    flush_interval_ms: int = Field(250, ge=10, description="how often the spool is loaded into the store")
    fsync_interval_ms: int = Field(200, ge=10, description="how often spool writes are fsynced")


class PricingConfig(_Section):
    overrides: Path | None = None


class TimeoutConfig(_Section):
    connect_s: float = Field(10, gt=0)
    first_byte_s: float = Field(120, gt=0, description="from sending the request to the response's first byte")
    total_s: float = Field(600, gt=0)


class ProviderConfig(_Section):
    kind: str
    base_url: str
    api_key: str | None = None
    headers: dict[str, str] = {}
    pricing_provider: str | None = Field(
        None, description="genai-prices provider id to price this provider's models by (default: from kind)"
    )
    timeout: TimeoutConfig = TimeoutConfig()

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
        return value.rstrip("/")


class ModelConfig(_Section):
    name: str = Field(min_length=1)
    provider: str
    upstream_model: str | None = None

    @property
    def upstream_name(self) -> str:
        return self.upstream_model or self.name


class Config(_Section):
    server: ServerConfig = ServerConfig()
    store: StoreConfig = StoreConfig()
    pricing: PricingConfig = PricingConfig()
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []

    @model_validator(mode="after")
    def _models_name_known_providers(self) -> Config:
        seen: set[str] = set()
        for index, model in enumerate(self.models):
            if model.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none configured"
                raise ValueError(
                    f"models[{index}] ({model.name!r}) uses provider {model.provider!r}, "
                    f"which is not under 'providers' (configured: {known})"
                )
            if model.name in seen:
                raise ValueError(f"models[{index}]: the name {model.name!r} is listed twice; names must be unique")
            seen.add(model.name)
        return self

    def model(self, name: str) -> ModelConfig | None:
        return next((model for model in self.models if model.name == name), None)

    def resolve_paths(self, base: Path) -> Config:
        """Make relative store and pricing paths relative to the config file's folder."""
        self.store.path = _under(base, self.store.path)
        self.store.spool_dir = _under(base, self.store.spool_dir)
        if "control_path" not in self.store.model_fields_set:
            self.store.control_path = self.store.path.parent / "control.sqlite"
        self.store.control_path = _under(base, self.store.control_path)
        if self.pricing.overrides is not None:
            self.pricing.overrides = _under(base, self.pricing.overrides)
        return self


def _under(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else base / path


def interpolate_env(text: str, environ: dict[str, str] | None = None) -> str:
    """Replace ${VAR} and ${VAR:-default} with environment values; an unset VAR without default is an error."""
    env = os.environ if environ is None else environ
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        missing.append(name)
        return ""

    result = _ENV_REFERENCE.sub(substitute, text)
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise ConfigError(
            f"the config refers to environment variable(s) {names}, which are not set: "
            f"export them, or write ${{NAME:-default}} to give a default"
        )
    return result


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field; check its spelling against the documented config shape"
        lines.append(f"  {where}: {message}")
    return "invalid config:\n" + "\n".join(lines)


def parse_config(text: str, base: Path, environ: dict[str, str] | None = None) -> Config:
    try:
        raw = yaml.safe_load(interpolate_env(text, environ)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"the config is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("the config must be a YAML mapping with sections server, store, providers, models")
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from exc
    return config.resolve_paths(base)


def load_config(path: Path | str) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        return parse_config(text, path.parent.resolve())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
