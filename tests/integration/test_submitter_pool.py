"""Submitter against anvil's transaction pool with automining off: concurrent nonce allocation
from two replicas, a transaction dropped from the pool or stuck unmined is re-sent with the same
nonce and a higher fee and the update is accepted exactly once, a mined revert is named."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from services.submitter.decisions import Submitter
from services.submitter.nonces import NonceManager
from services.submitter.records import TxRecord
from tests.conftest import new_account
from tests.support.brokers import REDIS_URL, counter
from tests.support.submitting import accepted_logs, proof_message, submitter
from tests.support.updates import make_update
from wafl.bus.messages import NO_BRANCH, ProofGenerated, UpdateFailed, UpdateSubmitted
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.core.config import ModelConfig
from wafl.zk.prover import Prover


def rpc(w3: Web3, method: str, *params: Any) -> Any:
    response = w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    assert "error" not in response, response
    return response.get("result")


@pytest.fixture()
def manual_mining(w3: Web3) -> Iterator[None]:
    rpc(w3, "evm_setAutomine", False)
    try:
        yield
    finally:
        rpc(w3, "evm_setAutomine", True)
        rpc(w3, "evm_mine")


def pool_of(w3: Web3, address: str) -> dict[int, dict[str, Any]]:
    """The pending pool's transactions of ``address``, by nonce."""
    content = rpc(w3, "txpool_content")
    for sender, txs in content.get("pending", {}).items():
        if sender.lower() == address.lower():
            return {int(n): tx for n, tx in txs.items()}
    return {}


async def wait_for(predicate: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def submitting(
    redis: aioredis.Redis, w3: Web3, deployment: Deployment, account: LocalAccount, org: str,
    message: ProofGenerated, nonce: int, resend_after: float, what: str,
) -> tuple[Submitter, asyncio.Task[UpdateSubmitted | UpdateFailed], dict[str, Any]]:
    """A replica handling ``message`` in the background, once its transaction of ``nonce`` is in
    the pool (returned too)."""
    sub = submitter(redis, w3, deployment, account, org, resend_after=resend_after, receipt_timeout=60)
    task = asyncio.create_task(sub.submit(message))
    return sub, task, await wait_for(lambda: pool_of(w3, account.address).get(nonce), what)


@pytest.fixture()
def setup(w3: Web3, ref_config: ModelConfig) -> tuple[Deployment, LocalAccount]:
    admin, member, other = new_account(w3), new_account(w3), new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=3600,
                        participants=[member, other])
    return deployment, member


def test_two_nonce_managers_allocate_distinct_consecutive_nonces(org: str, w3: Web3, manual_mining: None) -> None:
    account: LocalAccount = new_account(w3)
    rpc(w3, "evm_mine")  # the funding is in a block
    to = Account.create().address

    async def replica_sends(manager: NonceManager, count: int) -> list[int]:
        async def one() -> int:
            async with manager.session() as session:
                nonce = await session.next_nonce()
                await asyncio.sleep(0.02)  # a slow signer: another replica would take the same nonce now
                signed = account.sign_transaction({
                    "to": to, "value": 1, "gas": 21_000, "nonce": nonce, "chainId": w3.eth.chain_id,
                    "maxFeePerGas": 10**10, "maxPriorityFeePerGas": 10**9,
                })
                await asyncio.to_thread(w3.eth.send_raw_transaction, signed.raw_transaction)
                await session.sent(nonce, signed.hash.to_0x_hex())
                return nonce
        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def scenario() -> tuple[list[int], int | None, int, int]:
        clients = [aioredis.Redis.from_url(REDIS_URL, decode_responses=True) for _ in range(2)]
        try:
            managers = [NonceManager(c, w3, account.address, f"wafl:{org}:submitter") for c in clients]
            first, second = await asyncio.gather(replica_sends(managers[0], 4), replica_sends(managers[1], 4))
            stored, _ = await managers[0].stored()
            await asyncio.to_thread(rpc, w3, "evm_mine")
            # Resynchronisation: Redis ahead of the chain and its last transaction unknown to the
            # node (dropped): the chain's pending count wins, no gap.
            await clients[0].set(managers[0].state_key, json.dumps({"next": 50, "last_tx": "0x" + "ab" * 32}))
            async with managers[1].session() as session:
                resynced = await session.next_nonce()
            # Redis ahead and its last transaction known (a lagging node): Redis wins.
            last = w3.eth.get_block("latest", full_transactions=True)["transactions"][-1]["hash"].to_0x_hex()
            await clients[0].set(managers[0].state_key, json.dumps({"next": 9, "last_tx": last}))
            async with managers[0].session() as session:
                trusted = await session.next_nonce()
            return first + second, stored, resynced, trusted
        finally:
            for c in clients:
                await c.aclose()

    nonces, stored, resynced, trusted = asyncio.run(scenario())
    assert sorted(nonces) == list(range(8)), nonces
    assert stored == 8
    assert w3.eth.get_transaction_count(account.address, "latest") == 8  # all eight mined: no collision, no gap
    assert resynced == 8 and trusted == 9


