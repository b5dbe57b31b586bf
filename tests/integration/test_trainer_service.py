"""Trainer service against the real RabbitMQ, Redis and anvil: trains once per round, keeps the
batch on the private work queue, dead-letters bad input with its reason and goes on; a round whose
step cannot be proven is update.failed, once, with the reason."""

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
from tests.support.brokers import AMQP_URL, amqp, bind_observer, body, counter, drain, publish_raw, serving
from wafl.bus.chainstate import write_state
from wafl.bus.messages import RoundOpened
from wafl.bus.service import make_runtime
from wafl.bus.topology import DEAD_LETTER_REASON
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.core.config import load_config
from wafl.core.packing import unpack
from wafl.data.datasets import OrgData, load_org_data

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
                      expect_jobs: int, expect_dead: int, data: OrgData | None = None,
                      expect_failed: int = 0) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    cfg = deployment.model_config
    participant = "0x" + "ab" * 20
    settings = TrainerSettings(org=org, participant=participant, amqp_url=AMQP_URL)
    runtime = make_runtime(settings, "trainer")
    data = data or load_org_data(cfg, "wine", 0, 2)
    register(runtime, TrainerState(RoundTrainer(cfg, data, org, participant)))
    # What the chain_watcher records before it publishes round.opened.
    await write_state(runtime.redis, org, AggregatorClient(w3, deployment).current_round().round, 0, 1)
    async with amqp() as channel:
        events = await bind_observer(channel, runtime.topology.events.name, "update.trained")
        failures = await bind_observer(channel, runtime.topology.events.name, "update.failed")
        async with serving(runtime) as topology:
            jobs_queue = await channel.declare_queue(topology.prover_jobs.name, passive=True)
            dead_queue = await channel.declare_queue(topology.dead_letters.name, passive=True)
            await publish_raw(runtime, publish, exchange=topology.events, routing_key="round.opened")
            jobs = await drain(jobs_queue, expect_jobs)
            dead = await drain(dead_queue, expect_dead)
            trained = await drain(events, expect_jobs)
            failed = await drain(failures, expect_failed)
    return jobs, trained, dead, failed


def test_round_opened_trains_once_and_bad_input_is_dead_lettered(org: str, deployment: Deployment, w3: Web3) -> None:
    good = json.loads(opened(org, deployment, w3).model_dump_json())
    wrong_version = {**good, "schema_version": 2}
    unknown_round = json.loads(opened(org, deployment, w3, round_id=5).model_dump_json())
    queue = f"wafl.{org}.trainer.round.opened"
    before_dead = {k: counter("wafl_messages_dead_lettered_total", service="trainer", queue=queue, kind=k)
                   for k in ("invalid", "rejected")}
    jobs, trained, dead, failed = asyncio.run(run_trainer(
        org, deployment, w3,
        [good, b"{not json", wrong_version, unknown_round, {**good, "message_id": "again"}],
        expect_jobs=1, expect_dead=3,
    ))
    # One round, one job, however often round.opened arrives.
    assert len(jobs) == 1 and len(trained) == 1 and not failed
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


def test_an_unprovable_step_is_update_failed_once_with_its_reason(org: str, deployment: Deployment, w3: Web3) -> None:
    """Data outside the configuration's range (what quantisation never produces, e.g. a trainer
    fed by hand) cannot be proven: the trainer says so on update.failed, once per round, without
    the private value, publishes no job, and nothing is retried or dead-lettered."""
    cfg = deployment.model_config
    good = load_org_data(cfg, "wine", 0, 2)
    x = good.x_train.copy()
    x[0, 3] = cfg.data_max + 4321
    bad = OrgData(x, good.y_train, good.x_test, good.y_test)
    event = json.loads(opened(org, deployment, w3).model_dump_json())
    jobs, trained, dead, failed = asyncio.run(run_trainer(
        org, deployment, w3, [event, {**event, "message_id": "again"}],
        expect_jobs=0, expect_dead=0, data=bad, expect_failed=1,
    ))
    assert not jobs and not trained and not dead
    assert len(failed) == 1
    notice = body(failed[0])
    assert (notice["round"], notice["participant"], notice["reason"]) == (1, "0x" + "ab" * 20, "unprovable_step")
    assert notice["detail"] == f"FixedPointRangeError: X[3] is outside [{cfg.data_min}, {cfg.data_max}]"
    assert str(cfg.data_max + 4321) not in failed[0].body.decode()


def test_a_round_opened_again_on_another_branch_is_trained_again(org: str, deployment: Deployment, w3: Web3) -> None:
    """After a reorganisation the round opens in another block (perhaps from another global
    model): a new job for that branch. The same opening repeated is still trained once."""
    first = json.loads(opened(org, deployment, w3).model_dump_json())
    reopened = {**first, "block_hash": "0x" + "33" * 32, "block_number": 2, "message_id": "0x" + "33" * 32 + ":0"}
    jobs, trained, dead, _ = asyncio.run(run_trainer(
        org, deployment, w3, [first, reopened, {**reopened, "message_id": "again"}], expect_jobs=2, expect_dead=0,
    ))
    assert len(jobs) == 2 and len(trained) == 2 and not dead
    assert sorted(body(j)["branch"] for j in jobs) == sorted([first["block_hash"], reopened["block_hash"]])
    assert body(jobs[0])["update_words"] == body(jobs[1])["update_words"]  # the same global model here
