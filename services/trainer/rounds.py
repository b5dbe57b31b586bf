"""The trainer's plain core: one round's training for one organisation, no broker involved.

With secure aggregation (``cfg.secure_aggregation``) a round is trained only by the members of its
set, the job carries the set's masking keys and the participant's slot (the prover masks the
update), and the public summary carries no update words."""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
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

    @property
    def secure(self) -> bool:
        """Secure aggregation: rounds have sets, updates are masked."""
        return self.cfg.secure_aggregation

    def slot(self, members: Sequence[str]) -> int | None:
        """This organisation's slot in a round's set (``RoundOpened.members``), None when it is not a member."""
        mine = self.participant.lower()
        return next((index for index, member in enumerate(members) if member.lower() == mine), None)

    def train(
        self, round_id: int, global_words: list[int], branch: str = NO_BRANCH, *,
        member_keys: Sequence[int] = (), slot: int | None = None,
    ) -> tuple[ProverJob, UpdateTrained]:
        """Train the round's batch from the global model: the private prover job and the public
        summary. Deterministic in (round, global model), so a retrained round is identical.
        ``branch`` is the hash of the block that opened the round (see ``messages.Branch``);
        ``NO_BRANCH`` for a step made outside a chain (the reference, benchmarks). With secure
        aggregation, ``member_keys`` and ``slot`` are the round set's keys and this organisation's
        slot in it (``RoundOpened.member_keys``, ``slot``): the job carries them, the summary no words
        (without a slot, the step alone: the reference, benchmarks).

        The step is bounded (docs/design.md section 2): whatever the data, its result is provable
        once its inputs are in range. Raises ``UnprovableStepError`` when they are not (or when
        the set does not fit the circuit).
        """
        cfg = self.cfg
        if self.secure and slot is not None and (len(member_keys) != 2 * cfg.set_size or slot >= cfg.set_size):
            raise UnprovableStepError(f"the round's set ({len(member_keys)} key words, slot {slot}) does not fit "
                                      f"the circuit's {cfg.set_size} slots")
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
            member_keys=list(member_keys) if self.secure else [],
            slot=slot if self.secure else None,
        )
        trained = UpdateTrained(
            org=self.org,
            round=round_id,
            participant=self.participant,
            update_words=[] if self.secure else update_words,
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
