"""A whole federation through the real brokers: 3 organisations, every service a separate OS
process, 2 prover replicas in one organisation, 3 rounds; then faults, each with the round
completing and nothing lost or done twice."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import redis

from tools.localnet import Federation, Org, close_vhost_connections, federation
from wafl.core.config import load_config
from wafl.core.fixedpoint import Weights
from wafl.core.packing import unpack
from wafl.data.datasets import evaluate, load_org_data
from wafl.zk.build import build_circuit

CONFIG = "wine-13x3-b16"
ROUND_TIMEOUT = 240.0


def scrape(port: int) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return value
    return 0.0


def wait_for_metric(port: int, name: str, at_least: float, timeout: float = 60.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = metric(scrape(port), name, **labels)
        if value >= at_least:
            return value
        time.sleep(0.5)
    return value


def global_models_by_round(fed: Federation) -> dict[int, Weights]:
    """The global model each round started from, from the chain's RoundOpened logs."""
    logs = fed.aggregator.contract.events.RoundOpened().get_logs(from_block=fed.deployment.start_block)
    cfg = fed.cfg
    return {int(log["args"]["round"]): Weights.from_flat(cfg, unpack(cfg, [int(w) for w in log["args"]["globalWords"]]))
            for log in logs}


def accepted_per_round(fed: Federation) -> dict[int, list[str]]:
    logs = fed.aggregator.contract.events.UpdateAccepted().get_logs(from_block=fed.deployment.start_block)
    rounds: dict[int, list[str]] = {}
    for log in logs:
        rounds.setdefault(int(log["args"]["round"]), []).append(log["args"]["participant"])
    return rounds


def no_secret_anywhere(fed: Federation, extra_text: str = "") -> None:
    texts = [p.log() for org in fed.orgs for p in org.processes] + [extra_text]
    for org in fed.orgs:
        key = org.account.key.hex().removeprefix("0x")
        for text in texts:
            assert key.lower() not in text.lower(), f"the private key of {org.name} leaked"


@pytest.fixture(scope="module")
def built() -> None:
    build_circuit(load_config(CONFIG))  # provers start faster with the circuit already built


@pytest.mark.slow
def test_three_organisations_three_rounds(built: None, tmp_path: Path) -> None:
    cfg = load_config(CONFIG)
    with federation(cfg, tmp_path, org_count=3) as fed:
        fed.start_all(prover_replicas={fed.orgs[0].name: 2})
        for round_id in (1, 2, 3):
            fed.wait_for_round(round_id, ROUND_TIMEOUT)

        # Every update accepted, exactly once per organisation and round.
        accepted = accepted_per_round(fed)
        members = sorted(o.account.address for o in fed.orgs)
        for round_id in (1, 2, 3):
            assert sorted(accepted[round_id]) == members

        # Accuracy on held-out data rises over the rounds.
        models = global_models_by_round(fed)
        data = load_org_data(cfg, CONFIG.split("-")[0], 0, 3)
        accuracy = {r: evaluate(cfg, np.asarray(m.w), np.asarray(m.b), data.x_test, data.y_test)[0]
                    for r, m in sorted(models.items())}
        assert accuracy[4] > accuracy[1] + 0.3, accuracy
        assert accuracy[4] >= 0.8, accuracy

        # Each organisation's metrics agree with the chain.
        for org in fed.orgs:
            port = org.metrics_port("metrics")
            assert wait_for_metric(port, "wafl_rounds_finalized_total", 3) == 3
            assert wait_for_metric(port, "wafl_updates_accepted_total", 9) == 9
            samples = scrape(port)
            assert metric(samples, "wafl_current_round") == 4
            assert metric(samples, "wafl_global_model_accuracy") >= 0.5

        # The pool of two provers in the first organisation shared its jobs or at least ran.
        provers = [p for p in fed.orgs[0].processes if p.service == "prover"]
        assert len(provers) == 2 and all(p.proc.poll() is None for p in provers)
        no_secret_anywhere(fed)


def drop_next_submission(fed: Federation, org: Org, round_id: int, timeout: float = 60.0) -> int:
    """Once ``org`` proves ``round_id``: stop mining, wait for its transaction in the pool, drop
    it, mine again. (Mining stops only then: the round must be confirmed to be trained at all.)"""
    sender = org.account.address
    rpc = fed.w3.provider.make_request
    wait_for_proof_started(org, round_id, timeout)
    deadline = time.monotonic() + timeout
    rpc("evm_setIntervalMining", [0])  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = rpc("txpool_content", [])["result"]["pending"]  # type: ignore[arg-type]
            mine = next((txs for address, txs in pending.items() if address.lower() == sender.lower()), {})
            if mine:
                tx = next(iter(mine.values()))
                rpc("anvil_dropTransaction", [tx["hash"]])  # type: ignore[arg-type]
                return int(tx["nonce"], 16)
            time.sleep(0.05)
        raise TimeoutError(f"no transaction from {sender} reached the pool")
    finally:
        rpc("evm_setIntervalMining", [1])  # type: ignore[arg-type]


