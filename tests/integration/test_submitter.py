"""Submitter core against a real anvil and Redis, with real proofs: one transaction per update
whatever the deliveries and replicas, reverts by their custom error names without spending a
transaction, deadlines closed once, one nonce sequence per key."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis
from web3 import Web3

from services.submitter.decisions import UnknownRoundError, WrongParticipantError
from services.submitter.records import TxRecord
from tests.conftest import new_account
from tests.support.brokers import REDIS_URL
from tests.support.submitting import accepted_logs, nonce, proof_message, submitter
from tests.support.updates import make_update
from wafl.bus.messages import RoundFinalizeSent, UpdateFailed, UpdateSubmitted
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import increase_time
from wafl.chain.deploy import deploy
from wafl.core.config import ModelConfig
from wafl.zk.prover import Prover

MIN_GAS_SUBMIT, MAX_GAS_SUBMIT = 250_000, 310_000


def test_update_is_submitted_once_across_replicas_and_redeliveries(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    admin, member, other = new_account(w3), new_account(w3), new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=3600,
                        participants=[member, other])
    aggregator = AggregatorClient(w3, deployment)
    message = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=1)
    redelivered = message.model_copy(update={"message_id": "redelivered"})

    async def scenario() -> list[UpdateSubmitted | UpdateFailed]:
        clients = [aioredis.Redis.from_url(REDIS_URL, decode_responses=True) for _ in range(3)]
        try:
            one, two = (submitter(c, w3, deployment, member, org) for c in clients[:2])
            # First delivery and a redelivery handled at the same time by two replicas.
            answers = list(await asyncio.gather(one.submit(message), two.submit(redelivered)))
            answers.append(await one.submit(message))  # later redelivery
            # Redis state lost (another namespace): recognised on chain, not sent again.
            answers.append(await submitter(clients[2], w3, deployment, member, org,
                                           prefix=f"wafl:{org}:fresh").submit(message))
            return answers
        finally:
            for c in clients:
                await c.aclose()

    before = nonce(w3, member)
    answers = asyncio.run(scenario())
    assert all(isinstance(a, UpdateSubmitted) for a in answers), answers
    submitted = [a for a in answers if isinstance(a, UpdateSubmitted)]
    assert len({a.tx_hash for a in submitted}) == 1
    first = submitted[0]
    assert nonce(w3, member) == before + 1  # one transaction in all
    assert accepted_logs(aggregator, 1, member) == [first.tx_hash]
    receipt = w3.eth.get_transaction_receipt(first.tx_hash)  # type: ignore[arg-type]
    assert receipt["status"] == 1 and receipt["gasUsed"] == first.gas_used
    assert MIN_GAS_SUBMIT <= first.gas_used <= MAX_GAS_SUBMIT, first.gas_used
    assert first.block_number == receipt["blockNumber"] and first.submit_seconds > 0
    assert (first.round, first.participant, first.org) == (1, member.address, org)
    # Redeliveries answer with the same message (same id: consumers can deduplicate).
    assert {a.message_id for a in submitted[:3]} == {first.message_id}
    assert aggregator.has_submitted(member.address) and aggregator.current_round().accepted == 1


def test_reverts_are_named_and_refused_updates_cost_no_transaction(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    admin = new_account(w3)
    a, b, c = (new_account(w3) for _ in range(3))
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=3600,
                        participants=[a, b, c])
    aggregator = AggregatorClient(w3, deployment)
    good = proof_message(org, ref_config, ref_worker, aggregator, a, 1, seed=2)
    tampered = good.model_copy(update={"proof": [good.proof[6], good.proof[7], *good.proof[2:6], good.proof[0],
                                                 good.proof[1]]})
    b_update = make_update(ref_config, ref_worker, aggregator.global_model(), b.address, 1, random.Random(3))
    late = proof_message(org, ref_config, ref_worker, aggregator, c, 1, seed=4)

    async def scenario() -> None:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            sub_a, sub_c = (submitter(redis, w3, deployment, acc, org) for acc in (a, c))
            start = nonce(w3, a)
            failed = await sub_a.submit(tampered)
            assert isinstance(failed, UpdateFailed) and failed.reason == "Wafl__InvalidProof", failed
            assert nonce(w3, a) == start  # refused by estimation: no transaction spent
            # A refused proof does not block the genuine one for the same round.
            ok = await sub_a.submit(good)
            assert isinstance(ok, UpdateSubmitted) and nonce(w3, a) == start + 1
            with pytest.raises(WrongParticipantError):
                await sub_a.submit(late)  # bound to c's address
            with pytest.raises(UnknownRoundError, match="unknown round 7: the contract is at round 1"):
                await sub_a.submit(good.model_copy(update={"round": 7}))
            # b's update reaches the quorum: round 1 closes.
            aggregator.submit_update(b, 1, b_update.words, b_update.proof)
            assert aggregator.current_round().round == 2
            c_start = nonce(w3, c)
            closed = await sub_c.submit(late)
            assert isinstance(closed, UpdateFailed) and closed.reason == "Wafl__RoundClosed", closed
            assert nonce(w3, c) == c_start
            # a's round-1 proof redelivered to a replica that lost its Redis state: the round is closed,
            # but a's update is on chain, and that is the answer.
            again = await submitter(redis, w3, deployment, a, org, prefix=f"wafl:{org}:fresh").submit(good)
            assert isinstance(again, UpdateSubmitted) and again.tx_hash == ok.tx_hash
            # Round 2: a's update arrives on chain by another way (an operator, a lost Redis): the
            # submitter sees hasSubmitted and the UpdateAccepted log, and spends nothing.
            direct = make_update(ref_config, ref_worker, aggregator.global_model(), a.address, 2, random.Random(5))
            receipt = aggregator.submit_update(a, 2, direct.words, direct.proof)
            mine = proof_message(org, ref_config, ref_worker, aggregator, a, 2, seed=6)
            before = nonce(w3, a)
            known = await sub_a.submit(mine)
            assert isinstance(known, UpdateSubmitted) and known.tx_hash == receipt["transactionHash"].to_0x_hex()
            assert nonce(w3, a) == before
        finally:
            await redis.aclose()

    asyncio.run(scenario())
    assert accepted_logs(aggregator, 1, a) and len(accepted_logs(aggregator, 1, a)) == 1
    assert accepted_logs(aggregator, 1, c) == []


def test_round_deadline_finalizes_once(org: str, w3: Web3, ref_config: ModelConfig) -> None:
    admin, member = new_account(w3), new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=1, round_duration=120, participants=[member])
    aggregator = AggregatorClient(w3, deployment)

    async def scenario() -> list[RoundFinalizeSent | None]:
        redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            sub = submitter(redis, w3, deployment, member, org)
            answers = [await sub.finalize(1)]  # deadline not reached: nothing to do, nothing sent
            await asyncio.to_thread(increase_time, w3, 121)
            answers.append(await sub.finalize(1))
            answers.append(await sub.finalize(1))  # the same deadline message again
            # A replica without the record: the round is already finalised.
            answers.append(await submitter(redis, w3, deployment, member, org, prefix=f"wafl:{org}:x").finalize(1))
            with pytest.raises(UnknownRoundError):
                await sub.finalize(3)
            return answers
        finally:
            await redis.aclose()

    before = nonce(w3, member)
    early, sent, again, elsewhere = asyncio.run(scenario())
    assert early is None and elsewhere is None
    assert isinstance(sent, RoundFinalizeSent) and isinstance(again, RoundFinalizeSent)
    assert again.model_dump(exclude={"emitted_at"}) == sent.model_dump(exclude={"emitted_at"})
    assert nonce(w3, member) == before + 1
    receipt = w3.eth.get_transaction_receipt(sent.tx_hash)  # type: ignore[arg-type]
    assert receipt["status"] == 1 and receipt["gasUsed"] == sent.gas_used
    finalized = aggregator.contract.events.RoundFinalized().get_logs(from_block=deployment.start_block)
    assert [(e["args"]["round"], e["transactionHash"].to_0x_hex()) for e in finalized] == [(1, sent.tx_hash)]
    assert aggregator.current_round().round == 2


def test_one_key_two_replicas_concurrent_finalize_and_submit(
    org: str, w3: Web3, ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    """The same key signs for two aggregators; two replicas send concurrently: one nonce sequence."""
    admin, member = new_account(w3), new_account(w3)
    short = deploy(w3, admin, ref_config, quorum=2, round_duration=60, participants=[member])
    long = deploy(w3, admin, ref_config, quorum=2, round_duration=3600, participants=[member])
    message = proof_message(org, ref_config, ref_worker, AggregatorClient(w3, long), member, 1, seed=7)
    increase_time(w3, 61)

    async def scenario() -> tuple[RoundFinalizeSent | None, UpdateSubmitted | UpdateFailed, TxRecord, TxRecord]:
        clients = [aioredis.Redis.from_url(REDIS_URL, decode_responses=True) for _ in range(2)]
        try:
            closer = submitter(clients[0], w3, short, member, org)
            sender = submitter(clients[1], w3, long, member, org)
            finalized, submitted = await asyncio.gather(closer.finalize(1), sender.submit(message))
            keys = (closer.record_key("finalize", 1), sender.record_key("update", 1, message.branch))
            records = [TxRecord.loads(await clients[0].get(key) or "") for key in keys]
            return finalized, submitted, records[0], records[1]
        finally:
            for c in clients:
                await c.aclose()

    before = nonce(w3, member)
    finalized, submitted, fin_record, sub_record = asyncio.run(scenario())
    assert isinstance(finalized, RoundFinalizeSent) and isinstance(submitted, UpdateSubmitted), (finalized, submitted)
    assert sorted([fin_record.nonce, sub_record.nonce]) == [before, before + 1]  # type: ignore[type-var]
    assert len(fin_record.hashes) == 1 and len(sub_record.hashes) == 1  # no collision, no re-send
    assert nonce(w3, member) == before + 2
    assert AggregatorClient(w3, short).current_round().round == 2
    assert AggregatorClient(w3, long).has_submitted(member.address)
