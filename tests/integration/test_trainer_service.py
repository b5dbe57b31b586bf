"""Trainer service against the real RabbitMQ, Redis and anvil: trains once per round, keeps the
batch on the private work queue, dead-letters bad input with its reason and goes on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from web3 import Web3

from services.trainer.handlers import TrainerState, register
from services.trainer.rounds import RoundTrainer
from services.trainer.settings import TrainerSettings
from tests.conftest import new_account
from tests.support.brokers import AMQP_URL, amqp, bind_observer, body, counter, drain
from wafl.bus.chainstate import write_state
from wafl.bus.messages import RoundOpened
from wafl.bus.service import declare_topology, make_runtime
from wafl.bus.topology import DEAD_LETTER_REASON, Topology
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.core.config import load_config
from wafl.core.packing import unpack
from wafl.data.datasets import load_org_data

CONFIG = "wine-13x3-b16"


@pytest.fixture(scope="module")
def deployment(w3: Web3) -> Deployment:
    admin, member = new_account(w3), new_account(w3)
    return deploy(w3, admin, load_config(CONFIG), quorum=1, round_duration=3600, participants=[member])


def opened(org: str, deployment: Deployment, w3: Web3, round_id: int = 1) -> RoundOpened:
    words = AggregatorClient(w3, deployment).global_words()
    return RoundOpened(org=org, round=round_id, deadline=0, global_words=words, block_number=1,
                       block_hash="0x" + "11" * 32, tx_hash="0x" + "22" * 32, log_index=0)


async def run_trainer(org: str, deployment: Deployment, w3: Web3, publish: list[bytes | dict[str, Any]],
                      expect_jobs: int, expect_dead: int) -> tuple[list[Any], list[Any], list[Any]]:
    cfg = deployment.model_config
    participant = "0x" + "ab" * 20
    settings = TrainerSettings(org=org, participant=participant, amqp_url=AMQP_URL)
    runtime = make_runtime(settings, "trainer")
    data = load_org_data(cfg, "wine", 0, 2)
    register(runtime, TrainerState(RoundTrainer(cfg, data, org, participant)))
    # What the chain_watcher records before it publishes round.opened.
    await write_state(runtime.redis, org, AggregatorClient(w3, deployment).current_round().round, 0, 1)
    topology = Topology(org)
    async with amqp() as channel:
        events = await bind_observer(channel, topology.events.name, "update.trained")
        async with runtime.broker:
            await runtime.broker.start()
            await declare_topology(runtime.broker, topology)
            jobs_queue = await channel.declare_queue(topology.prover_jobs.name, passive=True)
            dead_queue = await channel.declare_queue(topology.dead_letters.name, passive=True)
            for item in publish:
                payload = item if isinstance(item, bytes) else json.dumps(item).encode()
                await runtime.broker.publish(payload, exchange=topology.events, routing_key="round.opened",
                                             content_type="application/json")
            jobs = await drain(jobs_queue, expect_jobs)
            dead = await drain(dead_queue, expect_dead)
            trained = await drain(events, expect_jobs)
    await runtime.redis.aclose()
    return jobs, trained, dead


def test_round_opened_trains_once_and_bad_input_is_dead_lettered(org: str, deployment: Deployment, w3: Web3) -> None:
    good = json.loads(opened(org, deployment, w3).model_dump_json())
    wrong_version = {**good, "schema_version": 2}
    unknown_round = json.loads(opened(org, deployment, w3, round_id=5).model_dump_json())
    queue = f"wafl.{org}.trainer.round.opened"
    before_dead = {k: counter("wafl_messages_dead_lettered_total", service="trainer", queue=queue, kind=k)
                   for k in ("invalid", "rejected")}
    jobs, trained, dead = asyncio.run(run_trainer(
        org, deployment, w3,
        [good, b"{not json", wrong_version, unknown_round, {**good, "message_id": "again"}],
        expect_jobs=1, expect_dead=3,
    ))
    # One round, one job, however often round.opened arrives.
    assert len(jobs) == 1 and len(trained) == 1
    job = body(jobs[0])
    cfg = deployment.model_config
    data = load_org_data(cfg, "wine", 0, 2)
    x, y = data.batch(cfg, 1)
    assert job["x"] == x.tolist() and job["y"] == y.tolist()
    assert len(unpack(cfg, [int(w) for w in job["update_words"]])) == cfg.n_weights
    # The public summary carries no data.
    summary = body(trained[0])
    assert "x" not in summary and "y" not in summary and summary["update_words"] == job["update_words"]
    reasons = sorted(str(m.headers[DEAD_LETTER_REASON]) for m in dead)
    assert len(reasons) == 3
    assert any(r.startswith("invalid message: body") or "valid dictionary" in r for r in reasons), reasons
    assert any("schema_version" in r for r in reasons), reasons
    assert any(r == "rejected: unknown round 5: the contract is at round 1" for r in reasons), reasons
    assert counter("wafl_messages_dead_lettered_total", service="trainer", queue=f"wafl.{org}.trainer.round.opened",
                   kind="invalid") == before_dead["invalid"] + 2
    assert counter("wafl_messages_dead_lettered_total", service="trainer", queue=f"wafl.{org}.trainer.round.opened",
                   kind="rejected") == before_dead["rejected"] + 1
    assert counter("wafl_duplicates_skipped_total", service="trainer", stage="train") >= 1
