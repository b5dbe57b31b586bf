"""The prover's plain core: a ProverJob in, a ProofGenerated out, on long-lived prover workers."""

from __future__ import annotations

from datetime import UTC, datetime

from wafl.bus.messages import ProofGenerated, ProverJob
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights
from wafl.core.packing import unpack
from wafl.zk.circuit import CircuitKind, masked_witness_args, witness_args
from wafl.zk.prover import Prover


class UnmaskableJobError(ValueError):
    """A job of a secure-aggregation round without the round set's keys or the member's slot."""


class JobProver:
    def __init__(
        self,
        cfg: ModelConfig,
        worker: Prover,
        org: str,
        proof_timeout: float = 600.0,
        masking_secret: int | None = None,
    ) -> None:
        if cfg.secure_aggregation and masking_secret is None:
            raise ValueError(f"{cfg.name} masks its updates: the prover needs the masking secret")
        self.cfg = cfg
        self.worker = worker
        self.org = org
        self.proof_timeout = proof_timeout
        self._masking_secret = masking_secret

    def prove(self, job: ProverJob) -> ProofGenerated:
        """Blocking. Raises wafl.zk.prover.UnsatisfiedConstraintError when the job's data and weights do
        not satisfy the circuit (the job can never be proven)."""
        cfg = self.cfg
        queued = (datetime.now(UTC) - job.trained_at).total_seconds()
        global_model = Weights.from_flat(cfg, unpack(cfg, job.global_words))
        if self._masking_secret is not None:
            if job.slot is None or len(job.member_keys) != 2 * cfg.set_size:
                raise UnmaskableJobError(
                    f"a job of a secure-aggregation round needs its slot and the set's {2 * cfg.set_size} key words"
                )
            args = masked_witness_args(
                cfg, global_model, job.x, job.y, job.round, job.member_keys, job.slot, self._masking_secret
            )
        else:
            update = Weights.from_flat(cfg, unpack(cfg, job.update_words))
            args = witness_args(
                cfg, CircuitKind.PACKED, global_model, update, job.x, job.y, int(job.participant, 16), job.round
            )
        result = self.worker.prove(args, timeout=self.proof_timeout)
        # Masked: the circuit returns the words to submit, the first public inputs.
        words = result.inputs[: cfg.n_words] if self._masking_secret is not None else job.update_words
        return ProofGenerated(
            org=self.org,
            round=job.round,
            branch=job.branch,
            participant=job.participant,
            update_words=words,
            proof=result.proof.as_uint256x8(),
            proof_seconds=result.proof_seconds,
            witness_seconds=result.witness_seconds,
            queue_seconds=max(0.0, queued),
        )
