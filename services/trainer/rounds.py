"""The trainer's plain core: one round's training for one organisation, no broker involved."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import numpy as np

from services.trainer.core import TorchFixedPointTrainer
from wafl.bus.messages import NO_BRANCH, ProverJob, UpdateFailed, UpdateTrained
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights
from wafl.core.packing import pack, unpack
from wafl.data.datasets import OrgData

UNPROVABLE_STEP = "unprovable_step"
"""``update.failed`` reason of an organisation whose step for a round cannot be proven."""
_VALUE = re.compile(r" = -?\d+ is outside")


class UnprovableStepError(ValueError):
    """The round's step cannot be proven (the message says why): the global words are not lanes,
    or the batch does not fit the configuration (shape, a value outside its range)."""


class RoundTrainer:
    def __init__(self, cfg: ModelConfig, data: OrgData, org: str, participant: str) -> None:
        self.cfg = cfg
        self.data = data
        self.org = org
        self.participant = participant
        self.trainer = TorchFixedPointTrainer(cfg)

    def train(self, round_id: int, global_words: list[int], branch: str = NO_BRANCH) -> tuple[ProverJob, UpdateTrained]:
        """Train the round's batch from the global model: the private prover job and the public
        summary. Deterministic in (round, global model), so a retrained round is identical.
        ``branch`` is the hash of the block that opened the round (see ``messages.Branch``);
        ``NO_BRANCH`` for a step made outside a chain (the reference, benchmarks).

        The step is bounded (docs/design.md section 2): whatever the data, its result is provable
        once its inputs are in range. Raises ``UnprovableStepError`` when they are not.
        """
        cfg = self.cfg
        try:
            global_model = Weights.from_flat(cfg, unpack(cfg, global_words))
            x, y = self.data.batch(cfg, round_id)
            started = time.perf_counter()
            update = self.trainer.step(global_model, x, y)
        except (ValueError, TypeError) as exc:  # FixedPointRangeError, LaneOutOfRangeError, shapes, dtypes
            # update.failed is public: the reason names the entry, never its (private) value.
            raise UnprovableStepError(f"{type(exc).__name__}: {_VALUE.sub(' is outside', str(exc))}") from exc
        seconds = time.perf_counter() - started
        update_words = pack(cfg, update.flat())
        job = ProverJob(
            org=self.org,
            round=round_id,
            branch=branch,
            participant=self.participant,
            global_words=list(global_words),
            update_words=update_words,
            x=x.tolist(),
            y=y.tolist(),
            trained_at=datetime.now(UTC),
        )
        trained = UpdateTrained(
            org=self.org,
            round=round_id,
            participant=self.participant,
            update_words=update_words,
            train_seconds=seconds,
            loss=self.batch_loss(update, x, y),
        )
        return job, trained

    def failed(self, round_id: int, reason: str, detail: str) -> UpdateFailed:
        """The public notice that this organisation has no update for the round."""
        return UpdateFailed(org=self.org, round=round_id, participant=self.participant, reason=reason,
                            detail=detail)

    def batch_loss(self, weights: Weights, x: np.ndarray, y: np.ndarray) -> float:
        scale = float(1 << self.cfg.frac_bits)
        w = np.asarray(weights.w, dtype=np.float64) / scale
        b = np.asarray(weights.b, dtype=np.float64) / scale
        outputs = (x / scale) @ w.T + b
        return float(((outputs - y) ** 2).mean())
