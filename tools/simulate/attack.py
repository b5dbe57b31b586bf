"""Poisoning for `wafl simulate --malicious K`: made-up weights with forged or reused proofs.

A malicious organisation skips training and proving. Each round it submits either its honest
update scaled far away from the global model ("scaled") or uniformly random weights ("random"),
with a proof that is either made of random numbers ("forged") or copied from an honest
participant's accepted transaction ("reused"). The contract rejects every one of them; a plain
FedAvg that trusts its clients averages them in (the baseline the results show beside ours).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from eth_account.signers.local import LocalAccount

from wafl.chain.aggregator import AggregatorClient
from wafl.chain.tx import ContractRevertError
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights

Attack = Literal["scaled", "random"]
SCALE = -8  # how far a "scaled" update is pushed (and turned around) from the global model
FIELD_MODULUS = 21888242871839275222246405745257275088548364400416227782913697508838403658583
SUBMIT_GAS = 2_000_000  # fixed, so that the transaction is mined and reverts on chain


def made_up_update(cfg: ModelConfig, attack: Attack, global_model: Weights, honest: Weights,
                   rng: np.random.Generator) -> Weights:
    """Weights inside the lane range (so that only the proof can reject them)."""
    if attack == "random":
        values = rng.integers(cfg.weight_min // 2, cfg.weight_max // 2, size=cfg.n_weights)
    else:
        base, step = np.asarray(global_model.flat()), np.asarray(honest.flat()) - np.asarray(global_model.flat())
        values = base + SCALE * np.where(step == 0, 1 << cfg.frac_bits >> 3, step)
    return Weights.from_flat(cfg, [int(v) for v in np.clip(values, cfg.weight_min, cfg.weight_max)])


@dataclass
class Rejection:
    round: int
    participant: str
    proof_kind: str
    error: str


class MaliciousParticipant:
    def __init__(self, cfg: ModelConfig, aggregator: AggregatorClient, account: LocalAccount, attack: Attack,
                 seed: int) -> None:
        self.cfg = cfg
        self.aggregator = aggregator
        self.account = account
        self.attack = attack
        self.rng = np.random.default_rng(seed)

    def forged_proof(self) -> list[int]:
        return [int.from_bytes(self.rng.bytes(32), "big") % FIELD_MODULUS for _ in range(8)]

    def reused_proof(self, round_id: int) -> list[int] | None:
        """The proof of an honest update accepted in ``round_id``, read from its transaction."""
        events = self.aggregator.contract.events.UpdateAccepted().get_logs(
            from_block=self.aggregator.deployment.start_block, argument_filters={"round": round_id}
        )
        if not events:
            return None
        tx = self.aggregator.w3.eth.get_transaction(events[0]["transactionHash"])
        _, arguments = self.aggregator.contract.decode_function_input(tx["input"])
        return [int(v) for v in arguments["proof"]]

    def submit(self, round_id: int, update: Weights, words: list[int]) -> Rejection | None:
        """Submit made-up weights; returns the on-chain rejection (None if it was accepted)."""
        # Even rounds replay a proof accepted in the previous round; odd rounds forge one.
        reused = self.reused_proof(round_id - 1) if round_id % 2 == 0 else None
        proof, kind = (reused, "reused") if reused is not None else (self.forged_proof(), "forged")
        try:
            self.aggregator.submit_update(self.account, round_id, words, proof, gas=SUBMIT_GAS)
        except ContractRevertError as exc:
            return Rejection(round_id, self.account.address, kind, exc.name)
        return None
