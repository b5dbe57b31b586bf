"""Submitter handlers: proof.generated -> one transaction -> update.submitted or update.failed;
round.deadline -> finalizeRound -> round.finalize_sent.

A redelivered or repeated message never sends a second transaction (the core answers from its
Redis record), and its answer is published once (``run_once`` per round and answer): a duplicate
handled at the same time waits for the first one's publication instead of racing it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from services.submitter.decisions import Submitter, UnknownRoundError, WrongParticipantError
from services.submitter.records import RECORD_TTL_SECONDS
from wafl.bus.deadletter import RejectMessage
from wafl.bus.messages import ProofGenerated, RoundDeadline, RoundFinalizeSent, UpdateFailed, UpdateSubmitted
from wafl.bus.observability import DUPLICATES_SKIPPED, MESSAGES_HANDLED
from wafl.bus.service import Runtime, run_once

SERVICE = "submitter"
log = structlog.get_logger()


@dataclass
class SubmitterState:
    """Set at start-up (create_app works without it, e.g. to render the AsyncAPI document)."""

    submitter: Submitter | None = None

    def require(self) -> Submitter:
        if self.submitter is None:
            raise RuntimeError("submitter used before start-up")
        return self.submitter


def register(runtime: Runtime, state: SubmitterState) -> None:
    topology = runtime.topology
    broker = runtime.broker
    redis = runtime.redis

    submitted_out = broker.publisher(
        exchange=topology.events, routing_key=UpdateSubmitted.routing_key, schema=UpdateSubmitted, persist=True,
        title=UpdateSubmitted.routing_key,
    )
    failed_out = broker.publisher(
        exchange=topology.events, routing_key=UpdateFailed.routing_key, schema=UpdateFailed, persist=True,
        title=UpdateFailed.routing_key,
    )
    finalize_out = broker.publisher(
        exchange=topology.events, routing_key=RoundFinalizeSent.routing_key, schema=RoundFinalizeSent,
        persist=True, title=RoundFinalizeSent.routing_key,
    )

    async def publish_once(record_key: str, identity: str, publish: Callable[[], Awaitable[None]]) -> None:
        key = f"{record_key}:published:{identity}"
        if await run_once(redis, key, publish):
            await redis.expire(key, RECORD_TTL_SECONDS)
        else:
            log.info("answer_already_published", answer=identity)
            DUPLICATES_SKIPPED.labels(service=SERVICE, stage="publish").inc()

    @broker.subscriber(
        topology.service_queue(SERVICE, ProofGenerated.routing_key), topology.events,
        title=f"{SERVICE}: {ProofGenerated.routing_key}",
    )
    async def on_proof_generated(event: ProofGenerated) -> None:
        submitter = state.require()
        structlog.contextvars.bind_contextvars(round=event.round, participant=event.participant,
                                               message_id=event.message_id)
        try:
            answer = await submitter.submit(event)
        except (UnknownRoundError, WrongParticipantError) as exc:
            raise RejectMessage(str(exc)) from None

        async def publish() -> None:
            if isinstance(answer, UpdateSubmitted):
                await submitted_out.publish(answer)
                log.info("update_submitted", tx_hash=answer.tx_hash, gas_used=answer.gas_used,
                         block=answer.block_number, submit_seconds=round(answer.submit_seconds, 3))
            else:
                await failed_out.publish(answer)

        identity = answer.tx_hash if isinstance(answer, UpdateSubmitted) else f"failed:{answer.reason}"
        await publish_once(submitter.record_key("update", event.round), identity, publish)
        MESSAGES_HANDLED.labels(service=SERVICE, queue=ProofGenerated.routing_key).inc()

    @broker.subscriber(
        topology.service_queue(SERVICE, RoundDeadline.routing_key), topology.events,
        title=f"{SERVICE}: {RoundDeadline.routing_key}",
    )
    async def on_round_deadline(event: RoundDeadline) -> None:
        submitter = state.require()
        structlog.contextvars.bind_contextvars(round=event.round, message_id=event.message_id)
        try:
            sent = await submitter.finalize(event.round)
        except UnknownRoundError as exc:
            raise RejectMessage(str(exc)) from None
        if sent is not None:

            async def publish() -> None:
                await finalize_out.publish(sent)
                log.info("finalize_sent", tx_hash=sent.tx_hash, gas_used=sent.gas_used)

            await publish_once(submitter.record_key("finalize", event.round), sent.tx_hash, publish)
        MESSAGES_HANDLED.labels(service=SERVICE, queue=RoundDeadline.routing_key).inc()
