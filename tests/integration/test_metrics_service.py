"""Metrics service against the real RabbitMQ and Redis: every public event is counted once
(repeats with the same id are not), the global model is evaluated on held-out data when a round
is finalised, a malformed event is dead-lettered, and the chain's totals follow a reorganisation
and survive a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.metrics.book import MetricsBook
from services.metrics.handlers import MetricsState, register, restore_totals
from services.metrics.settings import MetricsSettings
from services.trainer.rounds import RoundTrainer
from tests.support.brokers import AMQP_URL, REDIS_URL, amqp, drain, publish_raw, serving
from wafl.bus.chainstate import write_state
from wafl.bus.messages import (
    ChainReorged,
    Message,
    ProofGenerated,
    RoundDeadline,
    RoundFinalized,
    RoundFinalizeSent,
    RoundOpened,
    UpdateAccepted,
    UpdateFailed,
    UpdateSubmitted,
    UpdateTrained,
)
from wafl.bus.service import make_runtime
from wafl.bus.topology import DEAD_LETTER_REASON
from wafl.core.config import load_config
from wafl.core.fixedpoint import Weights
from wafl.core.packing import pack, unpack
from wafl.data.datasets import evaluate, load_org_data

CONFIG = "wine-13x3-b16"
PARTICIPANT = "0x" + "ab" * 20
HASH = "0x" + "12" * 32


def chain(n: int) -> dict[str, object]:
    return {"block_number": n, "block_hash": HASH, "tx_hash": HASH, "log_index": 0, "message_id": f"{HASH}:{n}"}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_events_are_counted_once_and_the_model_is_evaluated(org: str) -> None:
    cfg = load_config(CONFIG)
    data = load_org_data(cfg, "wine", 0, 2)
    zero = pack(cfg, [0] * cfg.n_weights)
    job, _ = RoundTrainer(cfg, data, org, PARTICIPANT).train(1, zero)
    trained = list(job.update_words)
    accepted = UpdateAccepted(org=org, round=1, participant=PARTICIPANT, accepted=1, **chain(3))  # type: ignore[arg-type]
    events: list[Message] = [
        RoundOpened(org=org, round=1, deadline=100, global_words=zero, **chain(1)),  # type: ignore[arg-type]
        UpdateTrained(org=org, round=1, participant=PARTICIPANT, update_words=trained, train_seconds=0.02),
        ProofGenerated(org=org, round=1, branch=HASH, participant=PARTICIPANT, update_words=trained, proof=[1] * 8,
                       proof_seconds=1.5, witness_seconds=0.25, queue_seconds=0.1),
        UpdateSubmitted(org=org, round=1, participant=PARTICIPANT, tx_hash=HASH, block_number=3, gas_used=290_000,
                        submit_seconds=0.4),
        accepted,
        accepted,  # redelivered after a chain watcher restart: the same id
        UpdateFailed(org=org, round=1, participant=PARTICIPANT, reason="Wafl__AlreadySubmitted"),
        RoundDeadline(org=org, round=1, deadline=100),
        RoundFinalizeSent(org=org, round=1, tx_hash=HASH, gas_used=150_000),
        RoundFinalized(org=org, round=1, accepted=1, global_words=trained, **chain(4)),  # type: ignore[arg-type]
        RoundOpened(org=org, round=2, deadline=200, global_words=trained, **chain(5)),  # type: ignore[arg-type]
    ]
    registry = CollectorRegistry()
    dead = asyncio.run(run_metrics(org, MetricsBook(registry, cfg, data), registry, events))

    assert value(registry, "wafl_chain_rounds_opened") == 2
    assert value(registry, "wafl_chain_rounds_finalized") == 1
    assert value(registry, "wafl_chain_updates_accepted") == 1
    assert value(registry, "wafl_updates_trained_total") == 1
    assert value(registry, "wafl_proofs_generated_total") == 1
    assert value(registry, "wafl_updates_submitted_total") == 1
    assert value(registry, "wafl_updates_failed_total", reason="Wafl__AlreadySubmitted") == 1
    assert value(registry, "wafl_round_deadlines_total") == 1
    assert value(registry, "wafl_finalize_sent_total") == 1
    assert value(registry, "wafl_current_round") == 2
    assert value(registry, "wafl_proof_duration_seconds_sum") == pytest.approx(1.75)
    assert value(registry, "wafl_tx_gas_used_sum", kind="update") == 290_000
    assert value(registry, "wafl_tx_gas_used_count", kind="finalize") == 1
    model = Weights.from_flat(cfg, unpack(cfg, trained))
    accuracy, loss = evaluate(cfg, np.asarray(model.w), np.asarray(model.b), data.x_test, data.y_test)
    assert value(registry, "wafl_global_model_accuracy") == pytest.approx(accuracy)
    assert value(registry, "wafl_global_model_loss") == pytest.approx(loss)
    assert value(registry, "wafl_global_model_round") == 1
    assert [str(m.headers[DEAD_LETTER_REASON]).split(":")[0] for m in dead] == ["invalid message"]


async def run_metrics(org: str, book: MetricsBook, registry: CollectorRegistry, events: list[Message]) -> list[object]:
    settings = MetricsSettings(org=org, amqp_url=AMQP_URL, redis_url=REDIS_URL)
    runtime = make_runtime(settings, "metrics")
    register(runtime, MetricsState(book))
    await write_state(runtime.redis, org, 2, 200, 5)
    async with amqp() as channel, serving(runtime) as topology:
        for event in events:
            await runtime.broker.publish(event, exchange=topology.events, routing_key=event.routing_key, persist=True)
        await publish_raw(runtime, [b'{"round": "one"}'], exchange=topology.events, routing_key="update.accepted")
        dead_queue = await channel.declare_queue(topology.dead_letters.name, passive=True)
        dead = await drain(dead_queue, 1, timeout=30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and value(registry, "wafl_chain_rounds_opened") < 2:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # a repeat, if it were counted, would arrive by now
    return list(dead)


def on_branch(block: int, block_hash: str, log_index: int = 0) -> dict[str, object]:
    return {"block_number": block, "block_hash": block_hash, "tx_hash": HASH, "log_index": log_index,
            "message_id": f"{block_hash}:{log_index}"}


def test_chain_totals_follow_a_reorganisation_and_survive_a_restart(org: str) -> None:
    """Blocks 3 and 4 (an update, the finalisation, round 2's opening) are dropped; the new
    branch's block 3 accepts the update again. That event arrives before the reorganisation does
    (they travel on different queues): it is kept."""
    words = [0] * 4
    old_3, old_4, new_3 = ("0x" + c * 64 for c in "abc")
    events: list[Message] = [
        RoundOpened(org=org, round=1, deadline=100, global_words=words, **on_branch(1, HASH)),  # type: ignore[arg-type]
        UpdateAccepted(org=org, round=1, participant=PARTICIPANT, accepted=1, **on_branch(3, old_3)),  # type: ignore[arg-type]
        RoundFinalized(org=org, round=1, accepted=1, global_words=words, **on_branch(4, old_4)),  # type: ignore[arg-type]
        RoundOpened(org=org, round=2, deadline=200, global_words=words, **on_branch(4, old_4, 1)),  # type: ignore[arg-type]
        UpdateAccepted(org=org, round=1, participant=PARTICIPANT, accepted=1, **on_branch(3, new_3)),  # type: ignore[arg-type]
        ChainReorged(org=org, message_id="reorg:2:" + old_4, fork_block=2, fork_hash=HASH, depth=2,
                     dropped_blocks=[old_3, old_4], round=1),
    ]
    registry = CollectorRegistry()
    book = MetricsBook(registry)
    asyncio.run(run_until(org, book, events, lambda: value(registry, "wafl_chain_reorgs_total") == 1))
    totals = {name: value(registry, name) for name in
              ("wafl_chain_rounds_opened", "wafl_chain_rounds_finalized", "wafl_chain_updates_accepted")}
    assert totals == {"wafl_chain_rounds_opened": 1, "wafl_chain_rounds_finalized": 0,
                      "wafl_chain_updates_accepted": 1}
    assert value(registry, "wafl_chain_reorg_depth_blocks_sum") == 2
    assert value(registry, "wafl_current_round") == 1

    # A restarted metrics service reads the totals back.
    restarted = CollectorRegistry()
    asyncio.run(restore(org, MetricsBook(restarted)))
    assert {name: value(restarted, name) for name in totals} == totals


async def run_until(org: str, book: MetricsBook, events: list[Message], done: Callable[[], bool]) -> None:
    settings = MetricsSettings(org=org, amqp_url=AMQP_URL, redis_url=REDIS_URL)
    runtime = make_runtime(settings, "metrics")
    register(runtime, MetricsState(book))
    await write_state(runtime.redis, org, 2, 200, 5)
    async with serving(runtime) as topology:
        for event in events:
            await runtime.broker.publish(event, exchange=topology.events, routing_key=event.routing_key, persist=True)
            if isinstance(event, UpdateAccepted) and event.block_hash.startswith("0xc"):
                await asyncio.sleep(1.0)  # the new branch's event is counted before the reorganisation
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not done():
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # anything still on its way is counted by now


async def restore(org: str, book: MetricsBook) -> None:
    runtime = make_runtime(MetricsSettings(org=org, amqp_url=AMQP_URL, redis_url=REDIS_URL), "metrics")
    await restore_totals(register(runtime, MetricsState(book)), book)
