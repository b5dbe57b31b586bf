"""Prover handlers: competing consumers on the private job queue, one proof at a time per replica."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from faststream.rabbit import Channel

from services.prover.proving import JobProver, UnmaskableJobError
from wafl.bus.chainstate import classify_round
from wafl.bus.deadletter import RejectMessage
from wafl.bus.messages import ProofGenerated, ProverJob, UpdateFailed
from wafl.bus.observability import DUPLICATES_SKIPPED, MESSAGES_HANDLED
from wafl.bus.service import Runtime, run_once
from wafl.zk.prover import UnsatisfiedConstraintError

SERVICE = "prover"
UNSATISFIED_CONSTRAINT = "unsatisfied_constraint"
"""``update.failed`` reason of a job whose data and weights do not satisfy the circuit."""
log = structlog.get_logger()


@dataclass
class ProverState:
    prover: JobProver | None = None
    lease_seconds: int = 30


def register(runtime: Runtime, state: ProverState) -> None:
    topology = runtime.topology
    broker = runtime.broker
    proofs_out = runtime.event_publisher(ProofGenerated)
    failed_out = runtime.event_publisher(UpdateFailed)

    # prefetch 1: a replica holds one job at a time, the others stay on the queue for other replicas.
    @broker.subscriber(topology.prover_jobs, channel=Channel(prefetch_count=1), title="prover: jobs")
    async def on_job(job: ProverJob) -> None:
        if state.prover is None:
            raise RuntimeError("prover used before start-up")
        prover = state.prover
        structlog.contextvars.bind_contextvars(round=job.round, participant=job.participant, message_id=job.message_id)
        if not await classify_round(runtime.redis, runtime.settings.org, job.round):
            log.info("job_for_closed_round")
            DUPLICATES_SKIPPED.labels(service=SERVICE, stage="stale_round").inc()
            return
        result_key = runtime.key("proof", job.round, job.participant.lower(), job.branch)

        async def prove_and_publish() -> None:
            log.info("proof_started")
            try:
                proof = await asyncio.to_thread(prover.prove, job)
            except UnsatisfiedConstraintError as exc:
                # Never provable: the federation hears that this organisation has no update, and
                # the job goes to the dead letters with the reason.
                await failed_out.publish(UpdateFailed(
                    org=job.org, round=job.round, participant=job.participant, reason=UNSATISFIED_CONSTRAINT,
                    detail="the job does not satisfy the circuit"))
                log.warning("update_failed", reason=UNSATISFIED_CONSTRAINT)
                raise RejectMessage(f"the job does not satisfy the circuit: {exc}") from None
            except UnmaskableJobError as exc:
                raise RejectMessage(str(exc)) from None
            await proofs_out.publish(proof)
            await runtime.redis.set(result_key, proof.model_dump_json())
            log.info("proof_generated", proof_seconds=round(proof.proof_seconds, 3),
                     queue_seconds=round(proof.queue_seconds, 3))

        lease_key = runtime.key("lease", job.round, job.participant.lower(), job.branch)
        if await run_once(runtime.redis, lease_key, prove_and_publish, lease_seconds=state.lease_seconds):
            MESSAGES_HANDLED.labels(service=SERVICE, queue=topology.prover_jobs.name).inc()
            return
        # Proven before (a redelivery or a duplicate job): publish the stored result again instead
        # of proving twice; downstream consumers are idempotent per round and participant.
        DUPLICATES_SKIPPED.labels(service=SERVICE, stage="prove").inc()
        stored = await runtime.redis.get(result_key)
        if stored:
            await proofs_out.publish(ProofGenerated.model_validate_json(stored))
        log.info("job_already_proven", republished=bool(stored))
