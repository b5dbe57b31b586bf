"""The federation's state as the chain holds it at one block: what `wafl status` shows.

Every view of the aggregator is read at the same block (its number, checked against its hash at
the end, so that a reorganisation in between reads again), and the logs up to that block: the
snapshot is consistent whatever the node does meanwhile. Only reads, so any RPC node serves
(logs are asked for in ranges that a provider's limit shrinks).

What comes from where: the chain gives every figure; the deployment artifact names the contract
(address, chain id, start block) and adds what the chain does not hold (the configuration's
name and shape, the kind of keys). Where the artifact's terms differ from the contract's, the
contract's are shown and the difference is listed (`artifact_mismatches`): most often an artifact
of an earlier deployment at the same address (a restarted development chain).

Participants are an AccessControl role, which does not enumerate its members: they are replayed
from the RoleGranted / RoleRevoked logs of PARTICIPANT_ROLE since the deployment, in the order
of registration, and checked against the contract's count.

The model hash: keccak256(abi.encodePacked(globalModel())), i.e. keccak256 of the global model's
packed words, each as 32 big-endian bytes, concatenated (the construction of the verification
key's hash). Anyone can recompute it from `globalModel()` or from a RoundOpened log's words.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from eth_abi.packed import encode_packed
from eth_hash.auto import keccak
from eth_utils.abi import event_abi_to_log_topic
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import (
    ABIEventNotFound,
    ABIFunctionNotFound,
    BadFunctionCallOutput,
    BlockNotFound,
    ContractLogicError,
    MismatchedABI,
    Web3RPCError,
)
from web3.types import LogReceipt

from wafl.chain.artifact import Deployment

DEFAULT_HISTORY = 5
# The widest eth_getLogs range asked for at first; a node that refuses it is asked for halves.
MAX_BLOCK_RANGE = 2000
# Reads again when the chain reorganised under a snapshot, this many times at the most.
SNAPSHOT_ATTEMPTS = 3


class StatusError(ValueError):
    """The deployment cannot be read on this chain (wrong chain, no contract, not an aggregator)."""


def model_hash(words: list[int]) -> str:
    """keccak256(abi.encodePacked(words)): the hash of a global model's packed words."""
    return "0x" + keccak(encode_packed(["uint256[]"], [words])).hex()


@dataclass(frozen=True)
class Participant:
    address: str
    attested: bool
    submitted: bool  # an accepted update in the current round


@dataclass(frozen=True)
class FinalizedRound:
    round: int
    accepted: int
    block_number: int
    block_hash: str
    tx_hash: str


@dataclass(frozen=True)
class FederationStatus:
    """The federation at block `block_number`; `round` 0 until every participant attested the keys."""

    chain_id: int
    block_number: int
    block_hash: str
    block_timestamp: int
    address: str
    verifier: str
    start_block: int
    # The configuration: its name, shape and kind of keys from the artifact, the rest from the chain.
    config_name: str
    d_in: int
    d_out: int
    keys_kind: str
    vk_hash: str
    n_weights: int
    n_words: int
    weight_bits: int
    slot_bits: int
    lanes_per_word: int
    max_participants: int
    quorum: int
    round_duration: int
    # The round.
    round: int
    deadline: int
    accepted: int
    participant_count: int
    attested_count: int
    participants: tuple[Participant, ...]
    finalized: tuple[FinalizedRound, ...]  # the last few, oldest first
    model_hash: str
    artifact_mismatches: tuple[str, ...] = field(default=())

    @property
    def seconds_left(self) -> int | None:
        """Until the deadline, at the block's timestamp (negative once passed); None before round 1."""
        return self.deadline - self.block_timestamp if self.round else None

    def as_dict(self) -> dict[str, Any]:
        """Every field, and `seconds_left`, as JSON has them (lists for the tuples)."""
        fields = {name: list(value) if isinstance(value, tuple) else value for name, value in asdict(self).items()}
        return {**fields, "seconds_left": self.seconds_left}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())


def block_hash_at(w3: Web3, number: int) -> bytes | None:
    """The hash of the chain's block `number`; None above its head (a new branch may be shorter)."""
    try:
        return bytes(w3.eth.get_block(number)["hash"])
    except BlockNotFound:
        return None


