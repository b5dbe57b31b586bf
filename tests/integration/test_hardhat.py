"""Hardhat's node as a second, independent EVM: the production deploy path and submissions on it,
reverts named by their custom errors despite Hardhat's own error format, the same gas as on
anvil, interval mining, and funding by whichever balance cheat code a node has (or a clear error
naming the accounts when it has none)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3
from web3.logs import DISCARD

from services.submitter.records import Outcome, Reverted
from tests.support.brokers import REDIS_URL
from tests.support.nodes import StockHardhatNode, standard_methods_only
from tests.support.submitting import submitter
from tests.support.updates import Update, make_update
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.chain.hardhat import HARDHAT_CONFIG, HardhatNode, hardhat_cli
from wafl.chain.nodes import FundsNeededError, fund, fund_all, increase_time, set_balance_method
from wafl.chain.tx import ContractRevertError
from wafl.core.config import ModelConfig
from wafl.core.paths import NODE_MODULES, PROJECT_ROOT
from wafl.zk.prover import Prover

ROUND_SECONDS = 3600
# The bounds test_chain_e2e.py holds anvil to: a verified update, not the quorum-reaching one.
MIN_GAS_SUBMIT, MAX_GAS_SUBMIT = 250_000, 310_000
MINED_GAS_LIMIT = 2_000_000


@pytest.fixture(scope="module")
def hardhat() -> Iterator[HardhatNode]:
    with HardhatNode() as node:
        yield node


@pytest.fixture(scope="module")
def hw3(hardhat: HardhatNode) -> Web3:
    return hardhat.web3()


def funded(*nodes: Web3) -> LocalAccount:
    """A fresh random key, funded on each node by that node's own cheat code."""
    account: LocalAccount = Account.create()
    for w3 in nodes:
        fund(w3, account.address)
    return account


def tampered(update: Update) -> list[int]:
    proof = update.proof.as_uint256x8()
    proof[0] ^= 1  # A no longer on the curve
    return proof


def swapped(update: Update) -> list[int]:
    proof = update.proof.as_uint256x8()
    proof[0:2], proof[6:8] = proof[6:8], proof[0:2]  # valid points, wrong proof
    return proof


def test_the_node_runs_from_the_pinned_package_with_the_repository_config() -> None:
    assert hardhat_cli().is_file()
    assert HARDHAT_CONFIG.is_file()
    package = json.loads((NODE_MODULES / "hardhat" / "package.json").read_text())
    root = json.loads((PROJECT_ROOT / "package.json").read_text())
    assert package["name"] == "hardhat" and package["version"].startswith("2.")
    assert package["version"] in (root.get("devDependencies", {}) | root.get("dependencies", {})).values()
    node = HardhatNode(chain_id=1337)
    with node:
        assert node.pid is not None
        w3 = node.web3()
        assert w3.eth.chain_id == 1337
        assert w3.is_connected()
        pid = node.pid
    assert node.pid is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped, not left behind


def test_deploy_submit_and_reject_with_custom_errors(hw3: Web3, ref_config: ModelConfig,
                                                      ref_worker: Prover) -> None:
    admin = funded(hw3)
    members = [funded(hw3) for _ in range(2)]
    deployment = deploy(hw3, admin, ref_config, quorum=2, round_duration=ROUND_SECONDS, participants=members)
    assert deployment.chain_id == 31337
    aggregator = AggregatorClient(hw3, deployment)
    assert aggregator.verification_key_hash() == deployment.vk_hash
    assert aggregator.current_round().round == 1  # every participant attested at deployment
    update = make_update(ref_config, ref_worker, aggregator.global_model(), members[0].address, 1,
                         random.Random(1))
    before = aggregator.current_round()

    for proof in (tampered(update), swapped(update)):
        # Estimated first: refused before sending, named from Hardhat's nested revert data.
        with pytest.raises(ContractRevertError) as estimated:
            aggregator.submit_update(members[0], 1, update.words, proof)
        assert estimated.value.name == "Wafl__InvalidProof", str(estimated.value)
        assert estimated.value.receipt is None
        # Mined with a fixed gas limit: a failed receipt, then replayed for its name.
        with pytest.raises(ContractRevertError) as mined:
            aggregator.submit_update(members[0], 1, update.words, proof, gas=MINED_GAS_LIMIT)
        assert mined.value.name == "Wafl__InvalidProof", str(mined.value)
        assert mined.value.receipt is not None and mined.value.receipt["status"] == 0
    assert aggregator.current_round() == before
    assert not aggregator.has_submitted(members[0].address)

    # A custom error's arguments come through too.
    with pytest.raises(ContractRevertError) as closed:
        aggregator.submit_update(members[0], 2, update.words, update.proof, gas=MINED_GAS_LIMIT)
    assert (closed.value.name, closed.value.args_) == ("Wafl__RoundClosed", (2, 1))

    receipt = aggregator.submit_update(members[0], 1, update.words, update.proof)
    accepted = aggregator.contract.events.UpdateAccepted().process_receipt(receipt, errors=DISCARD)
    assert accepted[0]["args"]["participant"] == members[0].address
    assert MIN_GAS_SUBMIT <= receipt["gasUsed"] <= MAX_GAS_SUBMIT, receipt["gasUsed"]
    assert aggregator.current_round().accepted == 1
    with pytest.raises(ContractRevertError) as again:
        aggregator.submit_update(members[0], 1, update.words, update.proof)
    assert (again.value.name, again.value.args_) == ("Wafl__AlreadySubmitted", (1, members[0].address))

    # Time travel (evm_increaseTime, evm_mine) works on Hardhat as on anvil.
    late = make_update(ref_config, ref_worker, aggregator.global_model(), members[1].address, 1,
                       random.Random(2))
    increase_time(hw3, ROUND_SECONDS + 1)
    with pytest.raises(ContractRevertError) as deadline:
        aggregator.submit_update(members[1], 1, late.words, late.proof)
    assert deadline.value.name == "Wafl__DeadlinePassed"
    aggregator.finalize_round(funded(hw3))
    assert aggregator.current_round().round == 2


