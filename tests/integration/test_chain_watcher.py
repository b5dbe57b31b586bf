"""Chain watcher against a real anvil chain, RabbitMQ and Redis: only confirmed events are
published, each exactly once across restarts; a reorg inside the confirmation depth never
reaches the queues; a deeper one is said once, at its fork point, and only the new branch's
events are published; a passed deadline is announced once per round (and branch)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3

from services.chain_watcher.follower import ChainFollower, Cursor
from services.chain_watcher.handlers import Watcher, WatcherState
from services.chain_watcher.settings import ChainWatcherSettings
from tests.conftest import new_account
from tests.support.brokers import AMQP_URL, REDIS_URL, amqp, body, drain, serving
from wafl.bus.chainstate import read_state
from wafl.bus.service import make_runtime
from wafl.bus.topology import Topology
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.core.config import load_config

CONFIRMATIONS = 3
ROUND_SECONDS = 60
TOPICS = ("round.opened", "round.finalized", "round.deadline", "chain.reorged")


@pytest.fixture()
def chain() -> Iterator[tuple[Web3, Deployment, LocalAccount]]:
    # A chain of its own: the tests travel in time and revert snapshots.
    with Anvil() as anvil:
        w3 = anvil.web3()
        admin = new_account(w3)
        deployment = deploy(w3, admin, load_config("ref-9x6-b10"), quorum=2, round_duration=ROUND_SECONDS,
                            participants=[new_account(w3), new_account(w3)])
        # Round 1 opened with the last attestation: let it be as deep as before attestations.
        mine(w3, CONFIRMATIONS)
        yield w3, deployment, admin


def mine(w3: Web3, blocks: int = 1) -> None:
    for _ in range(blocks):
        w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


def finalize_after_deadline(w3: Web3, deployment: Deployment, account: LocalAccount) -> None:
    """No updates: the deadline passes and anyone finalises (RoundFinalized + RoundOpened)."""
    w3.provider.make_request("evm_increaseTime", [ROUND_SECONDS + 1])  # type: ignore[arg-type]
    mine(w3)
    AggregatorClient(w3, deployment).finalize_round(account)


class FailingPublisher:
    async def publish(self, *args: Any, **kwargs: Any) -> None:
        raise ConnectionError("broker gone")


@asynccontextmanager
async def watcher(org: str, w3: Web3, deployment: Deployment) -> AsyncIterator[Watcher]:
    """A chain watcher as its process runs it; leaving the block is a crash (no clean-up)."""
    settings = ChainWatcherSettings(org=org, amqp_url=AMQP_URL, redis_url=REDIS_URL, confirmations=CONFIRMATIONS)
    runtime = make_runtime(settings, "chain_watcher")
    follower = ChainFollower(w3, deployment, org, CONFIRMATIONS)
    watch = Watcher(runtime, WatcherState(follower))
    async with serving(runtime):
        yield watch


async def received(org: str, expect: int, timeout: float = 5.0) -> list[tuple[str, dict[str, Any]]]:
    """What the metrics service's queues hold, as (topic, body), in publishing order per topic."""
    topology = Topology(org)
    got: list[tuple[str, dict[str, Any]]] = []
    async with amqp() as channel:
        for topic in TOPICS:
            queue = await channel.declare_queue(topology.service_queue("metrics", topic).name, passive=True)
            got += [(topic, body(m)) for m in await drain(queue, 0, timeout=timeout / len(TOPICS), settle=0.3)]
    assert len(got) == expect, got
    return got


def test_follower_publishes_only_confirmed_events_in_chain_order(
    chain: tuple[Web3, Deployment, LocalAccount],
) -> None:
    w3, deployment, admin = chain
    follower = ChainFollower(w3, deployment, "org-a", CONFIRMATIONS)
    cursor = Cursor(scanned_to=deployment.start_block - 1)
    finalize_after_deadline(w3, deployment, admin)
    head = follower.head()
    events, safe, hashes = follower.confirmed_events(cursor, head)
    assert safe == head.number - CONFIRMATIONS
    assert hashes == {n: w3.eth.get_block(n)["hash"].to_0x_hex() for n in range(deployment.start_block, safe + 1)}
    # Round 1 was opened at the attestations (confirmed by now); its finalisation is too recent.
    assert [(e.routing_key, e.round) for e in events] == [("round.opened", 1)]  # type: ignore[attr-defined]
    follower.remember(cursor, safe, hashes)

    mine(w3, CONFIRMATIONS)
    events, safe, _ = follower.confirmed_events(cursor, follower.head())
    assert [(e.routing_key, e.round) for e in events] == [  # type: ignore[attr-defined]
        ("round.finalized", 1), ("round.opened", 2)]
    finalized, opened = events
    assert finalized.global_words == opened.global_words == AggregatorClient(w3, deployment).global_words()  # type: ignore[attr-defined]
    # Ids are the log's place on its branch: a second scan of the same blocks yields the same ids.
    again, _, _ = follower.confirmed_events(Cursor(scanned_to=cursor.scanned_to), follower.head())
    assert [e.message_id for e in again] == [e.message_id for e in events]
    assert finalized.message_id == f"{finalized.block_hash}:{finalized.log_index}"


