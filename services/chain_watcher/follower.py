"""The chain watcher's plain core: confirmed contract events from a cursor, reorg-aware.

The cursor is (scanned_to, last_published): every block up to ``scanned_to`` has been scanned
and every log up to position ``last_published`` (block, log index) published. Only blocks with
``confirmations`` blocks on top are scanned, so a reorg within the confirmation depth never
reaches a published event. The hashes of recently scanned blocks are kept: if the chain's hash
at ``scanned_to`` changed (a reorg deeper than the depth), the cursor walks back to the last
block whose hash still matches and the range is scanned again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from web3 import Web3

from wafl.bus.messages import ChainEvent, RoundFinalized, RoundOpened, UpdateAccepted
from wafl.chain.artifact import Deployment

KEEP_HASHES = 256


@dataclass
class Cursor:
    scanned_to: int
    last_published: tuple[int, int] = (-1, -1)
    hashes: dict[int, str] = field(default_factory=dict)


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
        self._events = {
            "RoundOpened": self.contract.events.RoundOpened(),
            "UpdateAccepted": self.contract.events.UpdateAccepted(),
            "RoundFinalized": self.contract.events.RoundFinalized(),
        }

    def head(self) -> Head:
        block = self.w3.eth.get_block("latest")
        round_id, deadline, _ = self.contract.functions.currentRound().call(block_identifier=block["number"])
        return Head(int(block["number"]), int(block["timestamp"]), int(round_id), int(deadline))

    def rewind_if_reorged(self, cursor: Cursor) -> int | None:
        """Walk the cursor back past blocks whose hash changed; returns the fork block, if any."""
        if cursor.scanned_to < self.start_block or cursor.scanned_to not in cursor.hashes:
            return None
        if self._hash(cursor.scanned_to) == cursor.hashes[cursor.scanned_to]:
            return None
        for number in sorted(cursor.hashes, reverse=True):
            if number <= cursor.scanned_to and self._hash(number) == cursor.hashes[number]:
                break
        else:
            number = self.start_block - 1
        cursor.hashes = {n: h for n, h in cursor.hashes.items() if n <= number}
        cursor.scanned_to = number
        cursor.last_published = min(cursor.last_published, (number, 1 << 30))
        return number

    def confirmed_events(self, cursor: Cursor, head: Head) -> tuple[list[ChainEvent], int]:
        """Events after the cursor up to the confirmed block (head - confirmations), in chain order."""
        safe = head.number - self.confirmations
        if safe <= cursor.scanned_to:
            return [], cursor.scanned_to
        logs: list[Any] = []
        start = cursor.scanned_to + 1
        while start <= safe:
            end = min(safe, start + self.max_block_range - 1)
            logs += self.w3.eth.get_logs({"address": self.contract.address, "fromBlock": start, "toBlock": end})
            start = end + 1
        decoded = [self._decode(log) for log in sorted(logs, key=lambda x: (x["blockNumber"], x["logIndex"]))]
        decoded = [d for d in decoded if d is not None]
        return self._to_messages(decoded), safe

    def remember(self, cursor: Cursor, block: int) -> None:
        cursor.scanned_to = block
        cursor.hashes[block] = self._hash(block)
        for old in sorted(cursor.hashes)[:-KEEP_HASHES]:
            del cursor.hashes[old]

    def _hash(self, number: int) -> str:
        return str(self.w3.eth.get_block(number)["hash"].to_0x_hex())

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
                "message_id": f"{log['transactionHash'].to_0x_hex()}:{log['logIndex']}",
                "block_number": int(log["blockNumber"]),
                "block_hash": log["blockHash"].to_0x_hex(),
                "tx_hash": log["transactionHash"].to_0x_hex(),
                "log_index": int(log["logIndex"]),
            }
            args = log["args"]
            if log["event"] == "RoundOpened":
                messages.append(RoundOpened(round=int(args["round"]), deadline=int(args["deadline"]),
                                            global_words=[int(w) for w in args["globalWords"]], **common))
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
        return messages

    def _global_words(self, log: Any) -> list[int]:
        words = self.contract.functions.globalModel().call(block_identifier=int(log["blockNumber"]))
        return [int(w) for w in words]
