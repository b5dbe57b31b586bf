"""Bad input on every consumed queue (real RabbitMQ and Redis, every service's real handlers):
a malformed body, a wrong schema version and a valid-looking message for an unknown round are
each dead-lettered with their reason and counted, and the services go on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from eth_account.signers.local import LocalAccount
from prometheus_client import REGISTRY
from web3 import Web3

from tests.conftest import new_account
from tests.support.brokers import AMQP_URL, REDIS_URL, amqp, drain
from tools.simulate.federation import HonestOrg, Plan
from wafl.bus.chainstate import write_state
from wafl.bus.messages import (
    ChainReorged,
    MemberRejoined,
    Message,
    ProofGenerated,
    ProverJob,
    RoundDeadline,
    RoundFinalized,
    RoundFinalizeSent,
    RoundOpened,
    RoundVoided,
    UpdateAccepted,
    UpdateFailed,
    UpdateSubmitted,
    UpdateTrained,
)
from wafl.bus.service import declare_topology
from wafl.bus.topology import DEAD_LETTER_QUEUE, DEAD_LETTER_REASON, SUBSCRIPTIONS
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.core.config import load_config
from wafl.data.fedsplit import bundled
from wafl.zk.build import build_circuit
from wafl.zk.prover import Prover

CONFIG = "wine-13x3-b16"
HASH = "0x" + "ab" * 32
WHO = "0x" + "12" * 20
UNKNOWN_ROUND = 99
# Topics that name no round the chain must have opened (member.rejoined's from_round is the next
# round): a valid-looking one has nothing to be rejected for.
ROUNDLESS = frozenset({"member.rejoined"})


def sample(routing_key: str, org: str, round_id: int, who: str = WHO) -> Message:
    """A valid-looking message of each consumed type."""
    chain = {"block_number": 1, "block_hash": HASH, "tx_hash": HASH, "log_index": 0}
    words = [1, 2, 3, 4]
    samples: dict[str, Message] = {
        "round.opened": RoundOpened(org=org, round=round_id, deadline=1, global_words=words, **chain),  # type: ignore[arg-type]
        "update.accepted": UpdateAccepted(org=org, round=round_id, participant=who, accepted=1, **chain),  # type: ignore[arg-type]
        "round.finalized": RoundFinalized(org=org, round=round_id, accepted=1, global_words=words, **chain),  # type: ignore[arg-type]
        "round.voided": RoundVoided(org=org, round=round_id, missing=[who], excluded=True, **chain),  # type: ignore[arg-type]
        "member.rejoined": MemberRejoined(org=org, participant=who, from_round=round_id, **chain),  # type: ignore[arg-type]
        "round.deadline": RoundDeadline(org=org, round=round_id, deadline=1),
        "chain.reorged": ChainReorged(org=org, fork_block=1, fork_hash=HASH, depth=1, dropped_blocks=[HASH],
                                      round=round_id),
        "update.trained": UpdateTrained(org=org, round=round_id, participant=who, update_words=words,
                                        train_seconds=0.1),
        "proof.generated": ProofGenerated(org=org, round=round_id, branch=HASH, participant=who, update_words=words,
                                          proof=[1] * 8, proof_seconds=1.0, witness_seconds=0.1, queue_seconds=0.0),
        "update.submitted": UpdateSubmitted(org=org, round=round_id, participant=who, tx_hash=HASH, block_number=1,
                                            gas_used=1, submit_seconds=0.1),
        "update.failed": UpdateFailed(org=org, round=round_id, participant=who, reason="Wafl__InvalidProof"),
        "round.finalize_sent": RoundFinalizeSent(org=org, round=round_id, tx_hash=HASH, gas_used=1),
        "prover.job": ProverJob(org=org, round=round_id, branch=HASH, participant=who, global_words=words,
                                update_words=words, x=[[0] * 13] * 16, y=[[1, 0, 0]] * 16,
                                trained_at=datetime.now(UTC)),
    }
    return samples[routing_key]


def consumed() -> list[tuple[str, str]]:
    """(service, routing key) of every consumed queue."""
    return [(s, k) for s, keys in SUBSCRIPTIONS.items() for k in keys] + [("prover", "prover.job")]


@pytest.fixture(scope="module")
def member(w3: Web3) -> LocalAccount:
    return new_account(w3)


@pytest.fixture(scope="module")
def deployment(w3: Web3, member: LocalAccount) -> Deployment:
    return deploy(w3, new_account(w3), load_config(CONFIG), quorum=2, round_duration=3600,
                  participants=[member])


@pytest.fixture(scope="module")
def worker() -> Iterator[Prover]:
    with Prover(build_circuit(load_config(CONFIG))) as started:
        yield started


def dead_lettered(service: str, queue: str, kind: str) -> float:
    labels = {"service": service, "queue": queue, "kind": kind}
    return REGISTRY.get_sample_value("wafl_messages_dead_lettered_total", labels) or 0.0


def test_every_consumed_queue_dead_letters_bad_input_and_goes_on(
    org: str, w3: Web3, deployment: Deployment, member: LocalAccount, worker: Prover,
) -> None:
    cfg = load_config(CONFIG)
    plan = Plan(cfg, bundled(cfg, "wine", 2), rounds=1)
    asyncio.run(_scenario(org, plan, deployment, w3, member, worker))


async def _scenario(org: str, plan: Plan, deployment: Deployment, w3: Web3, member: LocalAccount,
                    worker: Prover) -> None:
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    stack = HonestOrg(org, 0, member, plan, deployment, w3, worker, redis, AMQP_URL)
    queues = {(s, k): (stack.topology.prover_jobs.name if k == "prover.job" else
                       stack.topology.service_queue(s, k).name) for s, k in consumed()}
    before = {(s, k, kind): dead_lettered(s, q, kind)
              for (s, k), q in queues.items() for kind in ("invalid", "rejected")}
    try:
        await write_state(redis, org, 1, 2**40, 1)  # what the chain watcher records: round 1 is open
        async with amqp() as channel:
            await stack.broker.start()
            await declare_topology(stack.broker, stack.topology)
            dead_queue = await channel.declare_queue(stack.topology.dead_letters.name, passive=True)
            # Once per topic: a topic reaches every queue that consumes it.
            for key in sorted({k for _, k in queues}):
                good = json.loads(sample(key, org, 1, member.address).model_dump_json())
                bad_bodies = [
                    b'{"round": ',  # malformed
                    json.dumps({**good, "schema_version": 2}).encode(),
                ]
                if key not in ROUNDLESS:
                    bad_bodies.append(sample(key, org, UNKNOWN_ROUND, member.address).model_dump_json().encode())
                for body in bad_bodies:
                    if key == "prover.job":
                        await stack.broker.publish(body, queue=stack.topology.prover_jobs.name,
                                                   content_type="application/json")
                    else:
                        await stack.broker.publish(body, exchange=stack.topology.events, routing_key=key,
                                                   content_type="application/json")
            expected = {queue: 2 if key in ROUNDLESS else 3 for (_, key), queue in queues.items()}
            dead = await drain(dead_queue, sum(expected.values()), timeout=60, settle=2.0)
        by_queue: dict[str, list[str]] = {}
        for message in dead:
            by_queue.setdefault(str(message.headers[DEAD_LETTER_QUEUE]), []).append(
                str(message.headers[DEAD_LETTER_REASON]))
        for (service, key), queue in queues.items():
            reasons = sorted(by_queue.get(queue, []))
            assert len(reasons) == expected[queue], (queue, reasons)
            assert any(r.startswith("invalid message: body is not JSON") or "invalid message: body" in r
                       for r in reasons), reasons
            assert any("schema_version" in r for r in reasons), reasons
            rejected = 0 if key in ROUNDLESS else 1
            assert rejected == sum(
                r == f"rejected: unknown round {UNKNOWN_ROUND}: the contract is at round 1" for r in reasons), (
                queue, reasons)
            assert dead_lettered(service, queue, "invalid") == before[(service, key, "invalid")] + 2
            assert dead_lettered(service, queue, "rejected") == before[(service, key, "rejected")] + rejected
        # Nothing else was dead-lettered, and the services still consume: a good message goes through.
        assert sum(len(v) for v in by_queue.values()) == sum(expected.values())
        await _still_consuming(stack, org)
    finally:  # the org fixture removes the topology and the Redis keys
        await stack.broker.stop()
        await redis.aclose()


async def _still_consuming(stack: HonestOrg, org: str) -> None:
    event = sample("update.failed", org, 1)
    await stack.broker.publish(event, exchange=stack.topology.events, routing_key=event.routing_key)
    registry: Any = stack.book.updates_failed
    for _ in range(100):
        if registry.labels(reason="Wafl__InvalidProof")._value.get() >= 1:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("metrics stopped consuming after bad input")
