"""Submitter service through the real RabbitMQ, Redis and anvil: proof.generated becomes one
transaction and one update.submitted however often it is delivered, round.deadline closes the
round once, bad input is dead-lettered with its reason; `wafl run submitter` refuses to start on a
missing, invalid or unregistered key with exit code 2 and never shows the key."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from services.submitter.decisions import Submitter
from services.submitter.handlers import SubmitterState, register
from services.submitter.records import TxPolicy
from services.submitter.settings import SubmitterSettings
from tests.conftest import new_account
from tests.support.brokers import AMQP_URL, REDIS_URL, amqp, bind_observer, body, counter, drain
from tests.support.submitting import proof_message
from wafl.bus.messages import RoundDeadline
from wafl.bus.service import declare_topology, make_runtime
from wafl.bus.topology import DEAD_LETTER_REASON, Topology
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil, fund, increase_time
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.core.config import ModelConfig
from wafl.zk.prover import Prover

ROUND_SECONDS = 600


async def until(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def test_proof_and_deadline_messages_through_the_broker(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    admin, member, other = new_account(w3), new_account(w3), new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=ROUND_SECONDS,
                        participants=[member, other])
    aggregator = AggregatorClient(w3, deployment)
    good = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=31)
    good_body = json.loads(good.model_dump_json())
    tampered = {**good_body, "message_id": "tampered",
                "proof": good_body["proof"][6:8] + good_body["proof"][2:6] + good_body["proof"][0:2]}
    inputs: list[bytes | dict[str, Any]] = [
        tampered,
        good_body,
        {**good_body, "message_id": "redelivered"},
        b"{not json",
        {**good_body, "message_id": "future", "round": 9},
        {**good_body, "message_id": "theirs", "participant": other.address},
    ]
    queue = f"wafl.{org}.submitter.proof.generated"
    handled_before = counter("wafl_messages_handled_total", service="submitter", queue="proof.generated")
    deadline_handled_before = counter("wafl_messages_handled_total", service="submitter", queue="round.deadline")
    dead_before = sum(counter("wafl_messages_dead_lettered_total", service="submitter", queue=queue, kind=k)
                      for k in ("invalid", "rejected"))
    start_nonce = w3.eth.get_transaction_count(member.address)

    async def scenario() -> tuple[list[Any], list[Any], list[Any]]:
        settings = SubmitterSettings(org=org, amqp_url=AMQP_URL, redis_url=REDIS_URL)
        runtime = make_runtime(settings, "submitter")
        # Confirmations 0: this anvil mines a block only for a transaction.
        policy = TxPolicy(resend_after=5, confirmations=0)
        sub = Submitter(aggregator, member, runtime.redis, runtime.key(), org, policy)
        register(runtime, SubmitterState(sub))
        topology = Topology(org)
        async with amqp() as channel:
            updates = await bind_observer(channel, topology.events.name, "update.*")
            finalized = await bind_observer(channel, topology.events.name, "round.finalize_sent")
            async with runtime.broker:
                await runtime.broker.start()
                await declare_topology(runtime.broker, topology)
                dead_queue = await channel.declare_queue(topology.dead_letters.name, passive=True)

                async def publish(item: bytes | dict[str, Any], routing_key: str) -> None:
                    payload = item if isinstance(item, bytes) else json.dumps(item).encode()
                    await runtime.broker.publish(payload, exchange=topology.events, routing_key=routing_key,
                                                 content_type="application/json")

                for item in inputs:
                    await publish(item, "proof.generated")
                # Every message dealt with (handled or dead-lettered) before looking at the outputs.
                await until(lambda: counter("wafl_messages_handled_total", service="submitter",
                                            queue="proof.generated") >= handled_before + 3, "3 proofs handled")
                dead = await drain(dead_queue, 3)
                published = await drain(updates, 2)
                await asyncio.to_thread(increase_time, w3, ROUND_SECONDS + 1)
                deadline = RoundDeadline(org=org, round=1, deadline=0)
                for message_id in ("tick", "tick-again"):
                    await publish(json.loads(deadline.model_copy(update={"message_id": message_id})
                                             .model_dump_json()), "round.deadline")
                await until(lambda: counter("wafl_messages_handled_total", service="submitter",
                                            queue="round.deadline") >= deadline_handled_before + 2, "2 deadlines")
                closed = await drain(finalized, 1)
        await runtime.redis.aclose()
        return published, dead, closed

    published, dead, closed = asyncio.run(scenario())
    by_key = sorted((m.routing_key, body(m)) for m in published)
    assert [k for k, _ in by_key] == ["update.failed", "update.submitted"], by_key
    failed, submitted = by_key[0][1], by_key[1][1]
    assert failed["reason"] == "Wafl__InvalidProof" and failed["round"] == 1
    receipt = w3.eth.get_transaction_receipt(submitted["tx_hash"])
    assert receipt["status"] == 1 and submitted["gas_used"] == receipt["gasUsed"]
    assert submitted["participant"] == member.address and submitted["block_number"] == receipt["blockNumber"]
    reasons = sorted(str(m.headers[DEAD_LETTER_REASON]) for m in dead)
    assert len(reasons) == 3, reasons
    assert any(r.startswith("invalid message") for r in reasons), reasons
    assert "rejected: unknown round 9: the contract is at round 1" in reasons
    assert any(r.startswith("rejected: the proof is for participant") for r in reasons), reasons
    assert sum(counter("wafl_messages_dead_lettered_total", service="submitter", queue=queue, kind=k)
               for k in ("invalid", "rejected")) == dead_before + 3
    assert len(closed) == 1 and body(closed[0])["round"] == 1
    assert w3.eth.get_transaction_receipt(body(closed[0])["tx_hash"])["status"] == 1
    # Two transactions in all: the update and the finalisation.
    assert w3.eth.get_transaction_count(member.address) == start_nonce + 2
    assert aggregator.current_round().round == 2


# ---- start-up -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered() -> LocalAccount:
    account: LocalAccount = Account.create()
    return account


@pytest.fixture(scope="module")
def artifact(
    w3: Web3, ref_config: ModelConfig, registered: LocalAccount, tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Deployment]:
    admin = new_account(w3)
    fund(w3, registered.address)
    deployment = deploy(w3, admin, ref_config, quorum=1, round_duration=ROUND_SECONDS,
                        participants=[registered])
    path = tmp_path_factory.mktemp("submitter") / "deployment.json"
    deployment.save(path)
    return path, deployment


def run_submitter(env: dict[str, str], timeout: float = 90) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WAFL_")}
    return subprocess.run([sys.executable, "-m", "tools.cli", "run", "submitter"], env={**clean, **env},
                          capture_output=True, text=True, timeout=timeout)


def base_env(org: str, anvil: Anvil, artifact: tuple[Path, Deployment]) -> dict[str, str]:
    return {"WAFL_ORG": org, "WAFL_RPC_URL": anvil.url, "WAFL_DEPLOYMENT": str(artifact[0]),
            "WAFL_AMQP_URL": AMQP_URL, "WAFL_REDIS_URL": REDIS_URL, "WAFL_METRICS_PORT": "0"}


def assert_refused(proc: subprocess.CompletedProcess[str], expected: str, secrets: list[str]) -> None:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert expected in proc.stderr, proc.stderr
    for secret in secrets:
        assert secret.lower() not in output.lower(), "key material in the output"


def test_refuses_to_start_without_a_usable_key(
    org: str, anvil: Anvil, artifact: tuple[Path, Deployment], tmp_path: Path,
) -> None:
    env = base_env(org, anvil, artifact)
    missing = tmp_path / "nowhere.key"
    assert_refused(run_submitter({**env, "WAFL_KEY_FILE": str(missing)}),
                   f"key file {missing} (WAFL_KEY_FILE) does not exist", [])
    assert_refused(run_submitter(env), "no signing key: set WAFL_KEY_FILE", [])
    # Almost a key (63 digits): refused, and even that near-key is never printed.
    near = Account.create().key.hex()[:63]
    bad = tmp_path / "bad.key"
    bad.write_text(near + "\n")
    assert_refused(run_submitter({**env, "WAFL_KEY_FILE": str(bad)}),
                   f"key file {bad} (WAFL_KEY_FILE) does not hold a private key", [near])
    directory = tmp_path / "keys.d"
    directory.mkdir()
    assert_refused(run_submitter({**env, "WAFL_KEY_FILE": str(directory)}),
                   f"key file {directory} (WAFL_KEY_FILE) is a directory, not a key file", [])


def test_refuses_a_key_file_it_may_not_read(
    org: str, anvil: Anvil, artifact: tuple[Path, Deployment], tmp_path: Path,
) -> None:
    if os.geteuid() == 0:
        # Root reads a file of mode 000; nobody reads its own /proc/self/mem from offset 0 (EIO).
        unreadable, reason = Path("/proc/self/mem"), "Input/output error"
    else:
        unreadable, reason = tmp_path / "unreadable.key", "Permission denied"
        unreadable.write_text(Account.create().key.hex())
        unreadable.chmod(0)
    assert_refused(run_submitter({**base_env(org, anvil, artifact), "WAFL_KEY_FILE": str(unreadable)}),
                   f"cannot read key file {unreadable} (WAFL_KEY_FILE): {reason}", [])


def test_refuses_to_start_with_an_unregistered_key(
    org: str, anvil: Anvil, w3: Web3, artifact: tuple[Path, Deployment], tmp_path: Path,
) -> None:
    env = base_env(org, anvil, artifact)
    stranger: LocalAccount = new_account(w3)
    key_hex = stranger.key.hex()
    secrets = [key_hex, key_hex.removeprefix("0x")]
    key_file = tmp_path / "stranger.key"
    key_file.write_text("0x" + key_hex.removeprefix("0x"))
    key_file.chmod(0o600)
    expected = f"the signing key's address {stranger.address} is not a registered participant"
    assert_refused(run_submitter({**env, "WAFL_KEY_FILE": str(key_file)}), expected, secrets)
    # The same key from the environment instead of a file.
    assert_refused(run_submitter({**env, "WAFL_SUBMITTER_KEY": key_hex}), expected, secrets)


def test_starts_with_a_registered_key_and_never_logs_it(
    org: str, anvil: Anvil, artifact: tuple[Path, Deployment], registered: LocalAccount, tmp_path: Path,
) -> None:
    key_hex = registered.key.hex().removeprefix("0x")
    key_file = tmp_path / "org.key"
    key_file.write_text(key_hex + "\n")
    key_file.chmod(0o600)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WAFL_")}
    env = {**clean, **base_env(org, anvil, artifact), "WAFL_KEY_FILE": str(key_file), "WAFL_LOG_LEVEL": "debug"}
    log_path = tmp_path / "submitter.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "run", "submitter"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "service_started" not in log_path.read_text() and proc.poll() is None:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        finally:
            proc.terminate()
            code = proc.wait(timeout=60)
    output = log_path.read_text()
    assert code == 0, output
    started = [json.loads(line) for line in output.splitlines() if '"service_started"' in line]
    assert started and started[0]["address"] == registered.address and started[0]["org"] == org
    assert key_hex.lower() not in output.lower()
