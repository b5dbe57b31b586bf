"""One nonce sequence per signing key, shared by every replica through Redis.

A replica holds the key's lock (a Redis lease renewed by a heartbeat) for the whole life of a
transaction: nonce allocation, signing, sending, re-sending and waiting for the receipt. So no two
replicas ever hold transactions of the same key in flight, and a transaction that has to be
re-sent (dropped or underpriced) keeps its nonce without anyone taking the next one meanwhile.
A replica that dies loses its lease after ``lease_seconds``.

Redis also holds the next nonce and the hash of the last transaction sent, resynchronised with
the chain at each allocation:
- the node's pending count is at least the stored value (the normal case, or the key was used
  elsewhere): the pending count;
- the stored value is ahead and the node still knows the last transaction (pending or mined; a
  load-balanced RPC that has not seen it yet): the stored value, never reusing a nonce in flight;
- the stored value is ahead and the node does not know the last transaction (it was dropped and
  abandoned), or holds it queued behind a gap (a reorganisation dropped the transactions before
  it): the pending count, so that no gap blocks every later transaction.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, cast

import redis.asyncio as aioredis
import structlog
from web3 import Web3
from web3.exceptions import TransactionNotFound

log = structlog.get_logger()

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class NonceLockTimeoutError(RuntimeError):
    """Another replica held the key's lock for longer than we are willing to wait."""


class NonceLockLostError(RuntimeError):
    """The lease expired or was taken over (Redis flushed, process paused): stop sending."""


class NonceManager:
    """The nonce sequence of one address, coordinated through Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        w3: Web3,
        address: str,
        key_prefix: str,
        *,
        lease_seconds: float = 30.0,
        wait_seconds: float = 600.0,
        poll_seconds: float = 0.05,
    ) -> None:
        self.redis = redis
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.state_key = f"{key_prefix}:nonce:{self.address.lower()}"
        self.lock_key = f"{self.state_key}:lock"
        self.lease_seconds = lease_seconds
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds

    @asynccontextmanager
    async def session(self) -> AsyncIterator[NonceSession]:
        """Hold the key's lock (waiting for another holder to finish) for the block's duration."""
        token = uuid.uuid4().hex
        lease_ms = int(self.lease_seconds * 1000)
        deadline = time.monotonic() + self.wait_seconds
        while not await self.redis.set(self.lock_key, token, nx=True, px=lease_ms):
            if time.monotonic() >= deadline:
                raise NonceLockTimeoutError(
                    f"the nonce lock of {self.address} stayed held by another replica for {self.wait_seconds}s"
                )
            await asyncio.sleep(self.poll_seconds)
        session = NonceSession(self, token)
        beat = asyncio.create_task(self._heartbeat(session, lease_ms))
        try:
            yield session
        finally:
            beat.cancel()
            try:
                await cast(Awaitable[Any], self.redis.eval(_RELEASE, 1, self.lock_key, token))
            except Exception as exc:  # the lease expires by itself
                log.warning("nonce_lock_release_failed", error=type(exc).__name__)

    async def _heartbeat(self, session: NonceSession, lease_ms: int) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                renewed = await cast(
                    Awaitable[Any], self.redis.eval(_RENEW, 1, self.lock_key, session.token, lease_ms)
                )
            except Exception as exc:  # Redis unreachable for a moment: try again at the next beat
                log.warning("nonce_lock_renew_failed", error=type(exc).__name__)
                continue
            if not renewed:
                session.lost = True
                log.error("nonce_lock_lost", address=self.address)
                return

    async def stored(self) -> tuple[int | None, str | None]:
        raw = await self.redis.get(self.state_key)
        if raw is None:
            return None, None
        state = json.loads(raw)
        return int(state["next"]), state.get("last_tx")


class NonceSession:
    """What the lock holder may do: allocate the next nonce and record what it sent."""

    def __init__(self, manager: NonceManager, token: str) -> None:
        self.manager = manager
        self.token = token
        self.lost = False

    async def ensure_held(self) -> None:
        """Raise NonceLockLostError unless this session still holds the lock (checked in Redis)."""
        if self.lost or await self.manager.redis.get(self.manager.lock_key) != self.token:
            self.lost = True
            raise NonceLockLostError(f"lost the nonce lock of {self.manager.address}: not sending")

    async def next_nonce(self) -> int:
        """The nonce for a new transaction (see the module docstring for the resynchronisation)."""
        await self.ensure_held()
        m = self.manager
        pending = await asyncio.to_thread(m.w3.eth.get_transaction_count, m.address, "pending")
        stored, last_tx = await m.stored()
        if stored is None or stored <= pending:
            return int(pending)
        if last_tx is not None and await asyncio.to_thread(_continues_the_chain, m.w3, last_tx, int(pending)):
            return stored
        log.warning("nonce_resynchronised", address=m.address, stored=stored, pending=pending, last_tx=last_tx)
        return int(pending)

    async def sent(self, nonce: int, tx_hash: str) -> None:
        """Record that a transaction with ``nonce`` was handed to the node."""
        m = self.manager
        stored, _ = await m.stored()
        if stored is None or nonce + 1 >= stored:
            await m.redis.set(m.state_key, json.dumps({"next": nonce + 1, "last_tx": tx_hash}))


def _continues_the_chain(w3: Web3, tx_hash: str, pending: int) -> bool:
    """The node has the transaction mined, or pending with nothing missing below its nonce. One
    queued behind a gap (a reorganisation dropped the transactions before it) never will be mined
    until the gap is filled: counting on it would leave every later transaction stuck too."""
    try:
        tx = w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return False
    return tx.get("blockNumber") is not None or int(tx["nonce"]) < pending


def is_known(w3: Web3, tx_hash: str) -> bool:
    """The node has the transaction, pending or mined."""
    try:
        w3.eth.get_transaction(tx_hash)  # type: ignore[arg-type]
    except TransactionNotFound:
        return False
    return True