def wait_for_proof_started(org: Org, round_id: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(f'"round": {round_id},' in line and "proof_started" in line
                  for p in org.processes if p.service == "prover" for line in p.log().splitlines()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{org.name} did not start proving round {round_id}")
        time.sleep(0.05)


def reorg_out_next_submission(fed: Federation, org: Org, round_id: int, timeout: float = 60.0) -> str:
    """Once ``org`` proves ``round_id``: snapshot the chain, wait until its update is mined, then
    revert to the snapshot (a reorg shallower than the services' confirmation depth of 2)."""
    rpc = fed.w3.provider.make_request
    wait_for_proof_started(org, round_id, timeout)
    snapshot = rpc("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    event = fed.aggregator.contract.events.UpdateAccepted()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = event.get_logs(from_block=fed.w3.eth.block_number - 1,
                              argument_filters={"round": round_id, "participant": org.account.address})
        if logs:
            assert rpc("evm_revert", [snapshot])["result"] is True  # type: ignore[arg-type]
            return str(logs[0]["transactionHash"].to_0x_hex())
        time.sleep(0.02)
    raise TimeoutError(f"the update of {org.name} for round {round_id} was not mined")


@pytest.mark.slow
def test_rounds_complete_through_faults(built: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Broker connections dropped, a prover killed mid-proof, Redis flushed, a transaction dropped
    from the pool: rounds still complete, each update accepted once."""
    cfg = load_config(CONFIG)
    monkeypatch.setenv("WAFL_RESEND_AFTER", "3")  # the submitter re-sends an unmined transaction after 3 s
    with federation(cfg, tmp_path, org_count=2) as fed:
        fed.start_all(prover_replicas={fed.orgs[0].name: 2})
        fed.wait_for_round(1, ROUND_TIMEOUT)

        # 1. All broker connections of the federation dropped mid-round: services reconnect.
        assert close_vhost_connections(fed.vhost) >= 10
        fed.wait_for_round(2, ROUND_TIMEOUT)

        # 2. A prover killed with SIGKILL during a proof: the job is redelivered, proven once.
        victim = next(p for p in fed.orgs[0].processes if p.service == "prover")
        deadline = time.monotonic() + 60
        while "proof_started" not in victim.log().split("round\": 3")[-1] and time.monotonic() < deadline:
            time.sleep(0.05)
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        victim.expected_exit = True
        fed.wait_for_round(3, ROUND_TIMEOUT)

        # 3. Redis flushed (it keeps nothing on disk here): progress is rebuilt from the chain,
        # nothing is submitted twice.
        for org in fed.orgs:
            redis.Redis.from_url(org.redis_url).flushdb()
        fed.wait_for_round(4, ROUND_TIMEOUT)

        # 4. A submission dropped from the pool before it is mined: re-sent with the same nonce.
        dropped_nonce = drop_next_submission(fed, fed.orgs[0], 5)
        fed.wait_for_round(5, ROUND_TIMEOUT)
        logs = fed.aggregator.contract.events.UpdateAccepted().get_logs(from_block=fed.deployment.start_block)
        (resent,) = [log for log in logs if log["args"]["round"] == 5
                     and log["args"]["participant"] == fed.orgs[0].account.address]
        assert fed.w3.eth.get_transaction(resent["transactionHash"])["nonce"] == dropped_nonce
        submitter_log = next(p for p in fed.orgs[0].processes if p.service == "submitter").log()
        assert '"resend": true' in submitter_log

        # 5. A reorg within the confirmation depth drops a mined update: nobody published it as
        # accepted, the submitter re-sends it once its transaction has left the chain.
        orphaned = reorg_out_next_submission(fed, fed.orgs[1], 6)
        fed.wait_for_round(6, ROUND_TIMEOUT)
        logs = fed.aggregator.contract.events.UpdateAccepted().get_logs(from_block=fed.deployment.start_block)
        (kept,) = [log for log in logs if log["args"]["round"] == 6
                   and log["args"]["participant"] == fed.orgs[1].account.address]
        assert kept["transactionHash"].to_0x_hex() != orphaned  # accepted through the re-send
        for org in fed.orgs:
            watcher = next(p for p in org.processes if p.service == "chain_watcher")
            deadline = time.monotonic() + 60
            while '"round": 7, "service": "chain_watcher"' not in watcher.log() and time.monotonic() < deadline:
                time.sleep(0.2)  # until round 6's events are confirmed and published
            published = [line for line in watcher.log().splitlines()
                         if "event_published" in line and '"round": 6,' in line and "update.accepted" in line]
            assert len(published) == 2, published  # the orphaned acceptance was never published

        accepted = accepted_per_round(fed)
        members = sorted(o.account.address for o in fed.orgs)
        for round_id in (1, 2, 3, 4, 5, 6):
            assert sorted(accepted[round_id]) == members, accepted
        no_secret_anywhere(fed)
        assert re.search(r"proof_started", victim.log())
