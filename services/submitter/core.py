"""The submitter's plain core: signs and sends one organisation's transactions, no broker involved.

Safety rules, in the order they apply:

- every transaction of the key is sent while holding the key's nonce lock (``nonces.py``), from
  nonce allocation until it is resolved, so replicas never race one key;
- one record per (aggregator, address, kind, round) in Redis holds the call data, the nonce and the hash of
  every version signed for it, written *before* each version is broadcast. A redelivered message
  finds the record and looks the transaction up instead of sending a new one;
- a version that is not mined within ``resend_after`` (dropped from the pool, or stuck because
  underpriced) is replaced by one with the SAME nonce and a bumped fee: whichever is mined, the
  others can never be, so the update is never submitted twice. A new nonce is taken only once the
  old one was consumed by a transaction that is none of the record's versions;
- before sending, the call is estimated: a revert is reported by its custom error name without
  spending a transaction; a mined revert is replayed for its name;
- the contract itself accepts one update per participant and round, and the submitter checks
  ``hasSubmitted`` and the ``UpdateAccepted`` log before a first send, so even with its Redis state
  lost it answers with the transaction already on chain.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
import structlog
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from prometheus_client import Counter, Histogram
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams, TxReceipt

from services.submitter.nonces import NonceManager, NonceSession
from wafl.bus.messages import ProofGenerated, RoundFinalizeSent, UpdateFailed, UpdateSubmitted
from wafl.bus.secrets import redact
from wafl.chain.aggregator import AggregatorClient

log = structlog.get_logger()
P = ParamSpec("P")
T = TypeVar("T")

RECORD_TTL_SECONDS = 30 * 24 * 3600
DEADLINE_NOT_REACHED = "Wafl__DeadlineNotReached"
ALREADY_SUBMITTED = "Wafl__AlreadySubmitted"
ROUND_CLOSED = "Wafl__RoundClosed"

TX_SENT = Counter(
    "wafl_submitter_transactions_sent",
    "Signed transactions handed to the node, by kind (update, finalize) and attempt (first, resend).",
    ["kind", "attempt"],
)
TX_RESENDS = Counter(
    "wafl_submitter_resends",
    "Transactions re-sent with the same nonce and a higher fee, by cause (dropped, not_mined, refused).",
    ["kind", "cause"],
)
TX_OUTCOMES = Counter(
    "wafl_submitter_outcomes",
    "Answers of the submitter (a redelivery counts again), by kind and outcome (mined or the failure reason).",
    ["kind", "outcome"],
)
TX_GAS = Histogram(
    "wafl_submitter_gas_used",
    "Gas used by the submitter's mined transactions.",
    ["kind"],
    buckets=(50_000, 100_000, 200_000, 250_000, 300_000, 350_000, 400_000, 500_000, 750_000, 1_000_000, 2_000_000),
)


class UnknownRoundError(ValueError):
    """The message names a round the contract has not opened (dead-letter it)."""


class WrongParticipantError(ValueError):
    """The proof is bound to another address than the one this submitter signs for."""


class SubmissionPendingError(RuntimeError):
    """A transaction is still unresolved; retrying the message resumes it (same nonce)."""


@dataclass(frozen=True)
class TxPolicy:
    receipt_timeout: float = 120.0
    resend_after: float = 15.0
    fee_bump_percent: int = 15
    max_fee_wei: int = 500 * 10**9
    gas_multiplier: float = 1.2
    lock_wait: float = 600.0
    poll_seconds: float = 0.1
    max_sends: int = 12
    confirmations: int = 0  # blocks on top of a receipt before it counts (reorg safety)


@dataclass
class TxRecord:
    """Everything needed to find, resume or answer for one logical transaction."""

    kind: str
    round: int
    to: str
    data: str
    gas_limit: int
    started: float
    nonce: int | None = None
    hashes: list[str] = field(default_factory=list)
    max_fee: int = 0
    tip: int = 0
    state: str = "pending"  # pending | mined | reverted
    tx_hash: str | None = None
    block_number: int | None = None
    gas_used: int | None = None
    submit_seconds: float | None = None  # signing to the first receipt
    send_seconds: float | None = None  # estimate, sign and broadcast of the first version
    reason: str | None = None
    detail: str = ""

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str) -> TxRecord:
        return cls(**json.loads(raw))


@dataclass(frozen=True)
class Mined:
    tx_hash: str
    block_number: int
    gas_used: int
    submit_seconds: float
    send_seconds: float = 0.0


@dataclass(frozen=True)
class Reverted:
    tx_hash: str
    block_number: int
    gas_used: int
    reason: str
    detail: str


@dataclass(frozen=True)
class NotMined:
    reason: str  # timeout | dropped | refused | nonce_consumed
    detail: str


Outcome = Mined | Reverted | NotMined


class Submitter:
    """Submits one organisation's proven updates and closes rounds past their deadline."""

    def __init__(
        self,
        aggregator: AggregatorClient,
        account: LocalAccount,
        redis: aioredis.Redis,
        key_prefix: str,
        org: str,
        policy: TxPolicy | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.w3: Web3 = aggregator.w3
        self._account = account
        self.address: ChecksumAddress = account.address
        self.redis = redis
        self.key_prefix = key_prefix
        self.org = org
        self.policy = policy or TxPolicy()
        self.chain_id = aggregator.deployment.chain_id
        self.contract_address = Web3.to_checksum_address(aggregator.deployment.address)
        self.nonces = NonceManager(redis, self.w3, self.address, key_prefix, wait_seconds=self.policy.lock_wait)

    def __repr__(self) -> str:  # never the account object (it holds the key)
        return f"Submitter(address={self.address}, aggregator={self.contract_address})"

    def record_key(self, kind: str, round_id: int) -> str:
        """Per aggregator (a redeployment starts again at round 1) and signing address."""
        return f"{self.key_prefix}:tx:{self.contract_address.lower()}:{self.address.lower()}:{kind}:{round_id}"

    # ---- updates ----------------------------------------------------------------------------

    async def submit(self, proof: ProofGenerated) -> UpdateSubmitted | UpdateFailed:
        """Submit the proven update once, whatever the number of deliveries of ``proof``.

        Raises UnknownRoundError (round not opened yet) and WrongParticipantError (a proof bound
        to another address): such a message cannot be processed and is dead-lettered.
        """
        if proof.participant.lower() != self.address.lower():
            raise WrongParticipantError(
                f"the proof is for participant {proof.participant}, this submitter signs for {self.address}"
            )
        started = time.time()
        key = self.record_key("update", proof.round)
        async with self.nonces.session() as session:
            raw = await self.redis.get(key)
            if raw is not None:
                record = TxRecord.loads(raw)
                log.info("update_record_found", state=record.state, hashes=len(record.hashes), nonce=record.nonce)
                outcome = await self._transact(session, key, record)
                return await self._update_answer(proof, outcome)
            current = await self._io(self.aggregator.current_round)
            if proof.round > current.round:
                raise UnknownRoundError(f"unknown round {proof.round}: the contract is at round {current.round}")
            if proof.round < current.round:
                on_chain = await self._find_accepted(proof.round)
                if on_chain is not None:
                    return self._submitted(proof, on_chain)
                return self._failed(proof, ROUND_CLOSED, f"round {proof.round} is closed: the contract is at "
                                                         f"round {current.round}; not sent")
            if await self._io(self.aggregator.has_submitted, self.address):
                on_chain = await self._find_accepted(proof.round)
                if on_chain is not None:
                    log.info("update_already_on_chain", tx_hash=on_chain.tx_hash)
                    return self._submitted(proof, on_chain)
                return self._failed(proof, ALREADY_SUBMITTED, "hasSubmitted is true for this round; not sent")
            data = self.aggregator.contract.encode_abi(
                "submitUpdate", args=[proof.round, list(proof.update_words), list(proof.proof)]
            )
            estimate = await self._estimate(data)
            if isinstance(estimate, NotMined):
                return self._failed(proof, estimate.reason, estimate.detail)
            # The update that reaches the quorum also finalises the round: leave room for it, since
            # another organisation's update may land first between estimation and mining.
            allowance = 80_000 + 15_000 * len(proof.update_words)
            record = TxRecord(kind="update", round=proof.round, to=self.contract_address, data=data,
                              gas_limit=math.ceil(estimate * self.policy.gas_multiplier) + allowance,
                              started=started)
            await self._save(key, record)
            outcome = await self._transact(session, key, record)
            return await self._update_answer(proof, outcome)

    async def _update_answer(self, proof: ProofGenerated, outcome: Outcome) -> UpdateSubmitted | UpdateFailed:
        if isinstance(outcome, Mined):
            return self._submitted(proof, outcome)
        if outcome.reason in (ALREADY_SUBMITTED, ROUND_CLOSED):
            # Our update may be on chain by another transaction (a version we lost track of).
            on_chain = await self._find_accepted(proof.round)
            if on_chain is not None:
                return self._submitted(proof, on_chain)
        if isinstance(outcome, Reverted):
            return self._failed(proof, outcome.reason, f"{outcome.detail} (mined in {outcome.tx_hash})")
        return self._failed(proof, outcome.reason, outcome.detail)

    def _submitted(self, proof: ProofGenerated, mined: Mined) -> UpdateSubmitted:
        TX_OUTCOMES.labels(kind="update", outcome="mined").inc()
        return UpdateSubmitted(
            message_id=mined.tx_hash[2:],  # the same answer for every delivery: consumers can dedupe
            org=self.org, round=proof.round, participant=self.address, tx_hash=mined.tx_hash,
            block_number=mined.block_number, gas_used=mined.gas_used, submit_seconds=mined.submit_seconds,
            send_seconds=mined.send_seconds,
        )

    def _failed(self, proof: ProofGenerated, reason: str, detail: str) -> UpdateFailed:
        TX_OUTCOMES.labels(kind="update", outcome=reason).inc()
        log.warning("update_failed", reason=reason, detail=detail)
        return UpdateFailed(org=self.org, round=proof.round, participant=self.address, reason=reason,
                            detail=redact(detail)[:500])

    async def _find_accepted(self, round_id: int) -> Mined | None:
        """The transaction that got this participant's update for ``round_id`` accepted, if any."""

        def find() -> Mined | None:
            event = self.aggregator.contract.events.UpdateAccepted()
            logs = list(event.get_logs(argument_filters={"round": round_id, "participant": self.address},
                                       from_block=self.aggregator.deployment.start_block))
            if not logs:
                return None
            receipt = self.w3.eth.get_transaction_receipt(logs[0]["transactionHash"])
            return Mined(receipt["transactionHash"].to_0x_hex(), int(receipt["blockNumber"]),
                         int(receipt["gasUsed"]), 0.0)

        found = await self._io(find)
        if found is None:
            return None
        raw = await self.redis.get(self.record_key("update", round_id))
        if raw is not None:
            record = TxRecord.loads(raw)
            if record.tx_hash == found.tx_hash and record.submit_seconds is not None:
                return Mined(found.tx_hash, found.block_number, found.gas_used, record.submit_seconds,
                             record.send_seconds or 0.0)
        return found

    # ---- rounds -----------------------------------------------------------------------------

    async def finalize(self, round_id: int) -> RoundFinalizeSent | None:
        """Close ``round_id`` after its deadline; None when there is nothing to do (the round is
        already finalised, or its deadline is not reached on chain).

        A second call for the same round sends nothing and returns the first call's answer.
        Raises UnknownRoundError for a round not opened yet and SubmissionPendingError when the
        transaction is still unresolved (a retry resumes it with the same nonce).
        """
        started = time.time()
        key = self.record_key("finalize", round_id)
        async with self.nonces.session() as session:
            raw = await self.redis.get(key)
            if raw is not None:
                outcome = await self._transact(session, key, TxRecord.loads(raw))
                return self._finalize_answer(round_id, outcome)
            current = await self._io(self.aggregator.current_round)
            if round_id > current.round:
                raise UnknownRoundError(f"unknown round {round_id}: the contract is at round {current.round}")
            if round_id < current.round:
                log.info("round_already_finalized", current=current.round)
                TX_OUTCOMES.labels(kind="finalize", outcome="already_finalized").inc()
                return None
            data = self.aggregator.contract.encode_abi("finalizeRound", args=[])
            estimate = await self._estimate(data)
            if isinstance(estimate, NotMined):
                TX_OUTCOMES.labels(kind="finalize", outcome=estimate.reason).inc()
                if estimate.reason == DEADLINE_NOT_REACHED:
                    log.info("deadline_not_reached", detail=estimate.detail)
                else:
                    log.warning("finalize_refused", reason=estimate.reason, detail=estimate.detail)
                return None
            record = TxRecord(kind="finalize", round=round_id, to=self.contract_address, data=data,
                              gas_limit=math.ceil(estimate * self.policy.gas_multiplier), started=started)
            await self._save(key, record)
            outcome = await self._transact(session, key, record)
            return self._finalize_answer(round_id, outcome)

    def _finalize_answer(self, round_id: int, outcome: Outcome) -> RoundFinalizeSent | None:
        if isinstance(outcome, Mined):
            TX_OUTCOMES.labels(kind="finalize", outcome="mined").inc()
            return RoundFinalizeSent(message_id=outcome.tx_hash[2:], org=self.org, round=round_id,
                                     tx_hash=outcome.tx_hash, gas_used=outcome.gas_used)
        if isinstance(outcome, Reverted):
            # Someone else closed the round first: our call then hit the next, open round.
            TX_OUTCOMES.labels(kind="finalize", outcome=outcome.reason).inc()
            log.info("finalize_reverted", reason=outcome.reason, tx_hash=outcome.tx_hash)
            return None
        TX_OUTCOMES.labels(kind="finalize", outcome=outcome.reason).inc()
        raise SubmissionPendingError(f"finalizeRound for round {round_id}: {outcome.reason}: {outcome.detail}")

    # ---- transactions -----------------------------------------------------------------------

    async def _estimate(self, data: str) -> int | NotMined:
        """Gas estimate of a call from our address; a revert comes back as its error name."""
        call: TxParams = {"from": self.address, "to": self.contract_address, "data": data}  # type: ignore[typeddict-item]
        try:
            return int(await self._io(self.w3.eth.estimate_gas, call))
        except ContractLogicError as exc:
            error = self.aggregator.decoder.from_exception(exc)
            return NotMined(error.name, str(error))

    async def _transact(self, session: NonceSession, key: str, record: TxRecord) -> Outcome:
        """Drive ``record`` to a resolution: mined, reverted, or given up for now (NotMined, the
        record kept so that a later call resumes it)."""
        policy = self.policy
        deadline = time.monotonic() + policy.receipt_timeout
        reallocated = False
        sends = 0
        while True:
            mined = await self._io(self._find_receipt, record.hashes)
            if mined is not None:
                if await self._io(self._settled, mined[1], deadline):
                    return await self._resolve(key, record, *mined)
                if record.submit_seconds is None:  # signing to first receipt; the depth wait is confirmation
                    record.submit_seconds = max(0.0, time.time() - record.started)
                    await self._save(key, record)
                await asyncio.sleep(policy.poll_seconds)  # mined, not yet deep enough: a reorg may undo it
                continue
            if record.nonce is not None:
                latest = await self._io(self.w3.eth.get_transaction_count, self.address, "latest")
                if latest > record.nonce:
                    # Mined meanwhile? Otherwise our nonce went to a transaction that is none of ours.
                    mined = await self._io(self._find_receipt, record.hashes)
                    if mined is not None:
                        continue  # ours after all: settled (or re-sent after a reorg) at the top
                    if reallocated:
                        return NotMined("nonce_consumed", f"nonce {record.nonce} was used by another transaction")
                    log.warning("nonce_consumed_elsewhere", nonce=record.nonce, hashes=record.hashes)
                    # A new nonce means a new transaction: only if the call would still succeed.
                    estimate = await self._estimate(record.data)
                    if isinstance(estimate, NotMined):
                        return estimate
                    record.nonce, record.hashes, record.max_fee, record.tip = None, [], 0, 0
                    reallocated = True
                    await self._save(key, record)
            if time.monotonic() >= deadline:
                known = await self._io(self._any_known, record.hashes)
                reason = "timeout" if known else "dropped"
                return NotMined(reason, f"no receipt within {policy.receipt_timeout}s for nonce {record.nonce} "
                                        f"({len(record.hashes)} version(s) sent, last {record.hashes[-1:]})")
            if sends < policy.max_sends:
                if record.nonce is None:
                    record.nonce = await session.next_nonce()
                sends += 1
                sent = await self._send_version(session, key, record)
                if isinstance(sent, NotMined):
                    return sent
                if sent == "retry":  # refused (nonce too low, underpriced): re-check, then a higher fee
                    await asyncio.sleep(policy.poll_seconds)
                    continue
            wait_until = min(deadline, time.monotonic() + policy.resend_after)
            while time.monotonic() < wait_until:
                mined = await self._io(self._find_receipt, record.hashes)
                if mined is not None:
                    break  # settled at the top of the loop
                await asyncio.sleep(policy.poll_seconds)

    async def _send_version(self, session: NonceSession, key: str, record: TxRecord) -> NotMined | str:
        """Sign and broadcast one version of ``record`` (same nonce, fee bumped if a version was
        signed before): "sent" once the node has it, "retry" when the node refused it for a reason
        the next round of checks resolves, NotMined when it refused the only version."""
        assert record.nonce is not None
        resend = record.max_fee != 0
        if resend and record.hashes:
            cause = "not_mined" if await self._io(self._any_known, record.hashes) else "dropped"
            TX_RESENDS.labels(kind=record.kind, cause=cause).inc()
            log.warning("transaction_resend", cause=cause, nonce=record.nonce, last=record.hashes[-1])
        max_fee, tip = await self._io(self._fees, record)
        tx: dict[str, Any] = {
            "type": 2, "chainId": self.chain_id, "nonce": record.nonce, "to": record.to, "data": record.data,
            "value": 0, "gas": record.gas_limit, "maxFeePerGas": max_fee, "maxPriorityFeePerGas": tip,
        }
        signed = self._account.sign_transaction(tx)
        tx_hash = signed.hash.to_0x_hex()
        await session.ensure_held()
        if tx_hash not in record.hashes:
            record.hashes.append(tx_hash)
        record.max_fee, record.tip = max_fee, tip
        await self._save(key, record)  # written before the broadcast: a crash after it cannot lose the hash
        refused = await self._io(self._broadcast, signed.raw_transaction)
        if refused is None:
            await session.sent(record.nonce, tx_hash)
            if record.send_seconds is None:
                record.send_seconds = max(0.0, time.time() - record.started)
                await self._save(key, record)
            TX_SENT.labels(kind=record.kind, attempt="resend" if resend else "first").inc()
            log.info("transaction_sent", kind=record.kind, nonce=record.nonce, tx_hash=tx_hash,
                     max_fee=max_fee, tip=tip, gas_limit=record.gas_limit, resend=resend)
            return "sent"
        lowered = refused.lower()
        if "already known" in lowered or "already imported" in lowered:
            await session.sent(record.nonce, tx_hash)
            return "sent"
        record.hashes.remove(tx_hash)
        await self._save(key, record)
        TX_RESENDS.labels(kind=record.kind, cause="refused").inc()
        log.warning("transaction_refused", nonce=record.nonce, error=refused)
        if "nonce too low" in lowered or "underpriced" in lowered or "base fee" in lowered:
            return "retry"  # resolved by the receipt and nonce checks, or by the next, higher fee
        if record.hashes:
            return "sent"  # an earlier version is still out there: keep waiting for it
        return NotMined("refused", refused)

    def _fees(self, record: TxRecord) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas): twice the base fee plus the tip for a first
        version; a replacement raises both by at least ``fee_bump_percent`` (capped)."""
        base = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        tip = int(self.w3.eth.max_priority_fee)
        max_fee = 2 * base + tip
        if record.max_fee:
            factor = 100 + self.policy.fee_bump_percent
            tip = max(tip, -(-record.tip * factor // 100))
            max_fee = max(2 * base + tip, -(-record.max_fee * factor // 100))
        max_fee = min(max_fee, self.policy.max_fee_wei)
        return max_fee, min(tip, max_fee)

    def _broadcast(self, raw: HexBytes) -> str | None:
        try:
            self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            return redact(str(exc.message))
        except ValueError as exc:
            return redact(str(exc))
        return None

    def _find_receipt(self, hashes: list[str]) -> tuple[str, TxReceipt] | None:
        for tx_hash in hashes:
            try:
                receipt = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                continue
            if receipt is not None and receipt.get("blockNumber") is not None:
                return tx_hash, receipt
        return None

    def _settled(self, receipt: TxReceipt, deadline: float) -> bool:
        """``confirmations`` blocks on top of the receipt's block, which is still the chain's block
        at that height. Until then a reorg can drop the transaction, and it is re-sent. Past the
        deadline a mined receipt is taken as it is (a chain that stopped producing blocks)."""
        depth = self.policy.confirmations
        if depth == 0 or time.monotonic() >= deadline:
            return True
        number = int(receipt["blockNumber"])
        if self.w3.eth.block_number - number < depth:
            return False
        return bool(self.w3.eth.get_block(number)["hash"] == receipt["blockHash"])

    def _any_known(self, hashes: list[str]) -> bool:
        for tx_hash in hashes:
            try:
                self.w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
            except TransactionNotFound:
                continue
            return True
        return False

    async def _resolve(self, key: str, record: TxRecord, tx_hash: str, receipt: TxReceipt) -> Outcome:
        block, gas_used = int(receipt["blockNumber"]), int(receipt["gasUsed"])
        if record.tx_hash != tx_hash or record.state == "pending":
            record.tx_hash, record.block_number, record.gas_used = tx_hash, block, gas_used
            if record.submit_seconds is None:
                record.submit_seconds = max(0.0, time.time() - record.started)
            if receipt["status"] == 1:
                record.state, record.reason, record.detail = "mined", None, ""
                TX_GAS.labels(kind=record.kind).observe(gas_used)
            else:
                record.state = "reverted"
                record.reason, record.detail = await self._io(self._revert_reason, tx_hash, receipt, record)
            await self._save(key, record)
            log.info("transaction_resolved", kind=record.kind, state=record.state, tx_hash=tx_hash, block=block,
                     gas_used=gas_used, nonce=record.nonce, versions=len(record.hashes), reason=record.reason)
        if record.state == "mined":
            return Mined(tx_hash, block, gas_used, record.submit_seconds or 0.0, record.send_seconds or 0.0)
        return Reverted(tx_hash, block, gas_used, record.reason or "RevertedWithoutReason", record.detail)

    def _revert_reason(self, tx_hash: str, receipt: TxReceipt, record: TxRecord) -> tuple[str, str]:
        """Replay a mined, reverted transaction as a call in its block to learn the error."""
        if int(receipt["gasUsed"]) >= record.gas_limit:
            return "OutOfGas", f"used all {record.gas_limit} gas"
        call: TxParams = {"from": self.address, "to": record.to, "data": record.data,  # type: ignore[typeddict-item]
                          "gas": record.gas_limit}
        try:
            self.w3.eth.call(call, block_identifier=int(receipt["blockNumber"]))
        except ContractLogicError as exc:
            error = self.aggregator.decoder.from_exception(exc)
            return error.name, str(error)
        return "RevertedWithoutReason", "the replayed call does not revert"

    async def _save(self, key: str, record: TxRecord) -> None:
        await self.redis.set(key, record.dumps(), ex=RECORD_TTL_SECONDS)

    @staticmethod
    async def _io(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)