def test_dropped_transaction_is_resent_with_the_same_nonce(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
    setup: tuple[Deployment, LocalAccount], manual_mining: None,
) -> None:
    deployment, member = setup
    aggregator = AggregatorClient(w3, deployment)
    rpc(w3, "evm_mine")
    message = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=21)
    start = w3.eth.get_transaction_count(member.address, "latest")
    dropped_before = counter("wafl_submitter_resends_total", kind="update", cause="dropped")

    async def scenario() -> tuple[UpdateSubmitted | UpdateFailed, str, str, TxRecord, UpdateSubmitted | UpdateFailed]:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            sub, task, first = await submitting(redis, w3, deployment, member, org, message, start, 0.5,
                                                "the first version in the pool")
            rpc(w3, "anvil_dropTransaction", first["hash"])
            assert pool_of(w3, member.address) == {}
            second = await wait_for(lambda: pool_of(w3, member.address).get(start), "the re-sent version")
            await asyncio.to_thread(rpc, w3, "evm_mine")
            answer = await asyncio.wait_for(task, 30)
            record = TxRecord.loads(await redis.get(sub.record_key("update", 1, NO_BRANCH)) or "")
            again = await sub.submit(message)  # a redelivery: looked up, not sent
            return answer, first["hash"], second["hash"], record, again
        finally:
            await redis.aclose()

    answer, first, second, record, again = asyncio.run(scenario())
    assert isinstance(answer, UpdateSubmitted), answer
    assert first != second and record.nonce == start and record.hashes[:2] == [first, second]
    # Exactly one version mined: the re-sent one (or a later replacement of it), with the same nonce.
    mined = [h for h in record.hashes if _receipt(w3, h) is not None]
    assert mined == [answer.tx_hash] and answer.tx_hash != first
    assert w3.eth.get_transaction(answer.tx_hash)["nonce"] == start  # type: ignore[arg-type]
    assert isinstance(again, UpdateSubmitted) and again.tx_hash == answer.tx_hash
    assert w3.eth.get_transaction_count(member.address, "latest") == start + 1
    assert accepted_logs(aggregator, 1, member) == [answer.tx_hash]
    assert counter("wafl_submitter_resends_total", kind="update", cause="dropped") == dropped_before + 1


