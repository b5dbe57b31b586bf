"""Metrics handlers: every public topic, each event counted once; the chain's totals from the
ledger, so that they equal the canonical chain after a reorganisation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog

from services.metrics.book import MetricsBook
from services.metrics.ledger import ChainLedger
from wafl.bus.chainstate import classify_round
from wafl.bus.messages import PUBLIC_MESSAGES, ChainEvent, ChainReorged, Message
from wafl.bus.observability import DUPLICATES_SKIPPED, MESSAGES_HANDLED
from wafl.bus.service import Runtime

SERVICE = "metrics"
SEEN_TTL_SECONDS = 14 * 24 * 3600
log = structlog.get_logger()


@dataclass
class MetricsState:
    book: MetricsBook | None = None


def register(runtime: Runtime, state: MetricsState) -> ChainLedger:
    ledger = ChainLedger(runtime.redis, runtime.key("ledger"))
    for model in PUBLIC_MESSAGES:
        _subscribe(runtime, state, ledger, model)
    return ledger


async def restore_totals(ledger: ChainLedger, book: MetricsBook) -> None:
    """At start-up: the totals as the ledger holds them (they survive a restart)."""
    book.set_chain_totals(await ledger.totals())


def _subscribe(runtime: Runtime, state: MetricsState, ledger: ChainLedger, model: type[Message]) -> None:
    queue = runtime.topology.service_queue(SERVICE, model.routing_key)

    async def handle(event: Any) -> None:
        if state.book is None:
            raise RuntimeError("metrics used before start-up")
        round_id = getattr(event, "round", None)
        if round_id is not None:
            await classify_round(runtime.redis, runtime.settings.org, round_id)  # RejectMessage if unknown
        # Chain events have deterministic ids (tx, log index); a repeat is not counted twice.
        if not await runtime.redis.set(runtime.key("seen", event.message_id), 1, nx=True, ex=SEEN_TTL_SECONDS):
            DUPLICATES_SKIPPED.labels(service=SERVICE, stage="count").inc()
            return
        state.book.record(event)
        if isinstance(event, ChainEvent):
            await ledger.add(event)
        elif isinstance(event, ChainReorged):
            dropped = await ledger.drop(event)
            log.warning("chain_reorged", fork_block=event.fork_block, depth=event.depth, events_dropped=dropped)
        if isinstance(event, ChainEvent | ChainReorged):
            state.book.set_chain_totals(await ledger.totals())
        MESSAGES_HANDLED.labels(service=SERVICE, queue=queue.name).inc()

    handle.__annotations__["event"] = model
    handle.__name__ = f"on_{model.routing_key.replace('.', '_')}"
    runtime.event_subscriber(model)(handle)

