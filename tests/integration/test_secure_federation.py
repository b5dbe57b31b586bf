"""Secure aggregation end to end (docs/design.md section 12): three organisations on
iris-4x3-b3-secagg, every service a separate OS process on the real brokers and anvil.

0. The services start first; then each organisation runs `wafl attest --masking-key`, which
   registers its masking key and attests, and the last attestation opens round 1.
1. Round 1: all three submit masked updates; the chain's words are not the updates, yet the new
   global model is the reference FedAvg of the honest updates, bit for bit.
2. Round 2: one organisation's submitter is down. At the deadline the round is voided (the model
   is unchanged) and the missing member excluded.
3. Round 3: the set is the two others; it completes without the excluded one, bit for bit again.
4. The dropped organisation's submitter comes back, hears of its exclusion and rejoins: a later
   round's set has all three again and completes.
Each organisation's metrics count the voided round and the exclusion.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.federation_checks import wait_for_metric
from tools.localnet import Federation, federation
from wafl.core.config import load_config
from wafl.core.fixedpoint import Weights, fedavg, train_step
from wafl.core.packing import pack, unpack
from wafl.data.datasets import load_org_data
from wafl.zk.build import build_circuit, development_keys
from wafl.zk.masking import read_secret

CONFIG = load_config("iris-4x3-b3-secagg")
# Seconds: three masked proofs on two cores fit with room to spare; the voided round waits it out.
ROUND_DURATION = 40
ROUND_TIMEOUT = 240.0


def logs(fed: Federation, event: str) -> list[dict[str, object]]:
    found = getattr(fed.aggregator.contract.events, event)().get_logs(from_block=fed.deployment.start_block)
    # Not dict(args): RoundMembers has an argument named "keys", which shadows the mapping's keys().
    return [{**{name: log["args"][name] for name in iter(log["args"])}, "transactionHash": log["transactionHash"]}
            for log in found]


def opened(fed: Federation) -> dict[int, Weights]:
    return {int(str(log["round"])): Weights.from_flat(CONFIG, unpack(CONFIG, [int(w) for w in log["globalWords"]]))  # type: ignore[attr-defined]
            for log in logs(fed, "RoundOpened")}


def members(fed: Federation) -> dict[int, list[str]]:
    return {int(str(log["round"])): list(log["members"]) for log in logs(fed, "RoundMembers")}  # type: ignore[call-overload]


def honest_update(fed: Federation, org_index: int, round_id: int, global_model: Weights) -> Weights:
    """The step the organisation's trainer makes: its deterministic batch of the round."""
    data = load_org_data(CONFIG, CONFIG.dataset or "", org_index, len(fed.orgs))
    x, y = data.batch(CONFIG, round_id)
    return train_step(CONFIG, global_model, x.tolist(), y.tolist())


def wait_until(condition: Callable[[], bool], timeout: float, fed: Federation, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        fed.assert_alive()
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout}s; logs:\n{fed.log_tails()}")


