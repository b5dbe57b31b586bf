"""The chain watcher's secure-aggregation events, from raw logs as eth_getLogs returns them: the
RoundMembers log rides on the RoundOpened of its transaction, RoundVoided and MemberRejoined are
published with the ids of every chain event; an artifact without these events (a deployment older
than secure aggregation) is read as before. The event ABI is the one IWaflAggregator.sol declares."""

from __future__ import annotations

import asyncio
from typing import Any

from eth_abi import encode
from eth_utils import keccak
from hexbytes import HexBytes
from web3 import Web3

from services.chain_watcher.follower import ChainFollower, Head
from services.chain_watcher.handlers import Watcher, WatcherState
from tests.support.inmemory import ADDRESS, EVENTS, ORG, Observer, deployment, runtime, serving
from wafl.bus.chainstate import read_state
from wafl.bus.messages import MemberRejoined, RoundFinalized, RoundOpened, RoundVoided, UpdateAccepted

ALICE, BOB, CAROL = (Web3.to_checksum_address("0x" + c * 40) for c in "abc")
BLOCK_HASH = "0x" + "b1" * 32
TX, OTHER_TX = "0x" + "71" * 32, "0x" + "72" * 32


def raw_log(name: str, values: dict[str, Any], log_index: int, tx: str = TX, block: int = 9) -> dict[str, Any]:
    """The log ``name`` with ``values`` as a node returns it."""
    inputs = EVENTS[name]["inputs"]
    signature = f"{name}({','.join(i['type'] for i in inputs)})"
    topics = [HexBytes(keccak(text=signature))]
    topics += [HexBytes(encode([i["type"]], [values[i["name"]]])) for i in inputs if i["indexed"]]
    plain = [i for i in inputs if not i["indexed"]]
    return {"address": ADDRESS, "topics": topics, "data": HexBytes(encode([i["type"] for i in plain],
                                                                             [values[i["name"]] for i in plain])),
            "blockNumber": block, "blockHash": HexBytes(BLOCK_HASH), "transactionHash": HexBytes(tx),
            "logIndex": log_index, "transactionIndex": 0, "removed": False}


KEYS = [11, 12, 21, 22, 0, 1]  # Alice's and Bob's points, an absent third slot


def voided_round_logs() -> list[dict[str, Any]]:
    """finalizeRound after round 4's deadline with Carol missing: voided (Carol excluded), finalised
    with 0 updates, round 5 opened with the smaller set; then Carol rejoins (another transaction).
    Given out of order, as a node may."""
    return [
        raw_log("MemberRejoined", {"participant": CAROL, "fromRound": 6}, 4, tx=OTHER_TX),
        raw_log("RoundOpened", {"round": 5, "deadline": 1000, "globalWords": [7, 8]}, 3),
        raw_log("RoundMembers", {"round": 5, "members": [ALICE, BOB], "keys": KEYS}, 2),
        raw_log("RoundFinalized", {"round": 4, "accepted": 0}, 1),
        raw_log("RoundVoided", {"round": 4, "missing": [CAROL], "excluded": True}, 0),
    ]


def test_the_interface_declares_the_events_the_watcher_reads() -> None:
    assert {"RoundMembers", "RoundVoided", "MemberRejoined", "RoundOpened", "RoundFinalized"} <= set(EVENTS)


def test_round_members_ride_on_their_round_opened_and_voids_and_rejoins_are_events() -> None:
    follower = ChainFollower(Web3(), deployment(), ORG, confirmations=0)
    voided, finalized, opened, rejoined = follower.to_messages(voided_round_logs())
    assert isinstance(voided, RoundVoided) and (voided.round, voided.missing, voided.excluded) == (4, [CAROL], True)
    assert isinstance(finalized, RoundFinalized) and (finalized.round, finalized.accepted) == (4, 0)
    assert finalized.global_words == [7, 8]  # the next round's model: unchanged by a voided round
    assert isinstance(opened, RoundOpened) and opened.round == 5
    assert opened.members == [ALICE, BOB] and opened.member_keys == KEYS
    assert isinstance(rejoined, MemberRejoined) and (rejoined.participant, rejoined.from_round) == (CAROL, 6)
    # Ids as every chain event's: the log's place on its branch.
    assert [e.message_id for e in (voided, rejoined)] == [f"{BLOCK_HASH}:0", f"{BLOCK_HASH}:4"]
    assert rejoined.tx_hash == OTHER_TX and voided.block_number == 9


def test_a_round_opened_takes_only_its_own_transaction_s_members() -> None:
    follower = ChainFollower(Web3(), deployment(), ORG, confirmations=0)
    logs = [raw_log("RoundMembers", {"round": 5, "members": [ALICE, BOB], "keys": KEYS}, 0, tx=OTHER_TX),
            raw_log("RoundOpened", {"round": 5, "deadline": 1000, "globalWords": [7, 8]}, 1),
            raw_log("RoundMembers", {"round": 6, "members": [ALICE], "keys": KEYS}, 2),
            raw_log("RoundOpened", {"round": 7, "deadline": 1000, "globalWords": [7, 8]}, 3)]
    first, second = follower.to_messages(logs)
    assert (first.members, first.member_keys) == ([], [])  # type: ignore[attr-defined]
    assert (second.members, second.member_keys) == ([], [])  # type: ignore[attr-defined]


def test_an_artifact_without_the_secure_events_is_read_as_before() -> None:
    plain = deployment(["RoundOpened", "UpdateAccepted", "RoundFinalized"])
    follower = ChainFollower(Web3(), plain, ORG, confirmations=0)
    logs = [raw_log("UpdateAccepted", {"round": 4, "participant": ALICE, "accepted": 1}, 5), *voided_round_logs()]
    kinds = [type(m) for m in follower.to_messages(logs)]
    assert kinds == [RoundFinalized, RoundOpened, UpdateAccepted]


class FakeFollower(ChainFollower):
    """The chain as a list of logs, all confirmed, and a head past round 5's deadline."""

    def __init__(self, logs: list[dict[str, Any]]) -> None:
        super().__init__(Web3(), deployment(), ORG, confirmations=0)
        self.logs = logs

    def find_fork(self, cursor: Any) -> None:
        return None

    def head(self) -> Head:
        return Head(number=10, timestamp=500, round=5, deadline=1000)

    def confirmed_events(self, cursor: Any, head: Head) -> tuple[list[Any], int, dict[int, str]]:
        return self.to_messages(self.logs), head.number, {head.number: BLOCK_HASH}


def test_the_watcher_publishes_voided_rounds_and_rejoins_once() -> None:
    async def scenario() -> tuple[Observer, int, int]:
        rt = runtime("chain_watcher")
        watcher = Watcher(rt, WatcherState(FakeFollower(voided_round_logs())))
        observer = Observer(rt.broker, rt.topology, ("round.voided", "member.rejoined", "round.opened"))
        async with serving(rt):
            first = await watcher.poll_once()
            again = await watcher.poll_once()  # the same logs: published before
            state = await read_state(rt.redis, ORG)
            assert state is not None and state.round == 5
        return observer, first, again

    observer, first, again = asyncio.run(scenario())
    assert (first, again) == (4, 0)
    (voided,) = observer.of(RoundVoided)
    (rejoined,) = observer.of(MemberRejoined)
    (opened,) = observer.of(RoundOpened)
    assert voided.missing == [CAROL] and voided.excluded and rejoined.from_round == 6
    assert opened.members == [ALICE, BOB]
