"""Real updates for chain tests: a batch over the whole data range, trained, proven."""

from __future__ import annotations

import random
from dataclasses import dataclass

from services.trainer.core import TorchFixedPointTrainer
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Matrix, Weights, train_step
from wafl.core.packing import pack
from wafl.zk.circuit import CircuitKind, witness_args
from wafl.zk.prover import Groth16Proof, Prover


@dataclass
class Update:
    words: list[int]
    proof: Groth16Proof
    weights: Weights


def batch(cfg: ModelConfig, rng: random.Random) -> tuple[Matrix, Matrix]:
    # Features over the whole admitted range, boundary values included.
    x = [[rng.choice([cfg.data_min, cfg.data_max, 0, rng.randint(cfg.data_min, cfg.data_max) // 3])
          for _ in range(cfg.d_in)] for _ in range(cfg.batch)]
    y = [[int(k == rng.randrange(cfg.d_out)) for k in range(cfg.d_out)] for _ in range(cfg.batch)]
    return x, y


def make_update(
    cfg: ModelConfig, worker: Prover, global_model: Weights, sender: str, round_id: int,
    rng: random.Random,
) -> Update:
    x, y = batch(cfg, rng)
    trained = TorchFixedPointTrainer(cfg).step(global_model, x, y)
    assert trained == train_step(cfg, global_model, x, y)
    args = witness_args(cfg, CircuitKind.PACKED, global_model, trained, x, y, int(sender, 16), round_id)
    return Update(pack(cfg, trained.flat()), worker.prove(args).proof, trained)
