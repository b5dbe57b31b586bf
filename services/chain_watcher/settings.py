"""Chain watcher settings (WAFL_* environment variables or a YAML file)."""

from __future__ import annotations

from pydantic import Field

from wafl.bus.settings import ServiceSettings


class ChainWatcherSettings(ServiceSettings):
    confirmations: int = Field(default=2, ge=0, le=256, description="blocks on top of a log before it is published")
    poll_interval: float = Field(default=1.0, gt=0, description="seconds between polls")
    max_block_range: int = Field(default=2000, ge=1, description="blocks per eth_getLogs request")