def test_a_stock_hardhat_node_answering_a_mined_revert_with_an_error(ref_config: ModelConfig,
                                                                     ref_worker: Prover) -> None:
    """`npx hardhat node` as anyone runs it: eth_sendRawTransaction of a reverting transaction
    returns an error although the transaction was mined. It still surfaces as the custom error,
    with the receipt of what it cost."""
    with StockHardhatNode() as node:
        w3 = node.web3()
        member = funded(w3)
        aggregator = AggregatorClient(w3, deploy(w3, funded(w3), ref_config, quorum=1,
                                                 round_duration=ROUND_SECONDS, participants=[member]))
        update = make_update(ref_config, ref_worker, aggregator.global_model(), member.address, 1,
                             random.Random(3))
        with pytest.raises(ContractRevertError) as mined:
            aggregator.submit_update(member, 1, update.words, tampered(update), gas=MINED_GAS_LIMIT)
        assert mined.value.name == "Wafl__InvalidProof", str(mined.value)
        assert mined.value.receipt is not None and mined.value.receipt["status"] == 0
        aggregator.submit_update(member, 1, update.words, update.proof)
        assert aggregator.current_round().round == 2  # quorum 1: the update finalised the round


def test_the_submitters_engine_resolves_a_mined_revert_on_a_stock_hardhat_node(
    org: str, ref_config: ModelConfig, ref_worker: Prover
) -> None:
    """A stock node answers the eth_sendRawTransaction of a transaction that reverted when mined
    with an error (its hash in error.data.txHash). The engine takes it as sent, not refused: the
    receipt resolves it as reverted, named by its custom error, and it was sent once."""
    with StockHardhatNode() as node:
        w3 = node.web3()
        member = funded(w3)
        deployment = deploy(w3, funded(w3), ref_config, quorum=1, round_duration=ROUND_SECONDS,
                            participants=[member])
        aggregator = AggregatorClient(w3, deployment)
        update = make_update(ref_config, ref_worker, aggregator.global_model(), member.address, 1,
                             random.Random(5))
        # What estimation cannot rule out: a call that passed it reverts once mined (sent as such here).
        data = aggregator.contract.functions.submitUpdate(1, update.words, tampered(update))._encode_transaction_data()
        sent_before = w3.eth.get_transaction_count(member.address)

        async def scenario() -> Outcome:
            client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
            try:
                engine = submitter(client, w3, deployment, member, org).engine
                key = f"wafl:{org}:submitter:tx:stock-hardhat"
                record = engine.new_record("update", 1, data, MINED_GAS_LIMIT, 0, time.time())
                return await engine.resume_or(key, lambda session: engine.send(session, key, record))
            finally:
                await client.aclose()

        outcome = asyncio.run(scenario())
        assert isinstance(outcome, Reverted) and outcome.reason == "Wafl__InvalidProof", outcome
        assert w3.eth.get_transaction_receipt(outcome.tx_hash)["status"] == 0  # type: ignore[arg-type]
        assert w3.eth.get_transaction_count(member.address) == sent_before + 1  # sent once


def test_the_same_transactions_cost_the_same_gas_on_anvil_and_hardhat(
    w3: Web3, hw3: Web3, ref_config: ModelConfig, ref_worker: Prover
) -> None:
    """One set of keys, one deployment each, the very same signed-over calldata on both nodes."""
    admin = funded(w3, hw3)
    members = [funded(w3, hw3) for _ in range(2)]
    aggregators = [
        AggregatorClient(node, deploy(node, admin, ref_config, quorum=2, round_duration=ROUND_SECONDS,
                                      participants=members))
        for node in (w3, hw3)
    ]
    assert aggregators[0].global_words() == aggregators[1].global_words()
    rng = random.Random(4)
    updates = [make_update(ref_config, ref_worker, aggregators[0].global_model(), m.address, 1, rng)
               for m in members]
    gas: dict[str, list[int]] = {"anvil": [], "hardhat": []}
    for name, aggregator in zip(gas, aggregators, strict=True):
        with pytest.raises(ContractRevertError) as invalid:
            aggregator.submit_update(members[0], 1, updates[0].words, swapped(updates[0]), gas=MINED_GAS_LIMIT)
        assert invalid.value.receipt is not None
        gas[name].append(int(invalid.value.receipt["gasUsed"]))
        for member, update in zip(members, updates, strict=True):
            gas[name].append(int(aggregator.submit_update(member, 1, update.words, update.proof)["gasUsed"]))
        assert aggregator.current_round().round == 2  # the second update reached the quorum
    # [invalid proof mined, a verified update, the quorum-reaching update that also finalises]
    assert gas["anvil"] == gas["hardhat"], gas
    assert MIN_GAS_SUBMIT <= gas["hardhat"][1] <= MAX_GAS_SUBMIT < gas["hardhat"][2], gas
    assert aggregators[0].global_words() == aggregators[1].global_words()


