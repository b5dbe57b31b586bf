"""What the transaction engine is told (TxPolicy), what it keeps in Redis for one logical
transaction (TxRecord) and what it answers (Mined, Reverted, NotMined)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

RECORD_TTL_SECONDS = 30 * 24 * 3600
# A replacement (same nonce) must raise both maxFeePerGas and maxPriorityFeePerGas by this much,
# or geth refuses it as "replacement transaction underpriced".
MIN_REPLACEMENT_BUMP_PERCENT = 10


@dataclass(frozen=True)
class TxPolicy:
    """The one place of these defaults: the service's settings take theirs from here."""

    receipt_timeout: float = 120.0
    resend_after: float = 15.0
    # New blocks without a receipt before an unmined version is replaced (a block whose base fee
    # exceeds the version's max fee replaces it at once).
    replace_after_blocks: int = 3
    fee_bump_percent: int = 15
    # The fee ceiling: no version offers more per gas, whatever the chain needs.
    max_fee_wei: int = 500 * 10**9
    gas_multiplier: float = 1.2
    lock_wait: float = 600.0
    poll_seconds: float = 0.1
    max_sends: int = 12
    # Blocks on top of a receipt before it counts (reorg safety). A chain that mines only when a
    # transaction arrives (anvil's automining) never adds them: say confirmations=0 there.
    confirmations: int = 2

    def __post_init__(self) -> None:
        if self.fee_bump_percent < MIN_REPLACEMENT_BUMP_PERCENT:
            raise ValueError(f"fee_bump_percent must be at least {MIN_REPLACEMENT_BUMP_PERCENT} (nodes refuse a "
                             f"smaller replacement), not {self.fee_bump_percent}")
        if self.replace_after_blocks < 1:
            raise ValueError(f"replace_after_blocks must be at least 1, not {self.replace_after_blocks}")


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
    reason: str  # one of UNRESOLVED, or the error a call reverts with
    detail: str


UNRESOLVED = frozenset({"timeout", "dropped", "refused", "nonce_consumed", "fee_ceiling"})
"""NotMined reasons of the engine itself (no revert): a later attempt may still get the transaction mined."""


Outcome = Mined | Reverted | NotMined
