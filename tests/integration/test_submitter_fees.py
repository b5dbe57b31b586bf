"""Submitter fees against anvil with automining off: a transaction the base fee prices out is
replaced (same nonce, higher fees) in the next block; one left unmined is replaced after
``replace_after_blocks`` blocks; the fee ceiling is never exceeded, is reported, and leaves the
transaction to a later call, which resumes it.

How anvil treats a transaction the base fee prices out (what these tests assert against): the
block that raises the base fee above its max fee evicts it from the pool (it is gone, not parked
until the fee falls), and a new transaction whose max fee is below the next block's base fee is
refused ("max fee per gas less than block base fee"). A replacement needs a strictly higher max
fee there (geth: both fees 10 % higher; the submitter bumps both by ``fee_bump_percent``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis.asyncio as aioredis
from eth_account.signers.local import LocalAccount
from pydantic import ValidationError
from web3 import Web3

from services.submitter.decisions import Submitter
from services.submitter.records import TxPolicy, TxRecord
from services.submitter.settings import SubmitterSettings
from tests.integration.test_submitter_pool import manual_mining, pool_of, rpc, setup, wait_for  # noqa: F401
from tests.support.brokers import REDIS_URL, counter
from tests.support.submitting import accepted_logs, nonce, proof_message, submitter
from wafl.bus.messages import ProofGenerated, UpdateFailed, UpdateSubmitted
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.artifact import Deployment
from wafl.core.config import ModelConfig
from wafl.zk.prover import Prover

# engine.py: a version the base fee prices out is replaced at the first poll that sees the block
# of the fee rise, so the replacement can be in the next block.
PRICED_OUT_BOUND_BLOCKS = 1
# The tests' block time while they wait for the submitter: several of its polls (0.1 s) fit in it.
BLOCK_SECONDS = 0.5


@pytest.fixture()
def deployed(setup: tuple[Deployment, LocalAccount], manual_mining: None) -> tuple[Deployment, LocalAccount]:  # noqa: F811
    """The aggregator and a participant's account (deployed while anvil still automines), then
    automining off: blocks come only when a test mines them."""
    return setup


def base_fee(w3: Web3, block: int | str = "latest") -> int:
    return int(w3.eth.get_block(block)["baseFeePerGas"])  # type: ignore[arg-type]


def fees(tx: Any) -> tuple[int, int]:
    """(maxFeePerGas, maxPriorityFeePerGas) of a transaction from the pool or the chain."""
    values = (tx["maxFeePerGas"], tx["maxPriorityFeePerGas"])
    return (int(values[0], 16), int(values[1], 16)) if isinstance(values[0], str) else (values[0], values[1])


def replacement_of(w3: Web3, address: str, tx: dict[str, Any]) -> Callable[[], dict[str, Any] | None]:
    """The pool's transaction of the same sender and nonce as ``tx``, once it is another one."""
    def find() -> dict[str, Any] | None:
        pending = pool_of(w3, address).get(int(tx["nonce"], 16))
        return pending if pending is not None and pending["hash"] != tx["hash"] else None
    return find


async def mine_until(w3: Web3, predicate: Callable[[], Any], what: str, most: int) -> tuple[Any, int]:
    """A block every BLOCK_SECONDS until ``predicate`` holds, ``most`` blocks at the most: its
    value and the number of blocks mined before it held."""
    for blocks in range(most + 1):
        try:
            return await wait_for(predicate, what, timeout=BLOCK_SECONDS), blocks
        except AssertionError:
            if blocks == most:
                raise
        await asyncio.to_thread(rpc, w3, "evm_mine")
    raise AssertionError("unreachable")


@asynccontextmanager
async def handling(
    w3: Web3, deployment: Deployment, account: LocalAccount, org: str, message: ProofGenerated, **policy: Any,
) -> AsyncIterator[tuple[Submitter, aioredis.Redis, asyncio.Task[UpdateSubmitted | UpdateFailed], dict[str, Any]]]:
    """A replica handling ``message`` in the background, no wall-clock re-send within a test
    (``resend_after`` a minute): it, its Redis client, the task and its first version in the pool."""
    redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    start = nonce(w3, account)
    task = None
    try:
        sub = submitter(redis, w3, deployment, account, org, resend_after=60, **policy)
        task = asyncio.create_task(sub.submit(message))
        yield sub, redis, task, await wait_for(lambda: pool_of(w3, account.address).get(start), "the first version")
    finally:
        if task is not None and not task.done():  # a failed test: stop it before its Redis client goes
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await redis.aclose()


