"""The chain watcher's plain core: confirmed contract events from a cursor, reorg-aware.

The cursor is (scanned_to, last_published): every block up to ``scanned_to`` has been scanned
and every log up to position ``last_published`` (block, log index) published. Only blocks with
``confirmations`` blocks on top are scanned, so a reorg within the confirmation depth never
reaches a published event. The hash of every scanned block of the last ``KEEP_HASHES`` is kept:
when the chain's hash at ``scanned_to`` changes (a reorg deeper than the depth), the fork point
is the highest kept block whose hash still matches, and only the blocks after it are scanned
again. Events of the unchanged prefix are never published twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from web3 import Web3
from web3.exceptions import BlockNotFound

from wafl.bus.messages import ChainEvent, MemberRejoined, RoundFinalized, RoundOpened, RoundVoided, UpdateAccepted
from wafl.chain.artifact import Deployment

KEEP_HASHES = 256
# The aggregator's events the watcher reads. RoundMembers (secure aggregation) is published as part
# of the RoundOpened that follows it in the same transaction; an artifact whose ABI lacks an event
# (a deployment older than secure aggregation) simply never has it.
EVENTS = ("RoundMembers", "RoundOpened", "UpdateAccepted", "RoundVoided", "RoundFinalized", "MemberRejoined")


@dataclass
class Cursor:
    scanned_to: int
    last_published: tuple[int, int] = (-1, -1)
    hashes: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fork:
    """Where the chain left the branch the watcher had scanned."""

    block: int
    hash: str
    depth: int  # scanned blocks dropped
    dropped: list[str]  # their hashes, as far as they were kept
    old_tip: str  # the hash the watcher had for its last scanned block


@dataclass(frozen=True)
class Head:
    number: int
    timestamp: int
    round: int
    deadline: int


class ChainFollower:
    def __init__(self, w3: Web3, deployment: Deployment, org: str, confirmations: int, max_block_range: int = 2000):
        self.w3 = w3
        self.org = org
        self.confirmations = confirmations
        self.max_block_range = max_block_range
        self.contract = w3.eth.contract(address=Web3.to_checksum_address(deployment.address), abi=deployment.abi)
        self.start_block = deployment.start_block
        in_abi = {item.get("name") for item in deployment.abi if item.get("type") == "event"}
        self._events = {name: self.contract.events[name]() for name in EVENTS if name in in_abi}

    def head(self) -> Head:
        block = self.w3.eth.get_block("latest")
        round_id, deadline, _ = self.contract.functions.currentRound().call(block_identifier=block["number"])
        return Head(int(block["number"]), int(block["timestamp"]), int(round_id), int(deadline))

    def find_fork(self, cursor: Cursor) -> Fork | None:
        """The fork point when the chain no longer holds the last scanned block, else None."""
        if cursor.scanned_to < self.start_block or cursor.scanned_to not in cursor.hashes:
            return None
        if self._hash(cursor.scanned_to) == cursor.hashes[cursor.scanned_to]:
            return None
        kept = sorted((n for n in cursor.hashes if n <= cursor.scanned_to), reverse=True)
        fork = next((n for n in kept if self._hash(n) == cursor.hashes[n]), None)
        if fork is None:  # deeper than every kept hash: scan again from the deployment
            fork_block = max(0, self.start_block - 1)
            fork_hash = self._hash(fork_block) or ""
        else:
            fork_block, fork_hash = fork, cursor.hashes[fork]
        dropped = [cursor.hashes[n] for n in sorted(cursor.hashes) if n > fork_block]
        return Fork(fork_block, fork_hash, cursor.scanned_to - fork_block, dropped, cursor.hashes[cursor.scanned_to])

    @staticmethod
    def rewind(cursor: Cursor, fork: Fork) -> None:
        """Forget the dropped branch: its blocks are scanned again, its events may be published anew."""
        cursor.hashes = {n: h for n, h in cursor.hashes.items() if n <= fork.block}
        cursor.scanned_to = fork.block
        cursor.last_published = min(cursor.last_published, (fork.block, 1 << 30))

    def confirmed_events(self, cursor: Cursor, head: Head) -> tuple[list[ChainEvent], int, dict[int, str]]:
        """Events after the cursor up to the confirmed block (head - confirmations), in chain
        order, and the hashes of the scanned blocks to keep. Nothing when the chain changed under
        the scan (the cursor's last block, or a log's block, is not the block kept at its height):
        the next poll sees the fork."""
        safe = head.number - self.confirmations
        if safe <= cursor.scanned_to:
            return [], cursor.scanned_to, {}
        logs: list[Any] = []
        start = cursor.scanned_to + 1
        while start <= safe:
            end = min(safe, start + self.max_block_range - 1)
            logs += self.w3.eth.get_logs({"address": self.contract.address, "fromBlock": start, "toBlock": end})
            start = end + 1
        fetched = {n: self._hash(n) for n in range(max(cursor.scanned_to + 1, safe - KEEP_HASHES + 1), safe + 1)}
        hashes = {n: h for n, h in fetched.items() if h is not None}
        # A reorg since find_fork looked: the new range would sit on another branch than the kept hashes.
        moved = cursor.scanned_to in cursor.hashes and self._hash(cursor.scanned_to) != cursor.hashes[cursor.scanned_to]
        if moved or len(hashes) < len(fetched) or any(
                hashes.get(int(log["blockNumber"]), log["blockHash"].to_0x_hex()) != log["blockHash"].to_0x_hex()
                for log in logs):
            return [], cursor.scanned_to, {}
        return self.to_messages(logs), safe, hashes

    @staticmethod
    def remember(cursor: Cursor, block: int, hashes: dict[int, str]) -> None:
        cursor.scanned_to = block
        cursor.hashes.update(hashes)
        for old in sorted(cursor.hashes)[:-KEEP_HASHES]:
            del cursor.hashes[old]

    def _hash(self, number: int) -> str | None:
        """The chain's block hash at ``number``; None above its head (a new branch may be shorter)."""
        try:
            return str(self.w3.eth.get_block(number)["hash"].to_0x_hex())
        except BlockNotFound:
            return None

    def to_messages(self, logs: list[Any]) -> list[ChainEvent]:
        """The messages of the aggregator's raw logs (eth_getLogs entries), in chain order; logs of
        other events are left out."""
        decoded = [self._decode(log) for log in sorted(logs, key=lambda x: (x["blockNumber"], x["logIndex"]))]
        return self._to_messages([d for d in decoded if d is not None])

    def _decode(self, log: Any) -> Any:
        for event in self._events.values():
            try:
                return event.process_log(log)
            except Exception:  # another event's signature
                continue
        return None

    def _to_messages(self, logs: list[Any]) -> list[ChainEvent]:
        messages: list[ChainEvent] = []
        for index, log in enumerate(logs):
            common = {
                "org": self.org,
                "message_id": f"{log['blockHash'].to_0x_hex()}:{log['logIndex']}",
                "block_number": int(log["blockNumber"]),
                "block_hash": log["blockHash"].to_0x_hex(),
                "tx_hash": log["transactionHash"].to_0x_hex(),
                "log_index": int(log["logIndex"]),
            }
            args = log["args"]
            if log["event"] == "RoundOpened":
                members, keys = self._round_members(logs[:index], log)
                messages.append(RoundOpened(round=int(args["round"]), deadline=int(args["deadline"]),
                                            global_words=[int(w) for w in args["globalWords"]],
                                            members=members, member_keys=keys, **common))
            elif log["event"] == "UpdateAccepted":
                messages.append(UpdateAccepted(round=int(args["round"]), participant=str(args["participant"]),
                                               accepted=int(args["accepted"]), **common))
            elif log["event"] == "RoundFinalized":
                # The contract emits RoundOpened(round + 1, ..., averaged model) right after.
                opened = next((n for n in logs[index + 1:] if n["event"] == "RoundOpened"
                               and n["transactionHash"] == log["transactionHash"]), None)
                words = [int(w) for w in opened["args"]["globalWords"]] if opened else self._global_words(log)
                messages.append(RoundFinalized(round=int(args["round"]), accepted=int(args["accepted"]),
                                               global_words=words, **common))
            elif log["event"] == "RoundVoided":
                messages.append(RoundVoided(round=int(args["round"]), missing=[str(a) for a in args["missing"]],
                                            excluded=bool(args["excluded"]), **common))
            elif log["event"] == "MemberRejoined":
                messages.append(MemberRejoined(participant=str(args["participant"]),
                                               from_round=int(args["fromRound"]), **common))
        return messages

    @staticmethod
    def _round_members(earlier: list[Any], opened: Any) -> tuple[list[str], list[int]]:
        """The set and keys of the RoundMembers log that precedes ``opened`` in its transaction
        (secure aggregation); empty lists without one (a plain deployment)."""
        members = next((n for n in reversed(earlier) if n["event"] == "RoundMembers"
                        and n["transactionHash"] == opened["transactionHash"]
                        and int(n["args"]["round"]) == int(opened["args"]["round"])), None)
        if members is None:
            return [], []
        return [str(a) for a in members["args"]["members"]], [int(k) for k in members["args"]["keys"]]

    def _global_words(self, log: Any) -> list[int]:
        words = self.contract.functions.globalModel().call(block_identifier=int(log["blockNumber"]))
        return [int(w) for w in words]
