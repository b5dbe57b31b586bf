"""Service settings: pydantic-settings from the environment (``WAFL_*``) or a YAML file.

Secrets (broker and Redis URLs with passwords, the submitter's key file contents) are SecretStr
or files, registered for redaction as soon as they are loaded, and never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wafl.bus.secrets import register_url

S = TypeVar("S", bound="ServiceSettings")

# The machine's own broker and Redis, as development defaults (services, `wafl tail`,
# `wafl simulate`, the local federation and the tests).
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def with_path(url: str, path: str | int) -> str:
    """``url`` with its path replaced: an AMQP virtual host, or a Redis database number."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(str(path), safe="")))


class SettingsError(ValueError):
    """A configuration the service cannot start with; the message says what is wrong."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WAFL_", extra="forbid", frozen=True)

    org: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", max_length=64, description="organisation id")
    amqp_url: SecretStr = SecretStr(DEFAULT_AMQP_URL)
    redis_url: SecretStr = SecretStr(DEFAULT_REDIS_URL)
    rpc_url: str = "http://127.0.0.1:8545"
    deployment: Path = Field(default=Path("deployments/local/deployment.json"), description="artifact file")
    metrics_port: int = Field(default=0, ge=0, le=65535, description="/metrics port; 0 picks a free one")
    log_level: str = "info"

    @field_validator("amqp_url", "redis_url")
    @classmethod
    def _register(cls, value: SecretStr) -> SecretStr:
        register_url(value.get_secret_value())
        return value

    @field_validator("rpc_url")
    @classmethod
    def _register_rpc(cls, value: str) -> str:
        register_url(value)  # an API key in its path is scrubbed from every log line
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error"}:
            raise ValueError("must be debug, info, warning or error")
        return value.lower()


def load_settings(cls: type[S], file: Path | None = None, **overrides: Any) -> S:
    """Settings from a YAML file (if given), the environment, then explicit overrides."""
    data: dict[str, Any] = {}
    if file is not None:
        try:
            raw = yaml.safe_load(Path(file).read_text())
        except OSError as exc:
            raise SettingsError(f"cannot read settings file {file}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"settings file {file} is not valid YAML: {exc}") from None
        if not isinstance(raw, dict):
            raise SettingsError(f"settings file {file} must hold a mapping")
        data.update(raw)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**data)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'} ({_env_name(e['loc'])}): {e['msg']}"
            for e in exc.errors()
        )
        raise SettingsError(f"invalid {cls.__name__}: {reasons}") from None


def _env_name(loc: tuple[int | str, ...]) -> str:
    return "WAFL_" + str(loc[0]).upper() if loc else "WAFL_*"