def test_unmined_transaction_is_replaced_with_a_higher_fee_and_accepted_once(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
    setup: tuple[Deployment, LocalAccount], manual_mining: None,
) -> None:
    """Stuck in the pool (here: never mined, then a base-fee spike prices it out): every
    replacement keeps the nonce and raises the fee; whichever version is mined, only one can be."""
    deployment, member = setup
    aggregator = AggregatorClient(w3, deployment)
    rpc(w3, "evm_mine")
    message = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=22)
    start = w3.eth.get_transaction_count(member.address, "latest")
    replaced_before = counter("wafl_submitter_resends_total", kind="update", cause="not_mined")

    async def scenario() -> tuple[UpdateSubmitted | UpdateFailed, list[dict[str, Any]], TxRecord]:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            sub, task, version = await submitting(redis, w3, deployment, member, org, message, start, 0.5,
                                                  "the first version")
            seen = [version]
            # The base fee jumps above what the first version offers: the next block leaves it out.
            rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(int(seen[0]["maxFeePerGas"], 16) * 3))
            rpc(w3, "evm_mine")
            assert w3.eth.get_transaction_count(member.address, "latest") == start  # not included
            for _ in range(2):
                seen.append(await wait_for(
                    lambda: (tx := pool_of(w3, member.address).get(start)) and tx["hash"] != seen[-1]["hash"] and tx,
                    "a replacement"))
            await asyncio.to_thread(rpc, w3, "evm_mine")
            answer = await asyncio.wait_for(task, 30)
            record = TxRecord.loads(await redis.get(sub.record_key("update", 1, NO_BRANCH)) or "")
            return answer, seen, record
        finally:
            await redis.aclose()

    answer, seen, record = asyncio.run(scenario())
    assert isinstance(answer, UpdateSubmitted), answer
    fees = [int(tx["maxFeePerGas"], 16) for tx in seen]
    tips = [int(tx["maxPriorityFeePerGas"], 16) for tx in seen]
    assert all(later * 100 >= earlier * 115 for earlier, later in itertools.pairwise(fees)), fees
    assert all(later * 100 >= earlier * 115 for earlier, later in itertools.pairwise(tips)), tips
    assert {int(tx["nonce"], 16) for tx in seen} == {start} and record.nonce == start
    seen_hashes = [tx["hash"] for tx in seen]
    assert [h for h in record.hashes if h in seen_hashes] == seen_hashes  # all signed and recorded, in order
    # Exactly one version mined, the others can never be.
    mined = [h for h in record.hashes if _receipt(w3, h) is not None]
    assert mined == [answer.tx_hash]
    assert w3.eth.get_transaction_count(member.address, "latest") == start + 1
    assert accepted_logs(aggregator, 1, member) == [answer.tx_hash]
    # At least one replacement of a version still in the pool (not only re-sends of dropped ones).
    assert counter("wafl_submitter_resends_total", kind="update", cause="not_mined") > replaced_before


def test_mined_revert_is_reported_by_name_and_not_retried(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
    setup: tuple[Deployment, LocalAccount], manual_mining: None,
) -> None:
    deployment, member = setup
    aggregator = AggregatorClient(w3, deployment)
    rpc(w3, "evm_mine")
    message = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=23)
    start = w3.eth.get_transaction_count(member.address, "latest")

    async def scenario() -> tuple[UpdateSubmitted | UpdateFailed, UpdateSubmitted | UpdateFailed]:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            sub, task, _ = await submitting(redis, w3, deployment, member, org, message, start, 30,
                                            "the transaction in the pool")
            # The deadline passes before the block that includes it.
            rpc(w3, "evm_increaseTime", 3601)
            rpc(w3, "evm_mine")
            answer = await asyncio.wait_for(task, 30)
            return answer, await sub.submit(message)
        finally:
            await redis.aclose()

    answer, again = asyncio.run(scenario())
    assert isinstance(answer, UpdateFailed) and answer.reason == "Wafl__DeadlinePassed", answer
    assert "mined in 0x" in answer.detail
    assert isinstance(again, UpdateFailed) and again.reason == "Wafl__DeadlinePassed"
    assert w3.eth.get_transaction_count(member.address, "latest") == start + 1  # one (reverted) transaction
    assert accepted_logs(aggregator, 1, member) == []


def _receipt(w3: Web3, tx_hash: str) -> Any:
    try:
        return w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
    except Exception:
        return None



def test_nonce_taken_by_another_transaction_gets_a_new_nonce_once(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
    setup: tuple[Deployment, LocalAccount], manual_mining: None,
) -> None:
    """Someone else signs with the key (an operator's transfer) and takes the nonce of the pending
    update: none of the update's versions can be mined any more, so it goes out again under the
    next nonce, and is accepted once."""
    deployment, member = setup
    aggregator = AggregatorClient(w3, deployment)
    rpc(w3, "evm_mine")
    message = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=24)
    start = w3.eth.get_transaction_count(member.address, "latest")

    async def scenario() -> tuple[UpdateSubmitted | UpdateFailed, str, TxRecord]:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            sub, task, ours = await submitting(redis, w3, deployment, member, org, message, start, 3,
                                               "the update in the pool")
            foreign = member.sign_transaction({
                "to": Account.create().address, "value": 1, "gas": 21_000, "nonce": start, "chainId": w3.eth.chain_id,
                "maxFeePerGas": int(ours["maxFeePerGas"], 16) * 10, "maxPriorityFeePerGas": 10 * 10**9,
            })
            w3.eth.send_raw_transaction(foreign.raw_transaction)
            rpc(w3, "evm_mine")  # the transfer takes the nonce
            await wait_for(lambda: pool_of(w3, member.address).get(start + 1), "the update under the next nonce")
            await asyncio.to_thread(rpc, w3, "evm_mine")
            answer = await asyncio.wait_for(task, 30)
            record = TxRecord.loads(await redis.get(sub.record_key("update", 1, NO_BRANCH)) or "")
            return answer, foreign.hash.to_0x_hex(), record
        finally:
            await redis.aclose()

    answer, foreign_hash, record = asyncio.run(scenario())
    assert isinstance(answer, UpdateSubmitted), answer
    assert w3.eth.get_transaction_receipt(foreign_hash)["status"] == 1  # type: ignore[arg-type]
    assert record.nonce == start + 1 and w3.eth.get_transaction(answer.tx_hash)["nonce"] == start + 1  # type: ignore[arg-type]
    assert w3.eth.get_transaction_count(member.address, "latest") == start + 2
    assert accepted_logs(aggregator, 1, member) == [answer.tx_hash]


