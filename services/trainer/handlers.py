"""Trainer handlers: validate round.opened, train once per round, publish the job and summary, or
update.failed with the reason when the round's step cannot be proven. With secure aggregation a
round whose set does not include this organisation is not trained (``not_in_round_set``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from services.trainer.rounds import UNPROVABLE_STEP, RoundTrainer, UnprovableStepError
from wafl.bus.chainstate import classify_round
from wafl.bus.messages import ProverJob, RoundOpened, UpdateFailed, UpdateTrained
from wafl.bus.observability import DUPLICATES_SKIPPED, MESSAGES_HANDLED
from wafl.bus.service import Runtime, run_once

SERVICE = "trainer"
log = structlog.get_logger()


@dataclass
class TrainerState:
    """Set at start-up (create_app works without it, e.g. to render the AsyncAPI document)."""

    trainer: RoundTrainer | None = None


def register(runtime: Runtime, state: TrainerState) -> None:
    topology = runtime.topology
    broker = runtime.broker
    jobs = broker.publisher(
        topology.prover_jobs, schema=ProverJob, persist=True,
        title="prover jobs", description="private work queue: the batch goes only to this organisation's provers",
    )
    trained_out = runtime.event_publisher(UpdateTrained)
    failed_out = runtime.event_publisher(UpdateFailed)

    @runtime.event_subscriber(RoundOpened)
    async def on_round_opened(event: RoundOpened) -> None:
        if state.trainer is None:
            raise RuntimeError("trainer used before start-up")
        structlog.contextvars.bind_contextvars(round=event.round, message_id=event.message_id)
        if not await classify_round(runtime.redis, runtime.settings.org, event.round):
            log.info("round_already_closed")
            DUPLICATES_SKIPPED.labels(service=SERVICE, stage="stale_round").inc()
            return
        trainer = state.trainer
        slot: int | None = None
        if trainer.secure:
            slot = trainer.slot(event.members)
            if slot is None:  # left out of the round's set (excluded, or beyond its slots): nothing to train
                log.info("not_in_round_set", participant=trainer.participant, members=len(event.members))
                MESSAGES_HANDLED.labels(service=SERVICE, queue=RoundOpened.routing_key).inc()
                return

        async def train_and_publish() -> None:
            try:
                job, trained = await asyncio.to_thread(trainer.train, event.round, event.global_words,
                                                       event.block_hash, member_keys=event.member_keys, slot=slot)
            except UnprovableStepError as exc:
                # Retrying gives the same step: say so once, and the federation goes on without us.
                await failed_out.publish(trainer.failed(event.round, UNPROVABLE_STEP, str(exc)))
                log.warning("update_failed", reason=UNPROVABLE_STEP, detail=str(exc))
                return
            await jobs.publish(job)
            await trained_out.publish(trained)
            log.info("round_trained", participant=trained.participant, slot=slot,
                     train_seconds=round(trained.train_seconds, 4), loss=trained.loss)

        # Marked done after publishing: a crash in between retrains the same deterministic update
        # and the prover recognises the duplicate job. Per opening of the round: a round opened
        # again on another branch after a reorganisation is trained again.
        if await run_once(runtime.redis, runtime.key("trained", event.round, event.block_hash), train_and_publish):
            MESSAGES_HANDLED.labels(service=SERVICE, queue=RoundOpened.routing_key).inc()
        else:
            log.info("round_already_trained")
            DUPLICATES_SKIPPED.labels(service=SERVICE, stage="train").inc()
