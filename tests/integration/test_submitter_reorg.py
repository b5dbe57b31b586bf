"""The submitter after a reorganisation deeper than its confirmation depth, against a real anvil
(a chain of this module's own: the tests rewrite its history) and Redis, with real proofs: an
update the dropped blocks held is sent again, once, while its proof still holds on the new
branch, and forgotten when it no longer does; a nonce left queued behind a gap is not counted on."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from web3 import Web3

from services.submitter.decisions import Submitter
from services.submitter.nonces import NonceManager
from tests.conftest import new_account
from tests.support.brokers import REDIS_URL
from tests.support.submitting import accepted_logs, nonce, proof_message, submitter
from wafl.bus.messages import UpdateFailed, UpdateSubmitted
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import increase_time
from wafl.chain.deploy import deploy
from wafl.core.config import ModelConfig
from wafl.zk.prover import Prover

ROUND_SECONDS = 3600


def reorg_after(w3: Web3, fork_block: int) -> None:
    """Replace every block after ``fork_block`` by an empty one (the same height), then one more."""
    w3.provider.make_request("anvil_reorg", [w3.eth.block_number - fork_block, []])  # type: ignore[arg-type]
    w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def test_a_dropped_update_is_sent_again_once(org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover) -> None:
    admin, member, other = new_account(w3), new_account(w3), new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=ROUND_SECONDS, participants=[member, other])
    aggregator = AggregatorClient(w3, deployment)
    mine = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=11)
    theirs = proof_message(org, ref_config, ref_worker, aggregator, other, 1, seed=12)
    fork_block = w3.eth.block_number

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            ours: Submitter = submitter(redis, w3, deployment, member, org)
            first = await ours.submit(mine)
            assert isinstance(first, UpdateSubmitted)
            # The other organisation's update closes the round: round 2 opens, from our update too.
            aggregator.submit_update(other, 1, list(theirs.update_words), list(theirs.proof))
            assert aggregator.current_round().round == 2
            start = nonce(w3, member)
            reorg_after(w3, fork_block)  # both updates and the finalisation are gone
            assert aggregator.current_round().round == 1 and not aggregator.has_submitted(member.address)
            assert nonce(w3, member) == start - 1

            (answer,) = await ours.resubmit_dropped(fork_block)
            key, resent = answer
            assert key == ours.record_key("update", 1, mine.branch)
            assert isinstance(resent, UpdateSubmitted) and resent.tx_hash != first.tx_hash
            assert accepted_logs(aggregator, 1, member) == [resent.tx_hash]
            assert w3.eth.get_transaction(resent.tx_hash)["nonce"] == start - 1  # type: ignore[arg-type]
            # Said again (a redelivered chain.reorged): the update is on chain, nothing is sent.
            assert await ours.resubmit_dropped(fork_block) == []
            # A redelivered proof is answered from the record: the transaction of the new branch.
            again = await ours.submit(mine)
            assert isinstance(again, UpdateSubmitted) and again.tx_hash == resent.tx_hash
            assert nonce(w3, member) == start
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_a_dropped_update_that_no_longer_holds_is_forgotten(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    admin, member, other = new_account(w3), new_account(w3), new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=ROUND_SECONDS, participants=[member, other])
    aggregator = AggregatorClient(w3, deployment)
    mine = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=13)
    fork_block = w3.eth.block_number

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            ours = submitter(redis, w3, deployment, member, org)
            assert isinstance(await ours.submit(mine), UpdateSubmitted)
            reorg_after(w3, fork_block)
            increase_time(w3, ROUND_SECONDS + 1)  # on the new branch, the round's deadline passes
            start = nonce(w3, member)
            assert await ours.resubmit_dropped(fork_block) == []
            assert await redis.get(ours.record_key("update", 1, mine.branch)) is None
            assert nonce(w3, member) == start  # nothing sent
            # The proof delivered again is answered afresh: the round is closed on this branch.
            late = await ours.submit(mine)
            assert isinstance(late, UpdateFailed) and late.reason == "Wafl__DeadlinePassed", late
            assert accepted_logs(aggregator, 1, member) == []
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_a_transaction_queued_behind_a_gap_does_not_hold_the_nonce_sequence(org: str, w3: Web3) -> None:
    """What a reorganisation leaves when it drops our earlier transactions but the node keeps a
    later one: that one is queued, never mined until the gap is filled. The next nonce is the
    gap's, not the one after the queued transaction."""
    account = new_account(w3)

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            manager = NonceManager(redis, w3, account.address, f"wafl:{org}:submitter")
            async with manager.session() as session:
                start = w3.eth.get_transaction_count(account.address)
                queued = account.sign_transaction({
                    "type": 2, "chainId": w3.eth.chain_id, "nonce": start + 1, "to": account.address, "value": 0,
                    "gas": 21_000, "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9})
                w3.eth.send_raw_transaction(queued.raw_transaction)
                await session.sent(start + 1, queued.hash.to_0x_hex())
                assert await session.next_nonce() == start
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_an_update_left_behind_a_nonce_gap_takes_the_gaps_nonce(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    """A reorganisation dropped our transaction with nonce n while the node kept our update's
    version with nonce n + 1, queued: the submitter resuming the update sends it with nonce n."""
    admin, member, other = new_account(w3), new_account(w3), new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=ROUND_SECONDS, participants=[member, other])
    aggregator = AggregatorClient(w3, deployment)
    mine = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=14)

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            ours = submitter(redis, w3, deployment, member, org)
            start = nonce(w3, member)
            data = aggregator.contract.encode_abi("submitUpdate", args=[1, list(mine.update_words), list(mine.proof)])
            fee = 2 * int(w3.eth.get_block("latest")["baseFeePerGas"]) + 10**9
            stale = member.sign_transaction({
                "type": 2, "chainId": w3.eth.chain_id, "nonce": start + 1, "to": deployment.address, "data": data,
                "value": 0, "gas": 600_000, "maxFeePerGas": fee, "maxPriorityFeePerGas": 10**9})
            w3.eth.send_raw_transaction(stale.raw_transaction)
            record = ours.engine.new_record("update", 1, data, 400_000, 0, 0.0)
            record.nonce, record.hashes, record.max_fee, record.tip = start + 1, [stale.hash.to_0x_hex()], fee, 10**9
            await ours.engine.save(ours.record_key("update", 1, mine.branch), record)

            answer = await ours.submit(mine)  # a redelivery resumes the record
            assert isinstance(answer, UpdateSubmitted), answer
            assert w3.eth.get_transaction(answer.tx_hash)["nonce"] == start  # type: ignore[arg-type]
            assert accepted_logs(aggregator, 1, member) == [answer.tx_hash]
        finally:
            await redis.aclose()

    asyncio.run(scenario())
