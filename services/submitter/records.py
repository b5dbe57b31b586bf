"""What the transaction engine is told (TxPolicy), what it keeps in Redis for one logical
transaction (TxRecord) and what it answers (Mined, Reverted, NotMined)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

RECORD_TTL_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class TxPolicy:
    """The one place of these defaults: the service's settings take theirs from here."""

    receipt_timeout: float = 120.0
    resend_after: float = 15.0
    fee_bump_percent: int = 15
    max_fee_wei: int = 500 * 10**9
    gas_multiplier: float = 1.2
    lock_wait: float = 600.0
    poll_seconds: float = 0.1
    max_sends: int = 12
    # Blocks on top of a receipt before it counts (reorg safety). A chain that mines only when a
    # transaction arrives (anvil's automining) never adds them: say confirmations=0 there.
    confirmations: int = 2


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
    reason: str  # timeout | dropped | refused | nonce_consumed, or the error a call reverts with
    detail: str


Outcome = Mined | Reverted | NotMined
