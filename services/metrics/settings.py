"""Metrics settings (WAFL_* environment variables or a YAML file)."""

from __future__ import annotations

from pydantic import Field

from wafl.bus.settings import ServiceSettings


class MetricsSettings(ServiceSettings):
    dataset: str | None = Field(default=None, description="bundled dataset; default: the configuration's")
    org_index: int = Field(default=0, ge=0)
    org_count: int = Field(default=1, ge=1)
    seed: int = 0