def test_revert_caused_earlier_in_its_block_is_named_by_that_cause(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    """Another organisation's update reaches the quorum and finalises the round earlier in the same
    block as ours: ours reverts with Wafl__RoundClosed. The replay shows it only at the receipt's
    block: at the block before, the round is still open and the same call succeeds."""
    admin, a, b, c = (new_account(w3) for _ in range(4))
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=3600, participants=[a, b, c])
    aggregator = AggregatorClient(w3, deployment)
    first = make_update(ref_config, ref_worker, aggregator.global_model(), b.address, 1, random.Random(25))
    aggregator.submit_update(b, 1, first.words, first.proof)  # one accepted: the next one closes the round
    closing = make_update(ref_config, ref_worker, aggregator.global_model(), c.address, 1, random.Random(26))
    message = proof_message(org, ref_config, ref_worker, aggregator, a, 1, seed=27)
    start = w3.eth.get_transaction_count(a.address, "latest")

    async def scenario() -> tuple[UpdateSubmitted | UpdateFailed, str, TxRecord]:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            sub, task, ours = await submitting(redis, w3, deployment, a, org, message, start, 30,
                                               "our update in the pool")
            # c's quorum-reaching update, with a higher tip: first in the block (anvil orders by fees).
            tip = int(ours["maxPriorityFeePerGas"], 16) * 10
            data = aggregator.contract.encode_abi("submitUpdate",
                                                  args=[1, closing.words, closing.proof.as_uint256x8()])
            signed = c.sign_transaction({
                "to": Web3.to_checksum_address(deployment.address), "data": data, "value": 0, "gas": 3_000_000,
                "nonce": w3.eth.get_transaction_count(c.address), "chainId": w3.eth.chain_id,
                "maxFeePerGas": int(ours["maxFeePerGas"], 16) + tip, "maxPriorityFeePerGas": tip,
            })
            theirs = w3.eth.send_raw_transaction(signed.raw_transaction).to_0x_hex()
            await asyncio.to_thread(rpc, w3, "evm_mine")
            answer = await asyncio.wait_for(task, 30)
            return answer, theirs, TxRecord.loads(await redis.get(sub.record_key("update", 1, NO_BRANCH)) or "")
        finally:
            await redis.aclose()

    rpc(w3, "evm_setAutomine", False)
    try:
        answer, theirs, record = asyncio.run(scenario())
    finally:
        rpc(w3, "evm_setAutomine", True)
    assert isinstance(answer, UpdateFailed) and answer.reason == "Wafl__RoundClosed", answer
    ours = record.tx_hash
    assert record.state == "reverted" and ours is not None and f"mined in {ours}" in answer.detail
    closed, reverted = (w3.eth.get_transaction_receipt(h) for h in (theirs, ours))  # type: ignore[arg-type]
    assert closed["status"] == 1 and reverted["status"] == 0
    assert closed["blockNumber"] == reverted["blockNumber"]
    assert closed["transactionIndex"] < reverted["transactionIndex"]
    assert aggregator.current_round().round == 2 and accepted_logs(aggregator, 1, a) == []
    # The same call at the block before: the round was still open there, and it does not revert.
    call = w3.eth.get_transaction(ours)  # type: ignore[arg-type]
    w3.eth.call({"from": a.address, "to": call["to"], "data": call["input"], "gas": call["gas"]},
                block_identifier=reverted["blockNumber"] - 1)
