"""Prover settings (WAFL_* environment variables or a YAML file)."""

from __future__ import annotations

from pydantic import Field

from wafl.settings import ServiceSettings


class ProverSettings(ServiceSettings):
    proof_timeout: float = Field(default=600.0, gt=0, description="seconds before a stuck proof is abandoned")
    lease_seconds: int = Field(default=30, ge=3, description="lease on a job while it is proven (renewed)")
    graceful_timeout: float = Field(default=300.0, gt=0, description="SIGTERM: seconds to finish the job")