@pytest.mark.slow
def test_three_organisations_masked_with_a_dropped_member(tmp_path: Path) -> None:
    development_keys(build_circuit(CONFIG))  # before the provers start, which then find them
    with federation(CONFIG, tmp_path, org_count=3, round_duration=ROUND_DURATION, attest=False) as fed:
        org_index = {o.account.address: o.index for o in fed.orgs}
        everyone = [o.account.address for o in fed.orgs]
        dropped = fed.orgs[2]
        fed.start_all()
        submitter = next(p for p in dropped.processes if p.service == "submitter")
        for process in (p for org in fed.orgs for p in org.processes):
            assert process.metrics_port  # waits for its service_started line
        for org in fed.orgs:
            assert fed.aggregator.current_round().round == 0
            attested = subprocess.run(
                [sys.executable, "-m", "tools.cli", "attest", "--deployment", str(fed.deployment_path),
                 "--rpc-url", fed.node.url, "--key-file", str(org.key_file),
                 "--masking-key", str(org.masking_key_file)],
                capture_output=True, text=True, timeout=300)
            assert attested.returncode == 0, attested.stderr
            assert str(read_secret(org.masking_key_file or Path())) not in attested.stdout + attested.stderr
        assert fed.aggregator.current_round().round == 1

        # 1. A full set: masked words on chain, the exact FedAvg as the next model.
        def third_submitted() -> bool:
            return fed.aggregator.current_round().round > 1 or bool(
                fed.aggregator.contract.functions.hasSubmitted(dropped.account.address).call())

        wait_until(third_submitted, ROUND_TIMEOUT, fed, "round 1 had no update of the third organisation")
        fed.stop(submitter)  # before round 2's proof reaches it
        submitter.expected_exit = True
        fed.wait_for_round(1, ROUND_TIMEOUT)
        assert [log["round"] for log in logs(fed, "RoundVoided")] == [], fed.log_tails()
        models = opened(fed)
        assert members(fed)[1] == everyone
        updates: dict[str, Weights] = {a: honest_update(fed, org_index[a], 1, models[1]) for a in everyone}
        assert models[2] == fedavg(CONFIG, list(updates.values()))
        for log in logs(fed, "UpdateAccepted"):
            if log["round"] == 1:
                tx = fed.w3.eth.get_transaction(log["transactionHash"])  # type: ignore[arg-type]
                _, arguments = fed.aggregator.contract.decode_function_input(tx["input"])
                words = [int(w) for w in arguments["updateWords"]]
                assert words != pack(CONFIG, updates[str(log["participant"])].flat())

        # 2. Round 2 without the third organisation: voided at its deadline, the member excluded.
        fed.wait_for_round(2, ROUND_TIMEOUT)
        (voided,) = logs(fed, "RoundVoided")
        assert voided["round"] == 2 and list(voided["missing"]) == [dropped.account.address]  # type: ignore[call-overload]
        assert voided["excluded"] is True
        models = opened(fed)
        assert models[3] == models[2]  # the masks could not cancel: the model is kept

        # 3. Round 3's set leaves the excluded member out and completes without it.
        assert members(fed)[3] == everyone[:2]
        fed.wait_for_round(3, ROUND_TIMEOUT)
        models = opened(fed)
        two = [honest_update(fed, org_index[a], 3, models[3]) for a in everyone[:2]]
        assert models[4] == fedavg(CONFIG, two)

        # 4. Back online, the dropped organisation rejoins and a later set has all three again.
        fed.start(dropped, "submitter")
        wait_until(lambda: any(list(m) == everyone and r > 3 for r, m in members(fed).items()), ROUND_TIMEOUT,
                   fed, "the dropped organisation did not rejoin a round's set")
        (rejoined,) = logs(fed, "MemberRejoined")
        assert rejoined["participant"] == dropped.account.address
        full = min(r for r, m in members(fed).items() if r > 3 and list(m) == everyone)
        fed.wait_for_round(full, ROUND_TIMEOUT)
        models = opened(fed)
        three = [honest_update(fed, org_index[a], full, models[full]) for a in everyone]
        assert models[full + 1] == fedavg(CONFIG, three)

        # Metrics of every organisation: one voided round, one exclusion.
        for org in fed.orgs:
            port = org.metrics_port("metrics")
            assert wait_for_metric(port, "wafl_chain_rounds_voided", 1) == 1
            assert wait_for_metric(port, "wafl_chain_members_excluded", 1) == 1
        fed.assert_alive()
        # No masking secret in any service's log (the provers read them; nothing prints them).
        logs_text = "\n".join(p.log() for org in fed.orgs for p in org.processes)
        for org in fed.orgs:
            secret = str(read_secret(org.masking_key_file or Path()))
            assert secret not in logs_text, f"{org.name}'s masking secret leaked"
