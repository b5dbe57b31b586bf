"""The submitter's transaction engine: drives one logical transaction of one key to a resolution.

Safety rules, in the order they apply:

- every transaction of the key is sent while holding the key's nonce lock (``nonces.py``), from
  nonce allocation until it is resolved, so replicas never race one key;
- one record (``TxRecord``) in Redis holds the call data, the nonce and the hash of every version
  signed for it, written *before* each version is broadcast. A redelivered message finds the
  record and looks the transaction up instead of sending a new one;
- a version that cannot be mined (the latest block's base fee exceeds its max fee) is replaced at
  the first poll that sees that block; any other version still unmined after
  ``replace_after_blocks`` new blocks or ``resend_after`` seconds (dropped from the pool, or an
  uncompetitive tip) likewise. The replacement has the SAME nonce and raises both the max fee and
  the tip by ``fee_bump_percent`` (at least the 10 % nodes require), its max fee at least twice
  the base fee plus the tip: whichever version is mined, the others can never be, so the update is
  never submitted twice. Bound: a priced-out version's replacement can be in the next block (the
  first one after the fee rise), as long as a poll (``poll_seconds`` and a few RPC calls) fits in
  a block interval; any other, after at most ``replace_after_blocks`` blocks. A new nonce is taken
  only once the old one was consumed by a transaction that is none of the record's versions;
- no version offers more than ``max_fee_wei`` per gas. When the fee the chain needs is above it,
  the ceiling is reported (log ``fee_ceiling_reached``, ``wafl_submitter_fee_ceiling_total``);
  a version at the ceiling is still sent if it can be mined at the current base fee and is a valid
  replacement, else nothing is sent until a block lowers the fee. A transaction the ceiling held
  back until the receipt timeout is answered NotMined ``fee_ceiling``, its record kept: a later
  call resumes it with the same nonce, and a version already sent is mined normally once the base
  fee comes back under its max fee (where the node kept it; anvil evicts it, and the later call
  sends it again);
- a receipt counts once ``confirmations`` blocks are on top of it; a reorg before that re-sends;
  a version left behind a nonce gap (a deeper reorg dropped our earlier transactions) moves to
  the gap's nonce;
- before sending, the call is estimated: a revert is reported by its custom error name without
  spending a transaction; a mined revert is replayed for its name (``wafl.chain.tx.replay_revert``).

What to send, and what to answer, is the caller's (``decisions.py``).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import redis.asyncio as aioredis
import structlog
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from hexbytes import HexBytes
from prometheus_client import Counter, Histogram
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError
from web3.types import TxParams, TxReceipt

from services.submitter.nonces import NonceManager, NonceSession, is_known
from services.submitter.records import (
    MIN_REPLACEMENT_BUMP_PERCENT,
    RECORD_TTL_SECONDS,
    Mined,
    NotMined,
    Outcome,
    Reverted,
    TxPolicy,
    TxRecord,
)
from wafl.bus.observability import GAS_BUCKETS
from wafl.bus.secrets import redact
from wafl.chain.tx import ErrorDecoder, mined_despite_error, replay_revert

log = structlog.get_logger()
T = TypeVar("T")

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
TX_FEE_CEILING = Counter(
    "wafl_submitter_fee_ceiling",
    "Transactions whose fee the ceiling (max_fee_wei) held below what the chain needs, by kind (once per "
    "episode: from the first such fee decision until one fits again).",
    ["kind"],
)
TX_GAS = Histogram(
    "wafl_submitter_gas_used",
    "Gas used by the submitter's mined transactions.",
    ["kind"],
    buckets=GAS_BUCKETS,
)


def bumped(value: int, percent: int) -> int:
    """``value`` raised by ``percent`` %, rounded up (a replacement must not fall short by rounding)."""
    return -(-value * (100 + percent) // 100)


@dataclass(frozen=True)
class Price:
    """One fee decision, at the latest block: what to offer (capped at the ceiling) and what the
    chain needs (``wanted``, the same unless the ceiling held it down)."""

    block: int
    base_fee: int
    max_fee: int
    tip: int
    wanted: int

    def describe(self, ceiling: int) -> str:
        return (f"the chain needs a max fee of {self.wanted} wei per gas (base fee {self.base_fee} at block "
                f"{self.block}), above the ceiling of {ceiling}")


class TxEngine:
    """Signs with one key and sends to one contract; one Redis record per logical transaction."""

    def __init__(
        self, w3: Web3, account: LocalAccount, redis: aioredis.Redis, key_prefix: str, to: ChecksumAddress,
        chain_id: int, decoder: ErrorDecoder, policy: TxPolicy,
    ) -> None:
        self.w3 = w3
        self._account = account
        self.address: ChecksumAddress = account.address
        self.redis = redis
        self.to = to
        self.chain_id = chain_id
        self.decoder = decoder
        self.policy = policy
        self.nonces = NonceManager(redis, w3, self.address, key_prefix, wait_seconds=policy.lock_wait)

    def __repr__(self) -> str:  # never the account object (it holds the key)
        return f"TxEngine(address={self.address}, to={self.to})"

    async def resume_or(self, key: str, first: Callable[[NonceSession], Awaitable[T]]) -> Outcome | T:
        """Under the key's nonce lock: the transaction recorded at ``key`` driven to a resolution
        (a redelivery, a retry, another replica's message), or else ``first(session)``, the
        caller's decision for a first time, which sends with ``send`` or refuses."""
        async with self.nonces.session() as session:
            record = await self.load(key)
            if record is None:
                return await first(session)
            log.info("record_found", kind=record.kind, state=record.state, hashes=len(record.hashes),
                     nonce=record.nonce)
            return await self.transact(session, key, record)

    async def send(self, session: NonceSession, key: str, record: TxRecord) -> Outcome:
        """A new record: written at ``key`` before anything is signed, then driven."""
        await self.save(key, record)
        return await self.transact(session, key, record)

    async def load(self, key: str) -> TxRecord | None:
        raw = await self.redis.get(key)
        return None if raw is None else TxRecord.loads(raw)

    async def save(self, key: str, record: TxRecord) -> None:
        await self.redis.set(key, record.dumps(), ex=RECORD_TTL_SECONDS)

    def new_record(self, kind: str, round_id: int, data: str, estimate: int, allowance: int,
                   started: float) -> TxRecord:
        """A record for a call estimated at ``estimate`` gas: its limit is the estimate times
        ``gas_multiplier``, plus ``allowance``."""
        gas_limit = math.ceil(estimate * self.policy.gas_multiplier) + allowance
        return TxRecord(kind=kind, round=round_id, to=self.to, data=data, gas_limit=gas_limit, started=started)

    async def estimate(self, data: str) -> int | NotMined:
        """Gas estimate of a call from our address; a revert comes back as its error name."""
        call: TxParams = {"from": self.address, "to": self.to, "data": data}  # type: ignore[typeddict-item]
        try:
            return int(await asyncio.to_thread(self.w3.eth.estimate_gas, call))
        except ContractLogicError as exc:
            error = self.decoder.from_exception(exc)
            return NotMined(error.name, str(error))

    async def transact(self, session: NonceSession, key: str, record: TxRecord) -> Outcome:
        """Drive ``record`` to a resolution: mined, reverted, or given up for now (NotMined, the
        record kept so that a later call resumes it)."""
        policy = self.policy
        deadline = time.monotonic() + policy.receipt_timeout
        reallocated = False
        sends = 0
        held: Price | None = None  # the last fee decision, while the ceiling holds it below the chain's
        while True:
            mined = await asyncio.to_thread(self._find_receipt, record.hashes)
            if mined is not None:
                if await asyncio.to_thread(self._settled, mined[1], deadline):
                    return await self._resolve(key, record, *mined)
                if record.submit_seconds is None:  # signing to first receipt; the depth wait is confirmation
                    record.submit_seconds = max(0.0, time.time() - record.started)
                    await self.save(key, record)
                await asyncio.sleep(policy.poll_seconds)  # mined, not yet deep enough: a reorg may undo it
                continue
            if record.nonce is not None:
                latest = await asyncio.to_thread(self.w3.eth.get_transaction_count, self.address, "latest")
                if latest > record.nonce:
                    # Mined meanwhile? Otherwise our nonce went to a transaction that is none of ours.
                    mined = await asyncio.to_thread(self._find_receipt, record.hashes)
                    if mined is not None:
                        continue  # ours after all: settled (or re-sent after a reorg) at the top
                    if reallocated:
                        return NotMined("nonce_consumed", f"nonce {record.nonce} was used by another transaction")
                    log.warning("nonce_consumed_elsewhere", nonce=record.nonce, hashes=record.hashes)
                    # A new nonce means a new transaction: only if the call would still succeed.
                    estimate = await self.estimate(record.data)
                    if isinstance(estimate, NotMined):
                        return estimate
                    record.nonce, record.hashes, record.max_fee, record.tip = None, [], 0, 0
                    reallocated = True
                    await self.save(key, record)
                elif latest < record.nonce and await asyncio.to_thread(self._behind_a_gap, record.nonce):
                    # A reorganisation dropped our transactions below this nonce: it cannot be mined
                    # before the gap is filled. The gap's nonce instead, if the call still succeeds;
                    # the versions sent stay recorded (one mined later is still recognised as ours).
                    log.warning("nonce_behind_a_gap", nonce=record.nonce, latest=latest)
                    estimate = await self.estimate(record.data)
                    if isinstance(estimate, NotMined):
                        return estimate
                    record.nonce = None
                    await self.save(key, record)
            if time.monotonic() >= deadline:
                if held is not None:
                    return NotMined("fee_ceiling", f"no receipt within {policy.receipt_timeout}s for nonce "
                                                   f"{record.nonce}: {held.describe(policy.max_fee_wei)}; "
                                                   f"{len(record.hashes)} version(s) sent, kept for a later attempt")
                known = await asyncio.to_thread(self._any_known, record.hashes)
                reason = "timeout" if known else "dropped"
                return NotMined(reason, f"no receipt within {policy.receipt_timeout}s for nonce {record.nonce} "
                                        f"({len(record.hashes)} version(s) sent, last {record.hashes[-1:]})")
            price = await asyncio.to_thread(self._price, record)
            held = self._held(record, price, held)
            if sends < policy.max_sends and await asyncio.to_thread(self._worth_sending, record, price):
                if record.nonce is None:
                    record.nonce = await session.next_nonce()
                sends += 1
                sent = await self._send_version(session, key, record, price)
                if isinstance(sent, NotMined):
                    return sent
                if sent == "retry" and held is None:  # refused (nonce too low, underpriced): re-check, bump
                    await asyncio.sleep(policy.poll_seconds)
                    continue
            await self._wait_for_replacement(record, price.block, deadline)

    async def _wait_for_replacement(self, record: TxRecord, decided_at: int, deadline: float) -> None:
        """Until a receipt, the deadline, ``resend_after`` seconds, or a block that calls for a new
        fee decision: the first block after ``decided_at`` (the block the last decision priced)
        whose base fee exceeds the pending version's max fee (it cannot be mined), or the
        ``replace_after_blocks``-th block after it."""
        policy = self.policy
        wait_until = min(deadline, time.monotonic() + policy.resend_after)
        seen = decided_at
        while time.monotonic() < wait_until:
            if await asyncio.to_thread(self._find_receipt, record.hashes) is not None:
                return  # settled at the top of the loop
            if int(await asyncio.to_thread(lambda: self.w3.eth.block_number)) > seen:  # the header only then
                number, base = await asyncio.to_thread(self._latest_base_fee)
                if number > seen:  # (a load-balanced RPC may answer from a node one block behind)
                    seen = number
                    if number - decided_at >= policy.replace_after_blocks:
                        log.info("transaction_unmined", nonce=record.nonce, blocks=number - decided_at)
                        return
                    if base > record.max_fee:
                        log.info("transaction_priced_out", nonce=record.nonce, block=number, base_fee=base,
                                 max_fee=record.max_fee)
                        return
            await asyncio.sleep(policy.poll_seconds)

    async def _send_version(
        self, session: NonceSession, key: str, record: TxRecord, price: Price,
    ) -> NotMined | Literal["sent", "retry"]:
        """Sign and broadcast one version of ``record`` at ``price`` (same nonce, fee bumped if a
        version was signed before): "sent" once the node has it, "retry" when the node refused it
        for a reason the next round of checks resolves, NotMined when it refused the only version."""
        assert record.nonce is not None
        resend = record.max_fee != 0
        if resend and record.hashes:
            cause = "not_mined" if await asyncio.to_thread(self._any_known, record.hashes) else "dropped"
            TX_RESENDS.labels(kind=record.kind, cause=cause).inc()
            log.warning("transaction_resend", cause=cause, nonce=record.nonce, last=record.hashes[-1])
        max_fee, tip = price.max_fee, price.tip
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
        await self.save(key, record)  # written before the broadcast: a crash after it cannot lose the hash
        refused = await asyncio.to_thread(self._broadcast, signed.raw_transaction, signed.hash)
        if refused is None:
            await session.sent(record.nonce, tx_hash)
            if record.send_seconds is None:
                record.send_seconds = max(0.0, time.time() - record.started)
                await self.save(key, record)
            TX_SENT.labels(kind=record.kind, attempt="resend" if resend else "first").inc()
            log.info("transaction_sent", kind=record.kind, nonce=record.nonce, tx_hash=tx_hash,
                     max_fee=max_fee, tip=tip, gas_limit=record.gas_limit, resend=resend)
            return "sent"
        lowered = refused.lower()
        if "already known" in lowered or "already imported" in lowered or "known transaction" in lowered:
            await session.sent(record.nonce, tx_hash)
            return "sent"
        record.hashes.remove(tx_hash)
        await self.save(key, record)
        TX_RESENDS.labels(kind=record.kind, cause="refused").inc()
        log.warning("transaction_refused", nonce=record.nonce, error=refused)
        # Under the base fee: anvil and geth say "base fee", Hardhat "maxFeePerGas (...) is too low
        # for the next block, which has a baseFeePerGas of ...".
        if "nonce too low" in lowered or "underpriced" in lowered or "base fee" in lowered \
                or "basefeepergas" in lowered:
            return "retry"  # resolved by the receipt and nonce checks, or by the next, higher fee
        if record.hashes:
            return "sent"  # an earlier version is still out there: keep waiting for it
        return NotMined("refused", refused)

    def _price(self, record: TxRecord) -> Price:
        """The next version's fees at the latest block: twice the base fee plus the tip for a first
        version; a replacement raises both by at least ``fee_bump_percent``. Capped at the ceiling."""
        number, base = self._latest_base_fee()
        tip = int(self.w3.eth.max_priority_fee)
        max_fee = 2 * base + tip
        if record.max_fee:
            tip = max(tip, bumped(record.tip, self.policy.fee_bump_percent))
            max_fee = max(2 * base + tip, bumped(record.max_fee, self.policy.fee_bump_percent))
        capped = min(max_fee, self.policy.max_fee_wei)
        return Price(block=number, base_fee=base, max_fee=capped, tip=min(tip, capped), wanted=max_fee)

    def _held(self, record: TxRecord, price: Price, held: Price | None) -> Price | None:
        """``price`` while the ceiling holds it below what the chain needs, reported when that
        starts; None once a decision fits under the ceiling again."""
        if price.max_fee == price.wanted:
            if held is not None:
                log.info("fee_ceiling_cleared", kind=record.kind, nonce=record.nonce, base_fee=price.base_fee,
                         max_fee=price.max_fee)
            return None
        if held is None:
            TX_FEE_CEILING.labels(kind=record.kind).inc()
            log.warning("fee_ceiling_reached", kind=record.kind, nonce=record.nonce, needed_fee=price.wanted,
                        ceiling=self.policy.max_fee_wei, base_fee=price.base_fee, block=price.block,
                        versions=len(record.hashes))
        return price

    def _worth_sending(self, record: TxRecord, price: Price) -> bool:
        """A version at ``price`` can be mined at the current base fee and replace the pending one
        (nodes refuse a replacement that raises either fee by less than 10 %). Only a price the
        ceiling capped can fail this: an uncapped one is twice the base fee and a full bump."""
        if price.max_fee == price.wanted:
            return True
        if price.max_fee <= price.base_fee:
            return False  # nothing under the ceiling can be mined now: wait for a block that lowers the fee
        if not self._any_known(record.hashes):
            return True  # nothing to replace (a first version, or every version dropped or evicted)
        return (price.max_fee >= bumped(record.max_fee, MIN_REPLACEMENT_BUMP_PERCENT)
                and price.tip >= bumped(record.tip, MIN_REPLACEMENT_BUMP_PERCENT))

    def _latest_base_fee(self) -> tuple[int, int]:
        """(number, base fee) of the latest block."""
        block = self.w3.eth.get_block("latest")
        return int(block["number"]), int(block.get("baseFeePerGas", 0) or 0)

    def _broadcast(self, raw: HexBytes, tx_hash: HexBytes) -> str | None:
        """None once the node has the transaction, else the node's reason for refusing it."""
        try:
            self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            if mined_despite_error(exc, tx_hash):
                return None  # a stock Hardhat node mined it, reverted, and says so: the receipt resolves it
            return redact(str(exc.message))
        except ValueError as exc:
            return redact(str(exc))
        return None

    def _behind_a_gap(self, nonce: int) -> bool:
        """Nonces below ``nonce`` that no pending transaction holds."""
        return int(self.w3.eth.get_transaction_count(self.address, "pending")) < nonce

    def on_chain(self, record: TxRecord) -> bool:
        """One of the record's versions is mined on the node's chain."""
        return self._find_receipt(record.hashes) is not None

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
        return any(is_known(self.w3, tx_hash) for tx_hash in hashes)

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
                call: TxParams = {"from": self.address, "to": record.to, "data": record.data,  # type: ignore[typeddict-item]
                                  "gas": record.gas_limit}
                error = await asyncio.to_thread(replay_revert, self.w3, call, receipt, self.decoder)
                record.reason, record.detail = error.name, str(error)
            await self.save(key, record)
            log.info("transaction_resolved", kind=record.kind, state=record.state, tx_hash=tx_hash, block=block,
                     gas_used=gas_used, nonce=record.nonce, versions=len(record.hashes), reason=record.reason)
        if record.state == "mined":
            return Mined(tx_hash, block, gas_used, record.submit_seconds or 0.0, record.send_seconds or 0.0)
        return Reverted(tx_hash, block, gas_used, record.reason or "RevertedWithoutReason", record.detail)
