"""The deployment artifact: what every service loads to find the contracts and the model.

Kept apart from deploy.py so that loading it (every service's settings do) pulls in neither the
circuit builder nor the contract compiler.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from wafl.core.config import ModelConfig, parse_config

ARTIFACT_VERSION = 2


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    address: str
    verifier_address: str
    start_block: int
    abi: list[dict[str, Any]]
    verifier_abi: list[dict[str, Any]]
    config: dict[str, Any]
    quorum: int
    round_duration: int
    vk_hash: str
    keys_kind: str
    circuit_sha256: str
    transcript_sha256: str | None
    standardisation: dict[str, list[float]] | None = None
    """The federation's standardisation of raw features, {"mean": [...], "std": [...]} (one value per
    input feature; wafl.data.standardisation reads it), for whoever evaluates the model on raw data;
    None: not recorded."""

    @property
    def model_config(self) -> ModelConfig:
        return parse_config(self.config, source="deployment artifact")

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"version": ARTIFACT_VERSION, **asdict(self)}, indent=1))

    @classmethod
    def load(cls, path: Path) -> Deployment:
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"deployment artifact {path} does not exist: run `wafl deploy`") from None
        if raw.pop("version", None) != ARTIFACT_VERSION:
            raise ValueError(f"deployment artifact {path} has an unknown version")
        return cls(**raw)
