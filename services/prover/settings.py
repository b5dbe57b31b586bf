"""Prover settings (WAFL_* environment variables or a YAML file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from wafl.bus.settings import ServiceSettings
from wafl.zk.prover import Backend


class ProverSettings(ServiceSettings):
    proof_timeout: float = Field(default=600.0, gt=0, description="seconds before a stuck proof is abandoned")
    lease_seconds: int = Field(default=30, ge=3, description="lease on a job while it is proven (renewed)")
    graceful_timeout: float = Field(default=300.0, gt=0, description="SIGTERM: seconds to finish the job")
    keys: Path | None = Field(
        default=None,
        description="the federation's key directory (`wafl ceremony finalize --out`); unset: this machine's "
        "development keys, which only a development deployment accepts",
    )
    backend: Backend = Field(default=Backend.GROTH16PY, description="groth16py (native) or snarkjs")
    masking_key_file: Path | None = Field(
        default=None,
        description="the organisation's masking secret (`wafl org init`; a mounted Secret): needed when the "
        "deployment's configuration has secure_aggregation",
    )
