"""A whole federation through the real brokers: 3 organisations, every service a separate OS
process, 2 prover replicas in one organisation, 3 rounds; then faults, each with the round
completing and nothing lost or done twice."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from tests.support.federation_checks import (
    accepted_per_round,
    metric,
    metrics_agree_with_chain,
    scrape,
    wait_for_metric,
)
from tools.localnet import Federation, Org, ServiceProcess, close_vhost_connections, federation
from wafl.core.config import load_config
from wafl.core.fixedpoint import Weights
from wafl.core.packing import unpack
from wafl.data.datasets import evaluate, load_org_data
from wafl.zk.build import build_circuit

CONFIG = "wine-13x3-b16"
ROUND_TIMEOUT = 240.0


def global_models_by_round(fed: Federation) -> dict[int, Weights]:
    """The global model each round started from, from the chain's RoundOpened logs."""
    logs = fed.aggregator.contract.events.RoundOpened().get_logs(from_block=fed.deployment.start_block)
    cfg = fed.cfg
    return {int(log["args"]["round"]): Weights.from_flat(cfg, unpack(cfg, [int(w) for w in log["args"]["globalWords"]]))
            for log in logs}


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
            assert wait_for_metric(port, "wafl_chain_rounds_finalized", 3) == 3
            assert wait_for_metric(port, "wafl_chain_updates_accepted", 9) == 9
            samples = scrape(port)
            assert metric(samples, "wafl_current_round") == 4
            assert metric(samples, "wafl_global_model_accuracy") >= 0.5

        # The pool of two provers in the first organisation shared its jobs or at least ran.
        provers = [p for p in fed.orgs[0].processes if p.service == "prover"]
        assert len(provers) == 2 and all(p.proc.poll() is None for p in provers)
        no_secret_anywhere(fed)


def logged(process: ServiceProcess) -> list[dict[str, Any]]:
    """The JSON log lines of a service process."""
    lines = []
    for text in process.log().splitlines():
        with contextlib.suppress(ValueError):
            line = json.loads(text)
            if isinstance(line, dict):
                lines.append(line)
    return lines


def proving(org: Org, round_id: int) -> ServiceProcess | None:
    """The prover of ``org`` that started proving ``round_id`` first, if any did."""
    return next((p for p in org.processes if p.service == "prover"
                 and any(line.get("event") == "proof_started" and line.get("round") == round_id
                         for line in logged(p))), None)


def upcoming_round(fed: Federation, org: Org) -> int:
    """The first round, from the open one on, that ``org`` has not started proving: a fault aimed
    at it lands before its proof whatever the pace of the federation against the test's."""
    round_id = fed.aggregator.current_round().round
    while proving(org, round_id) is not None:
        round_id += 1
    return round_id