async def load_record(redis: aioredis.Redis, key: str) -> TxRecord:
    raw = await redis.get(key)
    assert raw is not None, f"no record at {key}"
    return TxRecord.loads(raw)


def test_priced_out_transaction_is_replaced_in_the_next_block(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover, deployed: tuple[Deployment, LocalAccount],
    record_property: Callable[[str, object], None],
) -> None:
    deployment, member = deployed
    aggregator = AggregatorClient(w3, deployment)
    rpc(w3, "evm_mine")
    message = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=31)
    start = nonce(w3, member)

    async def scenario() -> tuple[UpdateSubmitted | UpdateFailed, dict[str, Any], dict[str, Any], int, int, TxRecord]:
        # Only the fee rise can make it replace this early: the wall-clock re-send is a minute
        # away and the block count (replace_after_blocks) five blocks.
        async with handling(w3, deployment, member, org, message, replace_after_blocks=5,
                            receipt_timeout=30) as (sub, redis, task, first):
            rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(fees(first)[0] * 3))
            rpc(w3, "evm_mine")
            risen = w3.eth.block_number
            assert nonce(w3, member) == start  # the block of the fee rise left it out
            replacement, blocks = await mine_until(w3, replacement_of(w3, member.address, first), "a replacement",
                                                   most=8)
            await asyncio.to_thread(rpc, w3, "evm_mine")
            answer = await asyncio.wait_for(task, 30)
            return answer, first, replacement, risen, blocks, await load_record(
                redis, sub.record_key("update", 1, message.branch))

    answer, first, replacement, risen, blocks, record = asyncio.run(scenario())
    (first_fee, first_tip), (new_fee, new_tip), rise = fees(first), fees(replacement), base_fee(w3, risen)
    for name, value in (("blocks_to_replacement", blocks), ("base_fee_before", base_fee(w3, risen - 1)),
                        ("base_fee_raised", rise), ("first_fees", (first_fee, first_tip)),
                        ("replacement_fees", (new_fee, new_tip))):
        record_property(name, value)
    assert rise > first_fee
    assert blocks <= PRICED_OUT_BOUND_BLOCKS, f"replaced {blocks} blocks after the fee rise"
    # Same nonce; both fees up by fee_bump_percent (15) at least, the max fee at least twice the new base fee.
    assert int(replacement["nonce"], 16) == start == record.nonce
    assert new_fee * 100 >= first_fee * 115 and new_tip * 100 >= first_tip * 115, (first, replacement)
    assert new_fee >= 2 * rise + new_tip
    assert isinstance(answer, UpdateSubmitted), answer
    mined = w3.eth.get_transaction(answer.tx_hash)  # type: ignore[arg-type]
    assert answer.tx_hash == replacement["hash"] and mined["nonce"] == start and fees(mined)[0] == new_fee > first_fee
    assert record.hashes == [first["hash"], replacement["hash"]]
    assert nonce(w3, member) == start + 1
    assert accepted_logs(aggregator, 1, member) == [answer.tx_hash]


def test_version_unmined_for_replace_after_blocks_is_replaced(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover, deployed: tuple[Deployment, LocalAccount],
) -> None:
    """A version gone from the pool while the fee stays low (dropped): re-sent, same nonce, once
    ``replace_after_blocks`` blocks came without it, not earlier and without waiting a minute."""
    deployment, member = deployed
    aggregator = AggregatorClient(w3, deployment)
    rpc(w3, "evm_mine")
    message = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=32)
    start = nonce(w3, member)

    async def scenario() -> tuple[UpdateSubmitted | UpdateFailed, dict[str, Any], dict[str, Any], int]:
        async with handling(w3, deployment, member, org, message, replace_after_blocks=3,
                            receipt_timeout=30) as (_, _, task, first):
            rpc(w3, "anvil_dropTransaction", first["hash"])
            resent, blocks = await mine_until(w3, lambda: pool_of(w3, member.address).get(start), "the re-sent version",
                                              most=6)
            await asyncio.to_thread(rpc, w3, "evm_mine")
            return await asyncio.wait_for(task, 30), first, resent, blocks

    answer, first, resent, blocks = asyncio.run(scenario())
    assert blocks == 3, f"re-sent after {blocks} blocks"
    assert int(resent["nonce"], 16) == start and resent["hash"] != first["hash"]
    assert fees(resent)[0] * 100 >= fees(first)[0] * 115
    assert isinstance(answer, UpdateSubmitted) and answer.tx_hash == resent["hash"], answer
    assert accepted_logs(aggregator, 1, member) == [answer.tx_hash]


