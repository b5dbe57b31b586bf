"""Prover service against the real RabbitMQ, Redis, ZoKrates worker and anvil: a job becomes a
proof the contract accepts; a repeated job is proven once; a job that cannot be proven, or is
malformed, is dead-lettered with its reason and the prover goes on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import redis as sync_redis
from eth_account.signers.local import LocalAccount
from web3 import Web3

from services.prover.app import keys_for
from services.prover.handlers import ProverState, register
from services.prover.proving import JobProver
from services.prover.settings import ProverSettings
from services.trainer.rounds import RoundTrainer
from tests.conftest import new_account
from tests.support.brokers import AMQP_URL, REDIS_URL, amqp, bind_observer, body, counter, drain, publish_raw, serving
from wafl.bus.chainstate import write_state
from wafl.bus.messages import ProverJob
from wafl.bus.service import StartupError, check_chain, make_runtime
from wafl.bus.topology import DEAD_LETTER_REASON, Topology
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.core.config import load_config
from wafl.data.datasets import load_org_data
from wafl.zk.build import build_circuit
from wafl.zk.keys import make_development_keys
from wafl.zk.prover import Prover

CONFIG = "wine-13x3-b16"


@pytest.fixture(scope="module")
def worker() -> Iterator[Prover]:
    with Prover(build_circuit(load_config(CONFIG))) as started:
        yield started


@pytest.fixture(scope="module")
def member(w3: Web3) -> LocalAccount:
    return new_account(w3)


@pytest.fixture(scope="module")
def deployment(w3: Web3, member: LocalAccount) -> Deployment:
    admin = new_account(w3)
    return deploy(w3, admin, load_config(CONFIG), quorum=2, round_duration=3600, participants=[member])


def make_job(org: str, deployment: Deployment, w3: Web3, participant: str) -> ProverJob:
    cfg = deployment.model_config
    trainer = RoundTrainer(cfg, load_org_data(cfg, "wine", 0, 2), org, participant)
    job, _ = trainer.train(1, AggregatorClient(w3, deployment).global_words())
    return job


async def run_prover(
    org: str, worker: Prover, deployment: Deployment, publish: list[bytes | dict[str, Any]],
    expect_proofs: int, expect_dead: int, expect_failed: int = 0,
) -> tuple[list[Any], list[Any], list[Any]]:
    settings = ProverSettings(org=org, amqp_url=AMQP_URL, redis_url=REDIS_URL)
    runtime = make_runtime(settings, "prover")
    register(runtime, ProverState(JobProver(deployment.model_config, worker, org)))
    await write_state(runtime.redis, org, 1, 0, 1)  # what the chain watcher records
    async with amqp() as channel:
        proofs = await bind_observer(channel, runtime.topology.events.name, "proof.generated")
        failures = await bind_observer(channel, runtime.topology.events.name, "update.failed")
        async with serving(runtime) as topology:
            dead_queue = await channel.declare_queue(topology.dead_letters.name, passive=True)
            await publish_raw(runtime, publish, queue=topology.prover_jobs.name, persist=True)
            generated = await drain(proofs, expect_proofs, timeout=90, settle=1.0)
            dead = await drain(dead_queue, expect_dead, timeout=30)
            failed = await drain(failures, expect_failed, timeout=10)
    return generated, dead, failed


def test_a_job_becomes_a_proof_the_contract_accepts_once(
    org: str, worker: Prover, deployment: Deployment, w3: Web3, member: LocalAccount,
) -> None:
    job = json.loads(make_job(org, deployment, w3, member.address).model_dump_json())
    skipped = counter("wafl_duplicates_skipped_total", service="prover", stage="prove")
    # The same job twice (a redelivery after a lost ack looks the same): one proof, published again.
    other_branch = {**job, "message_id": "reopened", "branch": "0x" + "44" * 32}
    generated, dead, _ = asyncio.run(run_prover(org, worker, deployment,
                                                [job, {**job, "message_id": "again"}, other_branch],
                                                expect_proofs=3, expect_dead=0))
    assert len(generated) == 3 and not dead
    # The round opened again on another branch is proved again, for that branch.
    reproved = next(body(m) for m in generated if body(m)["branch"] == other_branch["branch"])
    generated = [m for m in generated if body(m)["branch"] == job["branch"]]
    assert len(generated) == 2 and reproved["proof"] != body(generated[0])["proof"]
    first, second = (body(m) for m in generated)
    assert first["proof"] == second["proof"] and first["message_id"] == second["message_id"]
    assert counter("wafl_duplicates_skipped_total", service="prover", stage="prove") == skipped + 1
    assert "x" not in first and first["update_words"] == job["update_words"]
    # The contract's verifier accepts it for this participant and round (a dry-run call).
    AggregatorClient(w3, deployment).check_call(member.address, 1, [int(w) for w in first["update_words"]],
                                                [int(p) for p in first["proof"]])


def test_unprovable_and_malformed_jobs_are_dead_lettered(
    org: str, worker: Prover, deployment: Deployment, w3: Web3, member: LocalAccount,
) -> None:
    job = json.loads(make_job(org, deployment, w3, member.address).model_dump_json())
    words = [int(w) for w in job["update_words"]]
    tampered = {**job, "update_words": [str(words[0] ^ 1), *(str(w) for w in words[1:])]}
    missing_batch = {k: v for k, v in job.items() if k != "x"}
    generated, dead, failed = asyncio.run(run_prover(org, worker, deployment, [tampered, missing_batch, b"\x00"],
                                                     expect_proofs=0, expect_dead=3, expect_failed=1))
    assert not generated
    # The job that can never be proven is also announced: this organisation has no update.
    (notice,) = (body(m) for m in failed)
    assert (notice["round"], notice["participant"], notice["reason"]) == (1, member.address, "unsatisfied_constraint")
    assert str(job["x"][0][0]) not in json.dumps(notice)
    reasons = sorted(str(m.headers[DEAD_LETTER_REASON]) for m in dead)
    assert any(r.startswith("rejected: the job does not satisfy the circuit") for r in reasons), reasons
    assert sum(r.startswith("invalid message") for r in reasons) == 2, reasons
    # The reason names the problem but never carries the private batch.
    assert all(str(job["x"][0][0]) not in r for r in reasons if "circuit" in r)


async def wait_for_queue(name: str, deadline: float) -> str:
    """The queue, once the process under test has declared it."""
    connection = await aio_pika.connect(AMQP_URL)
    try:
        while True:
            channel = await connection.channel()  # a failed passive declare closes its channel
            try:
                await channel.declare_queue(name, passive=True)
                return name
            except aio_pika.exceptions.ChannelNotFoundEntity:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        await connection.close()


@pytest.mark.slow
@pytest.mark.parametrize("graceful_timeout", ["300", "0.05"])
def test_sigterm_finishes_or_returns_the_job_in_hand(
    org: str, deployment: Deployment, w3: Web3, member: LocalAccount, tmp_path: Any, graceful_timeout: str,
) -> None:
    """A prover process stopped mid-proof either finishes and publishes (enough grace) or gives the
    job back to the queue (too little): never acknowledged without a proof."""
    path = tmp_path / "deployment.json"
    deployment.save(path)
    job = make_job(org, deployment, w3, member.address)
    sync_redis.Redis.from_url(REDIS_URL).hset(f"wafl:{org}:chain:state", mapping={
        "round": 1, "deadline": 0, "block": 1, "updated_at": time.time()})
    log_path = tmp_path / "prover.log"
    env = {**os.environ, "WAFL_ORG": org, "WAFL_AMQP_URL": AMQP_URL, "WAFL_REDIS_URL": REDIS_URL,
           "WAFL_DEPLOYMENT": str(path), "WAFL_GRACEFUL_TIMEOUT": graceful_timeout}
    with log_path.open("wb") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "run", "prover"], env=env, stdout=handle,
                                stderr=subprocess.STDOUT)
    topology = Topology(org)

    async def publish_and_stop() -> tuple[list[Any], int]:
        async with amqp() as channel:
            proofs = await bind_observer(channel, topology.events.name, "proof.generated")
            deadline = time.monotonic() + 120
            jobs = await wait_for_queue(topology.prover_jobs.name, deadline)
            await channel.default_exchange.publish(
                aio_pika.Message(job.model_dump_json().encode(), content_type="application/json",
                                 delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=jobs)
            while "proof_started" not in log_path.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 120)
            generated = await drain(proofs, 1 if graceful_timeout == "300" else 0, timeout=5, settle=1.0)
            waiting = await channel.declare_queue(topology.prover_jobs.name, passive=True)
            return generated, waiting.declaration_result.message_count or 0

    try:
        generated, left_in_queue = asyncio.run(publish_and_stop())
    finally:
        if proc.poll() is None:
            proc.kill()
    log = log_path.read_text()
    assert "proof_started" in log, log[-2000:]
    assert proc.returncode == 0, log[-2000:]
    if graceful_timeout == "300":
        assert len(generated) == 1 and left_in_queue == 0, log[-2000:]  # finished, then acknowledged
    else:
        assert not generated and left_in_queue == 1, log[-2000:]  # returned, for another replica


# ---- keys: only those the deployment's verifier holds ---------------------------------------------
def test_the_prover_refuses_keys_the_verifier_does_not_hold(deployment: Deployment, tmp_path: Path) -> None:
    build = build_circuit(load_config(CONFIG))
    settings = ProverSettings(org="keys-check")
    assert keys_for(settings, deployment, build).vk_hash == deployment.vk_hash
    other = make_development_keys(build.r1cs, tmp_path / "other", config=CONFIG, circuit_sha256=build.circuit_sha256)
    with pytest.raises(StartupError, match="are not the ones the deployment's verifier holds"):
        keys_for(ProverSettings(org="keys-check", keys=other.directory), deployment, build)
    ceremony = dataclasses.replace(deployment, keys_kind="ceremony")
    with pytest.raises(StartupError, match="set WAFL_KEYS"):
        keys_for(settings, ceremony, build)
    with pytest.raises(StartupError, match="does not exist"):
        keys_for(ProverSettings(org="keys-check", keys=tmp_path / "absent"), deployment, build)


def test_services_refuse_an_artifact_naming_other_keys(w3: Web3, deployment: Deployment) -> None:
    settings = ProverSettings(org="keys-check", rpc_url=str(w3.provider.endpoint_uri))  # type: ignore[attr-defined]
    assert check_chain(settings, deployment)
    wrong = dataclasses.replace(deployment, vk_hash="0x" + "00" * 32)
    with pytest.raises(StartupError, match=r"verifies with key .* wrong artifact"):
        check_chain(settings, wrong)