def test_restarts_miss_nothing_and_repeat_nothing(chain: tuple[Web3, Deployment, LocalAccount], org: str) -> None:
    w3, deployment, admin = chain

    async def scenario() -> None:
        async with watcher(org, w3, deployment) as first:
            mine(w3, CONFIRMATIONS)
            assert await first.poll_once() == 1  # round 1 opened
            state = await read_state(first.runtime.redis, org)
            assert state is not None and state.round == 1
        # Crashed; the chain moves on while no watcher runs.
        finalize_after_deadline(w3, deployment, admin)
        finalize_after_deadline(w3, deployment, admin)
        mine(w3, CONFIRMATIONS)
        async with watcher(org, w3, deployment) as second:
            # Dies after publishing "finalized 1", before "opened 2": mid-batch, cursor not advanced.
            second.publishers["round.opened"] = FailingPublisher()  # type: ignore[assignment]
            with pytest.raises(ConnectionError):
                await second.poll_once()
        async with watcher(org, w3, deployment) as third:
            assert await third.poll_once() == 3  # opened 2, finalized 2, opened 3
            assert await third.poll_once() == 0
        async with watcher(org, w3, deployment) as fourth:
            assert await fourth.poll_once() == 0
        got = await received(org, expect=5)
        rounds = [(topic, message["round"]) for topic, message in got]
        assert sorted(rounds) == sorted([("round.opened", 1), ("round.opened", 2), ("round.opened", 3),
                                         ("round.finalized", 1), ("round.finalized", 2)])
        assert len({message["message_id"] for _, message in got}) == 5

    asyncio.run(scenario())


def test_reorg_within_the_confirmation_depth_is_never_published(
    chain: tuple[Web3, Deployment, LocalAccount], org: str,
) -> None:
    w3, deployment, admin = chain

    async def scenario() -> None:
        async with watcher(org, w3, deployment) as watch:
            mine(w3, CONFIRMATIONS)
            assert await watch.poll_once() == 1
            snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
            finalize_after_deadline(w3, deployment, admin)  # on the branch that will be dropped
            mine(w3, CONFIRMATIONS - 2)
            assert await watch.poll_once() == 0  # not confirmed yet
            orphaned = AggregatorClient(w3, deployment).current_round().round
            assert orphaned == 2
            assert w3.provider.make_request("evm_revert", [snapshot])["result"] is True  # type: ignore[arg-type]
            mine(w3, CONFIRMATIONS + 2)  # the new branch: longer, without the finalisation
            assert AggregatorClient(w3, deployment).current_round().round == 1
            assert await watch.poll_once() == 0
        got = await received(org, expect=1)
        assert [(topic, message["round"]) for topic, message in got] == [("round.opened", 1)]

    asyncio.run(scenario())


def test_a_reorg_deeper_than_the_confirmation_depth_is_said_once_and_replayed_from_its_fork(
    chain: tuple[Web3, Deployment, LocalAccount], org: str,
) -> None:
    w3, deployment, admin = chain
    aggregator = AggregatorClient(w3, deployment)

    async def scenario() -> None:
        async with watcher(org, w3, deployment) as watch:
            finalize_after_deadline(w3, deployment, admin)  # finalized 1, opened 2: they stay
            mine(w3, CONFIRMATIONS)
            assert await watch.poll_once() == 3  # opened 1, finalized 1, opened 2
            fork_block = w3.eth.block_number
            fork_hash = w3.eth.get_block(fork_block)["hash"].to_0x_hex()
            finalize_after_deadline(w3, deployment, admin)  # finalized 2, opened 3: dropped below
            mine(w3, CONFIRMATIONS + 2)
            assert await watch.poll_once() == 2
            assert aggregator.current_round().round == 3
            old = {n: w3.eth.get_block(n)["hash"].to_0x_hex() for n in range(fork_block + 1, w3.eth.block_number + 1)}
            scanned = w3.eth.block_number - CONFIRMATIONS
            # Every block after the fork replaced by an empty one, then a longer branch.
            w3.provider.make_request("anvil_reorg", [w3.eth.block_number - fork_block, []])  # type: ignore[arg-type]
            mine(w3, 2)
            assert aggregator.current_round().round == 2
            assert await watch.poll_once() == 0  # the reorg is said; nothing of the old branch again
            assert await watch.poll_once() == 0  # and said once
        async with watcher(org, w3, deployment) as restarted:
            assert await restarted.poll_once() == 0  # not again after a restart either
            finalize_after_deadline(w3, deployment, admin)  # round 2 closed again, on the new branch
            mine(w3, CONFIRMATIONS)
            assert await restarted.poll_once() == 2
        got = await received(org, expect=8)
        (reorg,) = [message for topic, message in got if topic == "chain.reorged"]
        assert (reorg["fork_block"], reorg["fork_hash"], reorg["round"]) == (fork_block, fork_hash, 2)
        assert reorg["depth"] == scanned - fork_block
        assert reorg["dropped_blocks"] == [old[n] for n in range(fork_block + 1, scanned + 1)]
        rounds = sorted((topic, message["round"]) for topic, message in got if topic != "chain.reorged")
        assert rounds == [("round.finalized", 1), ("round.finalized", 2), ("round.finalized", 2),
                          ("round.opened", 1), ("round.opened", 2), ("round.opened", 3), ("round.opened", 3)]
        # The new branch's events are new ones: other blocks, other ids.
        opened_3 = [m for topic, m in got if topic == "round.opened" and m["round"] == 3]
        assert opened_3[0]["block_hash"] != opened_3[1]["block_hash"]
        assert opened_3[1]["block_hash"] == w3.eth.get_block(opened_3[1]["block_number"])["hash"].to_0x_hex()
        assert len({m["message_id"] for _, m in got}) == 8

    asyncio.run(scenario())


