"""The federation on Hardhat's node instead of anvil: 2 organisations x 2 rounds, every service a
separate OS process on the real brokers, the chain mining a block every second. Each update is
accepted exactly once, the metrics agree with the chain, no service dies."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.federation_checks import accepted_per_round, metrics_agree_with_chain
from tools.localnet import federation
from wafl.core.config import load_config
from wafl.zk.build import build_circuit

CONFIG = "iris-4x3-b3"  # the smallest circuit: the test is about the chain, not the proofs
ROUNDS = (1, 2)
ROUND_TIMEOUT = 240.0


@pytest.mark.slow
def test_two_organisations_two_rounds_on_hardhat(tmp_path: Path) -> None:
    cfg = load_config(CONFIG)
    build_circuit(cfg)  # before the provers start, which then find it built
    with federation(cfg, tmp_path, org_count=2, node="hardhat") as fed:
        assert fed.node.name == "hardhat" and fed.w3.eth.chain_id == 31337
        first_block = fed.w3.eth.block_number
        fed.start_all()
        for round_id in ROUNDS:
            fed.wait_for_round(round_id, ROUND_TIMEOUT)

        # Every update accepted, exactly once per organisation and round.
        accepted = accepted_per_round(fed)
        members = sorted(o.account.address for o in fed.orgs)
        for round_id in ROUNDS:
            assert sorted(accepted[round_id]) == members, accepted

        # Each organisation's metrics service agrees with the chain.
        for org in fed.orgs:
            finalized, updates = metrics_agree_with_chain(fed, org.metrics_port("metrics"))
            assert finalized >= len(ROUNDS) and updates >= len(ROUNDS) * len(fed.orgs)

        # Blocks came on the interval, not only with transactions: the confirmations had them.
        assert fed.w3.eth.block_number > first_block + 10
        # No service died or stopped.
        fed.assert_alive()
        stopped = [f"{p.org}/{p.service}" for org in fed.orgs for p in org.processes if p.proc.poll() is not None]
        assert stopped == [], fed.log_tails()
