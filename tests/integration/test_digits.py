"""digits-64x10-b16: the large configuration builds, proves and verifies on chain within its gas target."""

from __future__ import annotations

import random

import pytest
from web3 import Web3

from tests.conftest import new_account
from tools.bench.gas import synthetic_batch
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import increase_time
from wafl.chain.deploy import deploy
from wafl.core.config import load_config
from wafl.core.fixedpoint import fedavg, train_step
from wafl.core.packing import pack
from wafl.zk.build import build_circuit
from wafl.zk.circuit import CircuitKind, witness_args
from wafl.zk.prover import Prover

MAX_GAS_SUBMIT = 900_000


@pytest.mark.slow
def test_digits_update_proves_and_is_accepted_on_chain(w3: Web3) -> None:
    cfg = load_config("digits-64x10-b16")
    build = build_circuit(cfg)
    assert 99_000 <= build.constraints <= 100_000  # 99,362 with the bounded step
    admin, member, other = (new_account(w3) for _ in range(3))
    deployment = deploy(w3, admin, cfg, quorum=2, round_duration=3600, participants=[member, other])
    aggregator = AggregatorClient(w3, deployment)
    global_model = aggregator.global_model()
    x, y = synthetic_batch(cfg, random.Random(5))
    update = train_step(cfg, global_model, x, y)
    with Prover(build) as worker:
        result = worker.prove(
            witness_args(cfg, CircuitKind.PACKED, global_model, update, x, y, int(member.address, 16), 1)
        )
        assert worker.verify(result.proof, result.inputs)
    receipt = aggregator.submit_update(member, 1, pack(cfg, update.flat()), result.proof)
    assert 600_000 <= receipt["gasUsed"] <= MAX_GAS_SUBMIT
    assert aggregator.current_round().accepted == 1
    increase_time(w3, 3601)
    aggregator.finalize_round(admin)
    assert aggregator.global_model() == fedavg(cfg, [update])
