"""Submitter handlers: proof.generated -> one transaction -> update.submitted or update.failed;
round.deadline -> finalizeRound -> round.finalize_sent; chain.reorged -> the dropped updates sent
again -> update.submitted or update.failed; round.voided excluding this participant (secure
aggregation) -> rejoin() (logged ``rejoined``, nothing published: the chain watcher's
member.rejoined says it).

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
from wafl.bus.chainstate import classify_round
from wafl.bus.deadletter import RejectMessage
from wafl.bus.messages import (
    ChainReorged,
    ProofGenerated,
    RoundDeadline,
    RoundFinalizeSent,
    RoundVoided,
    UpdateFailed,
    UpdateSubmitted,
)
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
    redis = runtime.redis

    submitted_out = runtime.event_publisher(UpdateSubmitted)
    failed_out = runtime.event_publisher(UpdateFailed)
    finalize_out = runtime.event_publisher(RoundFinalizeSent)

    async def publish_once(record_key: str, identity: str, publish: Callable[[], Awaitable[None]]) -> None:
        key = f"{record_key}:published:{identity}"
        if await run_once(redis, key, publish):
            await redis.expire(key, RECORD_TTL_SECONDS)
        else:
            log.info("answer_already_published", answer=identity)
            DUPLICATES_SKIPPED.labels(service=SERVICE, stage="publish").inc()

    async def publish_answer(record_key: str, answer: UpdateSubmitted | UpdateFailed) -> None:
        async def publish() -> None:
            if isinstance(answer, UpdateSubmitted):
                await submitted_out.publish(answer)
                log.info("update_submitted", tx_hash=answer.tx_hash, gas_used=answer.gas_used,
                         block=answer.block_number, submit_seconds=round(answer.submit_seconds, 3))
            else:
                await failed_out.publish(answer)

        identity = answer.tx_hash if isinstance(answer, UpdateSubmitted) else f"failed:{answer.reason}"
        await publish_once(record_key, identity, publish)

    @runtime.event_subscriber(ProofGenerated)
    async def on_proof_generated(event: ProofGenerated) -> None:
        submitter = state.require()
        structlog.contextvars.bind_contextvars(round=event.round, participant=event.participant,
                                               message_id=event.message_id)
        try:
            answer = await submitter.submit(event)
        except (UnknownRoundError, WrongParticipantError) as exc:
            raise RejectMessage(str(exc)) from None
        await publish_answer(submitter.record_key("update", event.round, event.branch), answer)
        MESSAGES_HANDLED.labels(service=SERVICE, queue=ProofGenerated.routing_key).inc()

    @runtime.event_subscriber(ChainReorged)
    async def on_chain_reorged(event: ChainReorged) -> None:
        submitter = state.require()
        structlog.contextvars.bind_contextvars(fork_block=event.fork_block, message_id=event.message_id)
        await classify_round(redis, runtime.settings.org, event.round)  # RejectMessage if not our chain's
        for record_key, answer in await submitter.resubmit_dropped(event.fork_block):
            await publish_answer(record_key, answer)
        MESSAGES_HANDLED.labels(service=SERVICE, queue=ChainReorged.routing_key).inc()

    @runtime.event_subscriber(RoundDeadline)
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

    @runtime.event_subscriber(RoundVoided)
    async def on_round_voided(event: RoundVoided) -> None:
        submitter = state.require()
        structlog.contextvars.bind_contextvars(round=event.round, message_id=event.message_id)
        await classify_round(redis, runtime.settings.org, event.round)  # RejectMessage if not our chain's
        await submitter.rejoin(event)
        MESSAGES_HANDLED.labels(service=SERVICE, queue=RoundVoided.routing_key).inc()