@dataclass(frozen=True)
class _Role:
    granted: bool
    account: str


class LogScanner:
    """The aggregator's role and finalisation logs, scanned once and then from where it stopped
    (unless the chain no longer holds the block it stopped at: then from the deployment again)."""

    def __init__(self, w3: Web3, contract: Contract, start_block: int, role: bytes) -> None:
        self.w3 = w3
        self.contract = contract
        self.start_block = start_block
        self.role = role
        self.block_range = MAX_BLOCK_RANGE
        self._events = {
            event_abi_to_log_topic(event.abi): event
            for event in (contract.events.RoleGranted(), contract.events.RoleRevoked(),
                          contract.events.RoundFinalized())
        }
        self._scanned: tuple[int, bytes] | None = None
        self._roles: list[_Role] = []
        self._finalized: list[FinalizedRound] = []

    def scan(self, to_block: int) -> tuple[list[_Role], list[FinalizedRound]]:
        """Role changes and finalised rounds from the deployment to `to_block`, in chain order."""
        if self._scanned is not None:
            number, block_hash = self._scanned
            if number > to_block or block_hash_at(self.w3, number) != block_hash:
                self._scanned, self._roles, self._finalized = None, [], []
        start = self.start_block if self._scanned is None else self._scanned[0] + 1
        roles, finalized = list(self._roles), list(self._finalized)
        for log in self._logs(start, to_block):
            decoded = self._events[bytes(log["topics"][0])].process_log(log)
            args = decoded["args"]
            if decoded["event"] == "RoundFinalized":
                finalized.append(FinalizedRound(int(args["round"]), int(args["accepted"]), int(log["blockNumber"]),
                                                log["blockHash"].to_0x_hex(), log["transactionHash"].to_0x_hex()))
            elif bytes(args["role"]) == self.role:
                roles.append(_Role(decoded["event"] == "RoleGranted", Web3.to_checksum_address(args["account"])))
        return roles, finalized

    def remember(self, to_block: int, block_hash: bytes, scanned: tuple[list[_Role], list[FinalizedRound]]) -> None:
        """Keep what `scan` found up to `to_block` (whose hash the snapshot checked)."""
        self._scanned = (to_block, block_hash)
        self._roles, self._finalized = scanned

    def _logs(self, start: int, end: int) -> list[LogReceipt]:
        logs: list[LogReceipt] = []
        topics = [list(self._events)]
        while start <= end:
            stop = min(end, start + self.block_range - 1)
            try:
                logs += self.w3.eth.get_logs({"address": self.contract.address, "fromBlock": start, "toBlock": stop,
                                              "topics": topics})  # type: ignore[typeddict-item]
            except Web3RPCError:
                if self.block_range == 1:
                    raise
                self.block_range = max(1, self.block_range // 2)  # a provider's range or result limit
                continue
            start = stop + 1
        return sorted(logs, key=lambda log: (log["blockNumber"], log["logIndex"]))


class StatusReader:
    """Reads snapshots of one deployment; kept between refreshes, it scans only the new logs."""

    def __init__(self, w3: Web3, deployment: Deployment, *, history: int = DEFAULT_HISTORY) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.history = history
        self.address = Web3.to_checksum_address(deployment.address)
        self.contract: Contract = w3.eth.contract(address=self.address, abi=deployment.abi)
        self._scanner: LogScanner | None = None

    def read(self, block: int | Literal["latest"] = "latest") -> FederationStatus:
        """The snapshot at `block` (a number, or "latest"); StatusError if this chain does not hold
        the deployment."""
        chain_id = self.w3.eth.chain_id
        if chain_id != self.deployment.chain_id:
            raise StatusError(f"the node serves chain {chain_id}, the deployment artifact is for chain "
                              f"{self.deployment.chain_id}: check --rpc-url and --deployment")
        for _ in range(SNAPSHOT_ATTEMPTS):
            header = self.w3.eth.get_block(block)
            number, block_hash = int(header["number"]), bytes(header["hash"])
            if not self.w3.eth.get_code(self.address, number):
                raise StatusError(f"no contract at {self.address} on chain {chain_id} at block {number}: "
                                  "is the deployment artifact of this chain's deployment?")
            try:
                status, scanned = self._read_at(number, block_hash, int(header["timestamp"]))
            except (ContractLogicError, BadFunctionCallOutput, ABIFunctionNotFound, ABIEventNotFound,
                    MismatchedABI) as exc:
                raise StatusError(f"the contract at {self.address} does not answer as a WaflAggregator "
                                  f"({type(exc).__name__}): is the deployment artifact the right one?") from None
            if block_hash_at(self.w3, number) == block_hash:
                if self._scanner is not None:
                    self._scanner.remember(number, block_hash, scanned)
                return status
            if block != "latest":
                break
        raise StatusError(f"the chain kept reorganising under block {block}: try again")

    def _read_at(self, number: int, block_hash: bytes, timestamp: int) -> tuple[
            FederationStatus, tuple[list[_Role], list[FinalizedRound]]]:
        f = self.contract.functions

        def view(call: Any) -> Any:
            return call.call(block_identifier=number)

        role = bytes(view(f.PARTICIPANT_ROLE()))
        if self._scanner is None or self._scanner.role != role:
            self._scanner = LogScanner(self.w3, self.contract, self.deployment.start_block, role)
        scanned = self._scanner.scan(number)
        members: dict[str, None] = {}
        for change in scanned[0]:
            members.pop(change.account, None)
            if change.granted:
                members[change.account] = None
        participant_count = int(view(f.participantCount()))
        if len(members) != participant_count:
            raise StatusError(f"the node's logs name {len(members)} participants, the contract counts "
                              f"{participant_count}: does this node keep the logs since block "
                              f"{self.deployment.start_block}?")
        round_id, deadline, accepted = view(f.currentRound())
        words = [int(w) for w in view(f.globalModel())]
        cfg = self.deployment.model_config
        status = FederationStatus(
            chain_id=self.deployment.chain_id,
            block_number=number,
            block_hash="0x" + block_hash.hex(),
            block_timestamp=timestamp,
            address=self.address,
            verifier=str(view(f.verifier())),
            start_block=self.deployment.start_block,
            config_name=cfg.name,
            d_in=cfg.d_in,
            d_out=cfg.d_out,
            keys_kind=self.deployment.keys_kind,
            vk_hash="0x" + bytes(view(f.verificationKeyHash())).hex(),
            n_weights=int(view(f.nWeights())),
            n_words=int(view(f.nWords())),
            weight_bits=int(view(f.weightBits())),
            slot_bits=int(view(f.slotBits())),
            lanes_per_word=int(view(f.lanesPerWord())),
            max_participants=int(view(f.maxParticipants())),
            quorum=int(view(f.quorum())),
            round_duration=int(view(f.roundDuration())),
            round=int(round_id),
            deadline=int(deadline),
            accepted=int(accepted),
            participant_count=participant_count,
            attested_count=int(view(f.attestedCount())),
            participants=tuple(
                Participant(a, bool(view(f.hasAttested(a))), bool(view(f.hasSubmitted(a))))
                for a in members
            ),
            finalized=tuple(scanned[1][-self.history:] if self.history else ()),
            model_hash=model_hash(words),
        )
        return _with_mismatches(status, self.deployment), scanned


def _with_mismatches(status: FederationStatus, deployment: Deployment) -> FederationStatus:
    """`status`, with the terms in which the artifact differs from the contract."""
    cfg = deployment.model_config
    expected = {
        "verifier": Web3.to_checksum_address(deployment.verifier_address),
        "vk_hash": deployment.vk_hash.lower(),
        "n_weights": cfg.n_weights,
        "weight_bits": cfg.weight_bits,
        "slot_bits": cfg.slot_bits,
        "lanes_per_word": cfg.lanes_per_word,
        "max_participants": cfg.max_participants,
        "quorum": deployment.quorum,
        "round_duration": deployment.round_duration,
    }
    mismatches = tuple(name for name, value in expected.items() if getattr(status, name) != value)
    return replace(status, artifact_mismatches=mismatches)


def read_status(w3: Web3, deployment: Deployment, *, block: int | Literal["latest"] = "latest",
                history: int = DEFAULT_HISTORY) -> FederationStatus:
    """One snapshot of the federation (see :class:`StatusReader` for repeated ones)."""
    return StatusReader(w3, deployment, history=history).read(block)