def test_interval_mining(ref_config: ModelConfig) -> None:
    """With block_time, blocks come on a timer (none on demand) and the production send path
    still deploys: pending nonces, receipts a block later."""
    with HardhatNode(block_time=0.5) as node:
        w3 = node.web3()
        first = w3.eth.block_number
        admin = funded(w3)
        deployment = deploy(w3, admin, ref_config, quorum=1, round_duration=ROUND_SECONDS,
                            participants=[funded(w3)])
        assert AggregatorClient(w3, deployment).current_round().round == 1
        assert w3.eth.block_number > first + 3
        signed = admin.sign_transaction({
            "to": admin.address, "value": 1, "gas": 21_000, "nonce": w3.eth.get_transaction_count(admin.address),
            "chainId": w3.eth.chain_id, "maxFeePerGas": 2 * w3.eth.gas_price, "maxPriorityFeePerGas": 10**9,
        })
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        # Not mined on arrival: the account's pending nonce is ahead of its latest one.
        assert w3.eth.get_transaction_count(admin.address, "pending") == \
            w3.eth.get_transaction_count(admin.address, "latest") + 1
        assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.1)["status"] == 1


def test_wafl_deploy_cli_on_hardhat(hardhat: HardhatNode, hw3: Web3, ref_config: ModelConfig,
                                    tmp_path: Path) -> None:
    deployer = funded(hw3)
    key_file = tmp_path / "deployer.key"
    key_file.write_text(deployer.key.hex())
    members = [funded(hw3) for _ in range(2)]
    out = tmp_path / "deployment.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "deploy", "--config", ref_config.name, "--rpc-url", hardhat.url,
         "--key-file", str(key_file), "--participants", ",".join(m.address for m in members), "--quorum", "2",
         "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    deployment = Deployment.load(out)
    assert deployment.chain_id == 31337
    aggregator = AggregatorClient(hw3, deployment)
    assert aggregator.verification_key_hash() == deployment.vk_hash
    role = aggregator.contract.functions.PARTICIPANT_ROLE().call()
    assert all(aggregator.contract.functions.hasRole(role, m.address).call() for m in members)


# ---- funding -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("node", "method"), [("w3", "anvil_setBalance"), ("hw3", "hardhat_setBalance")])
def test_fund_by_the_nodes_own_cheat_code(node: str, method: str, request: pytest.FixtureRequest) -> None:
    w3: Web3 = request.getfixturevalue(node)
    address = Account.create().address
    assert set_balance_method(w3, address, 12345) == method
    assert w3.eth.get_balance(address) == 12345
    fund(w3, address, 10**18)
    assert w3.eth.get_balance(address) == 10**18
    others = [Account.create().address for _ in range(3)]
    fund_all(w3, others, 7)
    assert [w3.eth.get_balance(a) for a in others] == [7, 7, 7]
    # Not an unknown method: a real failure is raised, not passed over to the next cheat code.
    with pytest.raises(RuntimeError, match="setBalance"):
        set_balance_method(w3, "0x1234", 1)


def test_a_node_without_a_cheat_code_names_the_accounts_that_need_funds(hardhat: HardhatNode,
                                                                        hw3: Web3) -> None:
    with standard_methods_only(hardhat.url) as gateway:
        public = Web3(HTTPProvider(gateway.url))
        assert public.eth.chain_id == 31337  # a real node behind it
        rich, half, empty, other = (Account.create().address for _ in range(4))
        fund(hw3, rich, 10**21)
        fund(hw3, half, 4 * 10**20)
        fund(public, rich)  # already holds the amount: nothing to do, no error
        with pytest.raises(FundsNeededError) as needed:
            fund_all(public, [rich, half, empty.lower(), other], 10**21)
        assert needed.value.needs == {half: 6 * 10**20, empty: 10**21, other: 10**21}
        message = str(needed.value)
        assert gateway.url in message and rich not in message
        assert "anvil_setBalance or hardhat_setBalance" in message
        # One line, what each lacks in ether, the accounts that lack the same grouped.
        assert f"send 600 ETH to {half}; 1000 ETH each to {empty}, {other} (from a funded account), " \
               "then start again" in message
        with pytest.raises(FundsNeededError, match=empty):
            fund(public, empty)
        assert public.eth.get_balance(empty) == 0
        with pytest.raises(RuntimeError, match="evm_increaseTime failed"):
            increase_time(public, 60)