def test_a_new_branch_shorter_than_the_scanned_one_is_a_reorg_too(
    chain: tuple[Web3, Deployment, LocalAccount], org: str,
) -> None:
    w3, deployment, admin = chain

    async def scenario() -> None:
        async with watcher(org, w3, deployment) as watch:
            mine(w3, CONFIRMATIONS)
            assert await watch.poll_once() == 1  # opened 1
            fork_block = w3.eth.block_number - CONFIRMATIONS
            finalize_after_deadline(w3, deployment, admin)
            mine(w3, CONFIRMATIONS)
            assert await watch.poll_once() == 2  # finalized 1, opened 2
            # Back to before the finalisation, and no new blocks: the scanned height is gone.
            w3.provider.make_request("anvil_rollback", [w3.eth.block_number - fork_block])  # type: ignore[arg-type]
            assert await watch.poll_once() == 0
            mine(w3, CONFIRMATIONS + 3)
            assert await watch.poll_once() == 0  # said once; the new branch has no event
        got = await received(org, expect=4)
        (reorg,) = [message for topic, message in got if topic == "chain.reorged"]
        assert reorg["fork_block"] <= fork_block and reorg["round"] == 1

    asyncio.run(scenario())


def test_a_reorg_between_the_fork_check_and_the_scan_is_not_scanned_over(
    chain: tuple[Web3, Deployment, LocalAccount],
) -> None:
    """The chain reorganises after find_fork looked and before the scan: the scan must not stitch
    the new branch onto the kept hashes of the old one (the fork would never be seen)."""
    w3, deployment, admin = chain
    follower = ChainFollower(w3, deployment, "org-a", CONFIRMATIONS)
    cursor = Cursor(scanned_to=deployment.start_block - 1)
    finalize_after_deadline(w3, deployment, admin)
    mine(w3, CONFIRMATIONS)
    _, safe, hashes = follower.confirmed_events(cursor, follower.head())
    follower.remember(cursor, safe, hashes)
    assert follower.find_fork(cursor) is None
    w3.provider.make_request("anvil_reorg", [w3.eth.block_number - safe + 2, []])  # type: ignore[arg-type]
    mine(w3, CONFIRMATIONS + 2)
    assert follower.confirmed_events(cursor, follower.head()) == ([], safe, {})
    fork = follower.find_fork(cursor)
    assert fork is not None and fork.block == safe - 2


def test_a_passed_deadline_is_announced_once_per_round(
    chain: tuple[Web3, Deployment, LocalAccount], org: str,
) -> None:
    w3, deployment, _ = chain

    async def scenario() -> None:
        async with watcher(org, w3, deployment) as watch:
            mine(w3, CONFIRMATIONS)
            await watch.poll_once()
            w3.provider.make_request("evm_increaseTime", [ROUND_SECONDS + 1])  # type: ignore[arg-type]
            mine(w3)
            await watch.poll_once()
        async with watcher(org, w3, deployment) as restarted:
            mine(w3)
            await restarted.poll_once()
        got = await received(org, expect=2)
        deadlines = [message for topic, message in got if topic == "round.deadline"]
        assert len(deadlines) == 1
        assert deadlines[0]["round"] == 1
        assert deadlines[0]["deadline"] == AggregatorClient(w3, deployment).current_round().deadline

    asyncio.run(scenario())