def wait_for_proof_started(org: Org, round_id: int, timeout: float = ROUND_TIMEOUT) -> ServiceProcess:
    deadline = time.monotonic() + timeout
    while (prover := proving(org, round_id)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{org.name} did not start proving round {round_id}")
        time.sleep(0.05)
    return prover


def kill_prover_mid_proof(fed: Federation, org: Org) -> tuple[ServiceProcess, int]:
    """SIGKILL the prover of ``org`` that starts proving the upcoming round, while it proves."""
    round_id = upcoming_round(fed, org)
    victim = wait_for_proof_started(org, round_id)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    victim.expected_exit = True
    return victim, round_id


def drop_next_submission(fed: Federation, org: Org, timeout: float = 60.0) -> tuple[int, int]:
    """Once ``org`` proves the upcoming round: stop mining, wait for its transaction in the pool,
    drop it, mine again. (Mining stops only then: the round must be confirmed to be trained at
    all.) Returns (round, the dropped transaction's nonce)."""
    sender = org.account.address
    rpc = fed.w3.provider.make_request
    round_id = upcoming_round(fed, org)
    wait_for_proof_started(org, round_id)
    rpc("evm_setIntervalMining", [0])  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = rpc("txpool_content", [])["result"]["pending"]  # type: ignore[arg-type]
            mine = next((txs for address, txs in pending.items() if address.lower() == sender.lower()), {})
            if mine:
                tx = next(iter(mine.values()))
                rpc("anvil_dropTransaction", [tx["hash"]])  # type: ignore[arg-type]
                return round_id, int(tx["nonce"], 16)
            time.sleep(0.05)
        raise TimeoutError(f"no transaction from {sender} reached the pool")
    finally:
        rpc("evm_setIntervalMining", [1])  # type: ignore[arg-type]


def reorg_out_next_submission(fed: Federation, org: Org, timeout: float = 60.0) -> tuple[int, str]:
    """Once ``org``'s update for the upcoming round reaches the pool: mining paused, a snapshot,
    one block mined with the update, the snapshot restored (a one-block reorg, shallower than the
    services' confirmation depth of 2, whatever the machine's load), mining resumed. Returns
    (round, the orphaned transaction's hash)."""
    rpc = fed.w3.provider.make_request
    sender = org.account.address
    round_id = upcoming_round(fed, org)
    wait_for_proof_started(org, round_id)
    rpc("evm_setIntervalMining", [0])  # type: ignore[arg-type]
    try:
        deadline = time.monotonic() + timeout
        while not any(address.lower() == sender.lower()
                      for address in rpc("txpool_content", [])["result"]["pending"]):  # type: ignore[arg-type]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no transaction from {sender} reached the pool")
            time.sleep(0.05)
        snapshot = rpc("evm_snapshot", [])["result"]  # type: ignore[arg-type]
        rpc("evm_mine", [])  # type: ignore[arg-type]
        (log,) = fed.aggregator.contract.events.UpdateAccepted().get_logs(
            from_block=fed.w3.eth.block_number, argument_filters={"round": round_id, "participant": sender})
        assert rpc("evm_revert", [snapshot])["result"] is True  # type: ignore[arg-type]
        return round_id, str(log["transactionHash"].to_0x_hex())
    finally:
        rpc("evm_setIntervalMining", [1])  # type: ignore[arg-type]


def wait_for_published(org: Org, topic: str, round_id: int, timeout: float = 120.0) -> None:
    """Until ``org``'s chain watcher has published ``topic`` for ``round_id`` (it is confirmed)."""
    watcher = next(p for p in org.processes if p.service == "chain_watcher")
    deadline = time.monotonic() + timeout
    while not any("event_published" in line and f'"topic": "{topic}"' in line and f'"round": {round_id},' in line
                  for line in watcher.log().splitlines()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{org.name} did not publish {topic} for round {round_id}")
        time.sleep(0.2)


def reorg_from_round(fed: Federation, round_id: int, min_depth: int = 8) -> tuple[int, int]:
    """Once every chain watcher has published the finalisation of ``round_id`` and the chain is
    ``min_depth`` blocks past the round's first accepted update: every block from that update on
    replaced by an empty one (``anvil_reorg``), so the updates, the finalisation, the next round's
    opening and whatever followed are gone; interval mining then grows the new branch past the
    old one. Returns (fork block, depth)."""
    for org in fed.orgs:
        wait_for_published(org, "round.finalized", round_id)
    logs = fed.aggregator.contract.events.UpdateAccepted().get_logs(
        from_block=fed.deployment.start_block, argument_filters={"round": round_id})
    fork = min(int(log["blockNumber"]) for log in logs) - 1
    while fed.w3.eth.block_number < fork + min_depth:
        time.sleep(0.2)
    depth = fed.w3.eth.block_number - fork
    fed.w3.provider.make_request("anvil_reorg", [depth, []])  # type: ignore[arg-type]
    return fork, depth


@pytest.mark.slow
def test_rounds_complete_through_faults(built: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Broker connections dropped, a prover killed mid-proof, Redis flushed, a transaction dropped
    from the pool, a shallow and a deep reorg: rounds still complete, each update accepted once."""
    cfg = load_config(CONFIG)
    monkeypatch.setenv("WAFL_RESEND_AFTER", "3")  # the submitter re-sends an unmined transaction after 3 s
    with federation(cfg, tmp_path, org_count=2) as fed:
        fed.start_all(prover_replicas={fed.orgs[0].name: 2})
        fed.wait_for_round(1, ROUND_TIMEOUT)

        # 1. All broker connections of the federation dropped mid-round: services reconnect.
        assert close_vhost_connections(fed.vhost) >= 10
        fed.wait_for_round(fed.aggregator.current_round().round, ROUND_TIMEOUT)

        # 2. A prover killed with SIGKILL during a proof: the job is redelivered, proven once.
        victim, killed_in = kill_prover_mid_proof(fed, fed.orgs[0])
        fed.wait_for_round(killed_in, ROUND_TIMEOUT)

        # 3. Redis flushed (it keeps nothing on disk here): progress is rebuilt from the chain,
        # nothing is submitted twice.
        for org in fed.orgs:
            redis.Redis.from_url(org.redis_url).flushdb()
        fed.wait_for_round(fed.aggregator.current_round().round, ROUND_TIMEOUT)

        # 4. A submission dropped from the pool before it is mined: re-sent with the same nonce.
        dropped_in, dropped_nonce = drop_next_submission(fed, fed.orgs[0])
        fed.wait_for_round(dropped_in, ROUND_TIMEOUT)
        logs = fed.aggregator.contract.events.UpdateAccepted().get_logs(from_block=fed.deployment.start_block)
        (resent,) = [log for log in logs if log["args"]["round"] == dropped_in
                     and log["args"]["participant"] == fed.orgs[0].account.address]
        assert fed.w3.eth.get_transaction(resent["transactionHash"])["nonce"] == dropped_nonce
        submitter_log = next(p for p in fed.orgs[0].processes if p.service == "submitter").log()
        assert '"resend": true' in submitter_log

        # 5. A reorg within the confirmation depth drops a mined update: nobody published it as
        # accepted, the submitter re-sends it once its transaction has left the chain.
        orphaned_in, orphaned = reorg_out_next_submission(fed, fed.orgs[1])
        fed.wait_for_round(orphaned_in, ROUND_TIMEOUT)
        logs = fed.aggregator.contract.events.UpdateAccepted().get_logs(from_block=fed.deployment.start_block)
        (kept,) = [log for log in logs if log["args"]["round"] == orphaned_in
                   and log["args"]["participant"] == fed.orgs[1].account.address]
        assert kept["transactionHash"].to_0x_hex() != orphaned  # accepted through the re-send
        for org in fed.orgs:
            wait_for_published(org, "round.opened", orphaned_in + 1)  # the round's events are confirmed
            watcher = next(p for p in org.processes if p.service == "chain_watcher")
            published = [line for line in logged(watcher) if line.get("event") == "event_published"
                         and line.get("round") == orphaned_in and line.get("topic") == "update.accepted"]
            assert len(published) == 2, published  # the orphaned acceptance was never published

        # 6. A reorg deeper than the confirmation depth drops a round's accepted updates, its
        # finalisation and the next round's opening, all published already. Said once by every chain
        # watcher; the submitters send the dropped updates again; everyone takes part in that round
        # again and in the next as it opens on the new branch; the metrics equal the chain.
        deep = fed.aggregator.current_round().round
        fed.wait_for_round(deep, ROUND_TIMEOUT)
        fork, depth = reorg_from_round(fed, deep)
        assert depth > 2, depth  # deeper than the services' confirmation depth
        assert fed.aggregator.current_round().round == deep
        fed.wait_for_round(deep + 1, ROUND_TIMEOUT)
        accepted = accepted_per_round(fed)
        members = sorted(o.account.address for o in fed.orgs)
        missed = {o.name: [r for r in (deep, deep + 1) if o.account.address not in accepted.get(r, [])]
                  for o in fed.orgs}
        for org in fed.orgs:
            by_service = {p.service: logged(p) for p in org.processes if p.service in ("chain_watcher", "submitter")}
            said = [line for line in by_service["chain_watcher"] if line.get("event") == "chain_reorged"]
            assert [line["fork_block"] for line in said] == [fork], said
            assert any(line.get("event") == "dropped_update_resent" for line in by_service["submitter"])
        for process in (p for org in fed.orgs for p in org.processes if p.service == "trainer"):
            process.expected_exit = True
            fed.stop(process)  # no more updates: the chain stands still, the metrics catch up
        for org in fed.orgs:
            finalized, accepted_total = metrics_agree_with_chain(fed, org.metrics_port("metrics"), timeout=90)
            print(json.dumps({"org": org.name, "fork_block": fork, "depth": depth, "missed_rounds": missed[org.name],
                              "chain_equals_metrics": {"rounds_finalized": finalized,
                                                       "updates_accepted": accepted_total}}))
            assert metric(scrape(org.metrics_port("metrics")), "wafl_chain_reorgs_total") == 1
        assert missed == {o.name: [] for o in fed.orgs}

        for round_id in range(1, deep + 2):
            assert sorted(accepted[round_id]) == members, accepted  # once each, on the canonical chain
        no_secret_anywhere(fed)
        assert re.search(r"proof_started", victim.log())