def test_fee_ceiling_is_never_exceeded_reported_and_resumed_later(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover, deployed: tuple[Deployment, LocalAccount],
    record_property: Callable[[str, object], None],
) -> None:
    """The base fee rises above the ceiling: nothing is sent above it, the ceiling is reported
    once, and the update fails with ``fee_ceiling``, its record (nonce, versions) kept. Once the
    base fee is back under the ceiling, a later call resumes the same nonce with a version at the
    ceiling (twice the base fee plus the tip would be above it), which is accepted."""
    deployment, member = deployed
    aggregator = AggregatorClient(w3, deployment)
    rpc(w3, "evm_mine")
    message = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=33)
    start = nonce(w3, member)
    ceiling = 4 * (2 * base_fee(w3) + int(w3.eth.max_priority_fee))  # the first version fits under it
    reported = counter("wafl_submitter_fee_ceiling_total", kind="update")

    async def scenario() -> tuple[UpdateFailed | UpdateSubmitted, TxRecord, float, dict[str, Any],
                                  UpdateFailed | UpdateSubmitted, TxRecord, dict[str, Any]]:
        async with handling(w3, deployment, member, org, message, receipt_timeout=6,
                            max_fee_wei=ceiling) as (sub, redis, task, first):
            key = sub.record_key("update", 1, message.branch)
            rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(3 * ceiling))
            rpc(w3, "evm_mine")
            await wait_for(lambda: counter("wafl_submitter_fee_ceiling_total", kind="update") > reported,
                           "the ceiling reported")
            await asyncio.to_thread(rpc, w3, "evm_mine")  # another block above the ceiling: priced again
            failed = await asyncio.wait_for(task, 30)
            assert nonce(w3, member) == start
            held, reports = await load_record(redis, key), counter("wafl_submitter_fee_ceiling_total", kind="update")
            # Back under the ceiling, but 2 x base fee + tip is still above it.
            rpc(w3, "anvil_setNextBlockBaseFeePerGas", hex(ceiling * 6 // 10))
            rpc(w3, "evm_mine")
            later = asyncio.create_task(sub.submit(message))
            resumed = await wait_for(lambda: pool_of(w3, member.address).get(start), "the resumed version")
            await asyncio.to_thread(rpc, w3, "evm_mine")
            answer = await asyncio.wait_for(later, 30)
            return failed, held, reports, first, answer, await load_record(redis, key), resumed

    failed, held, reports, first, answer, record, resumed = asyncio.run(scenario())
    for name, value in (("ceiling", ceiling), ("first_fees", fees(first)), ("resumed_fees", fees(resumed))):
        record_property(name, value)
    assert isinstance(failed, UpdateFailed) and failed.reason == "fee_ceiling", failed
    assert f"above the ceiling of {ceiling}" in failed.detail
    assert reports == reported + 1  # once for the episode, however many blocks it lasted
    # Held, not lost: the record keeps the nonce and its one version, signed under the ceiling; the
    # node evicted that version, so nothing of the key was mined.
    assert held.state == "pending" and held.nonce == start and held.hashes == [first["hash"]]
    assert held.max_fee == fees(first)[0] <= ceiling
    # The later call: same nonce, a version at the ceiling exactly, mined and accepted once.
    assert isinstance(answer, UpdateSubmitted), answer
    assert int(resumed["nonce"], 16) == start and fees(resumed)[0] == ceiling and resumed["hash"] == answer.tx_hash
    assert record.hashes == [first["hash"], answer.tx_hash] and record.max_fee == ceiling
    assert w3.eth.get_transaction(answer.tx_hash)["nonce"] == start  # type: ignore[arg-type]
    assert nonce(w3, member) == start + 1
    assert accepted_logs(aggregator, 1, member) == [answer.tx_hash]
    assert counter("wafl_submitter_fee_ceiling_total", kind="update") == reports + 1  # the capped version


def test_fee_settings_refuse_a_bump_nodes_would_refuse() -> None:
    assert SubmitterSettings(org="x", fee_bump_percent=10, replace_after_blocks=2).policy().replace_after_blocks == 2
    with pytest.raises(ValidationError, match="fee_bump_percent"):
        SubmitterSettings(org="x", fee_bump_percent=9)
    with pytest.raises(ValueError, match="at least 10"):
        TxPolicy(fee_bump_percent=5)
    with pytest.raises(ValidationError, match="replace_after_blocks"):
        SubmitterSettings(org="x", replace_after_blocks=0)

