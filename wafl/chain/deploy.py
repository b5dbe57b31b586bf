"""Deploy the verifier and aggregator for one configuration and write the artifact file.

The tests deploy through this module too. The artifact holds everything a service needs:
ABIs, addresses, start block, chain id and the model configuration.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from wafl.build import generated_verifier_path
from wafl.chain.compile import compile_contracts
from wafl.chain.tx import ErrorDecoder, send
from wafl.config import ModelConfig, parse_config
from wafl.fixedpoint import Weights
from wafl.packing import pack

ARTIFACT_VERSION = 1


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
    verifier_source_sha256: str

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


def deploy(
    w3: Web3,
    deployer: LocalAccount,
    cfg: ModelConfig,
    *,
    quorum: int,
    round_duration: int,
    participants: list[str] | None = None,
    initial_model: Weights | None = None,
) -> Deployment:
    import hashlib

    verifier_path = generated_verifier_path(cfg)
    compiled = compile_contracts(verifier_path)["contracts"]
    aggregator_abi = compiled["WaflAggregator"]["abi"]
    verifier_abi = compiled["WaflVerifier"]["abi"]
    decoder = ErrorDecoder(aggregator_abi, verifier_abi)
    start_block = w3.eth.block_number

    verifier_factory = w3.eth.contract(abi=verifier_abi, bytecode=compiled["WaflVerifier"]["bytecode"])
    receipt = send(w3, deployer, verifier_factory.constructor(), decoder)
    verifier_address = receipt["contractAddress"]

    initial = initial_model or Weights.zeros(cfg)
    layout = (cfg.n_weights, cfg.weight_bits, cfg.slot_bits, cfg.lanes_per_word, cfg.max_participants)
    factory = w3.eth.contract(abi=aggregator_abi, bytecode=compiled["WaflAggregator"]["bytecode"])
    receipt = send(
        w3,
        deployer,
        factory.constructor(
            verifier_address, deployer.address, layout, quorum, round_duration, pack(cfg, initial.flat())
        ),
        decoder,
    )
    address = receipt["contractAddress"]
    if participants:
        aggregator = w3.eth.contract(address=address, abi=aggregator_abi)
        send(
            w3,
            deployer,
            aggregator.functions.registerParticipants([Web3.to_checksum_address(p) for p in participants]),
            decoder,
        )
    return Deployment(
        chain_id=w3.eth.chain_id,
        address=str(address),
        verifier_address=str(verifier_address),
        start_block=start_block,
        abi=aggregator_abi,
        verifier_abi=verifier_abi,
        config=cfg.model_dump(mode="json"),
        quorum=quorum,
        round_duration=round_duration,
        verifier_source_sha256=hashlib.sha256(verifier_path.read_bytes()).hexdigest(),
    )
