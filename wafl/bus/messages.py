"""Message schemas: one pydantic model per topic, all encoding in one place (docs/design.md section 7).

Every message carries a schema version, a message id, the organisation and the time it was
emitted. Large integers (packed words, proof coordinates) travel as decimal strings so that no
JSON consumer rounds them. ProverJob carries private training data: it is published only to
the organisation's prover work queue, never to the public topic exchange.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer


def _parse_big_int(value: Any) -> Any:
    if isinstance(value, str):
        if not value.isdigit():
            raise ValueError("expected a non-negative decimal integer string")
        return int(value)
    return value


BigInt = Annotated[int, BeforeValidator(_parse_big_int), PlainSerializer(str, return_type=str), Field(ge=0)]
"""A non-negative integer of any size, as a decimal string on the wire."""

Address = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{40}$")]
TxHash = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{64}$")]
RoundId = Annotated[int, Field(ge=1, lt=1 << 64)]


def new_message_id() -> str:
    return uuid.uuid4().hex


def utc_now() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    """Common envelope of every WaFL message."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    routing_key: ClassVar[str]

    schema_version: Literal[1] = 1
    # Chain events use "<tx hash>:<log index>" (68+ characters), so a repeat has the same id.
    message_id: str = Field(default_factory=new_message_id, min_length=1, max_length=96)
    org: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$")
    emitted_at: datetime = Field(default_factory=utc_now)


class ChainEvent(Message):
    """Emitted by chain_watcher for a confirmed contract log. Its id is "<block hash>:<log index>":
    the same log on the same branch always has the same id, and the same transaction mined again
    on another branch after a reorganisation is a new event."""

    block_number: int = Field(ge=0)
    block_hash: TxHash
    tx_hash: TxHash
    log_index: int = Field(ge=0)


class RoundOpened(ChainEvent):
    routing_key: ClassVar[str] = "round.opened"
    round: RoundId
    deadline: int = Field(ge=0, description="unix seconds; updates are accepted before it")
    global_words: list[BigInt]
    members: list[Address] = Field(
        default=[], description="secure aggregation: the round's set, in slot order (from RoundMembers); "
                                "empty for a plain deployment",
    )
    member_keys: list[BigInt] = Field(
        default=[], description="secure aggregation: the set's masking keys as the circuit takes them (slot 0 x, "
                                "slot 0 y, slot 1 x, ...; an absent slot is (0, 1)); empty for a plain deployment",
    )


class UpdateAccepted(ChainEvent):
    routing_key: ClassVar[str] = "update.accepted"
    round: RoundId
    participant: Address
    accepted: int = Field(ge=1)


class RoundFinalized(ChainEvent):
    routing_key: ClassVar[str] = "round.finalized"
    round: RoundId
    accepted: int = Field(ge=0)
    global_words: list[BigInt] = Field(description="the averaged model the round produced")


class RoundVoided(ChainEvent):
    """Secure aggregation: the round's deadline passed with members of its set missing, so the
    masks could not cancel. The model is unchanged; the round is finalised with 0 updates."""

    routing_key: ClassVar[str] = "round.voided"
    round: RoundId
    missing: list[Address] = Field(description="the members of the round's set that submitted nothing")
    excluded: bool = Field(description="the missing members are left out of every set until they call rejoin()")


class MemberRejoined(ChainEvent):
    """Secure aggregation: an excluded participant called rejoin()."""

    routing_key: ClassVar[str] = "member.rejoined"
    participant: Address
    from_round: RoundId = Field(description="the first round whose set may include it again")


class ChainReorged(Message):
    """The chain dropped blocks the chain_watcher had already published events from (a reorg
    deeper than its confirmation depth). Published once per reorganisation, before any event of
    the new branch."""

    routing_key: ClassVar[str] = "chain.reorged"
    fork_block: int = Field(ge=0, description="the last block both branches share")
    fork_hash: TxHash
    depth: int = Field(ge=1, description="blocks of the dropped branch the watcher had scanned")
    dropped_blocks: list[TxHash] = Field(description="hashes of the dropped blocks the watcher knew")
    round: RoundId = Field(description="the round open on the new branch when the reorg was seen")


class RoundDeadline(Message):
    """The round's deadline has passed on chain and it is not finalised yet."""

    routing_key: ClassVar[str] = "round.deadline"
    round: RoundId
    deadline: int = Field(ge=0)


class UpdateTrained(Message):
    """Public part of a trained update (no data; with secure aggregation no update words either:
    the organisation's bus shows only the masked words, in proof.generated)."""

    routing_key: ClassVar[str] = "update.trained"
    round: RoundId
    participant: Address
    update_words: list[BigInt] = Field(description="the packed update; empty with secure aggregation")
    train_seconds: float = Field(ge=0)
    loss: float | None = None


Branch = Annotated[str, Field(pattern=r"^0x[0-9a-fA-F]{64}$",
                              description="hash of the block holding the round's RoundOpened")]
"""Which opening of a round a job belongs to: after a reorganisation a round may open again, on
another branch and from another global model, and is then trained, proved and submitted anew."""
NO_BRANCH = "0x" + "0" * 64
"""The branch of a job made outside a chain (the reference, benchmarks)."""


class ProverJob(Message):
    """Private: the training batch goes only to the organisation's own provers."""

    routing_key: ClassVar[str] = "prover.job"
    round: RoundId
    branch: Branch
    participant: Address
    global_words: list[BigInt]
    update_words: list[BigInt]
    x: list[list[int]]
    y: list[list[int]]
    trained_at: datetime
    member_keys: list[BigInt] = Field(
        default=[], description="secure aggregation: the round set's masking keys (RoundOpened.member_keys)"
    )
    slot: int | None = Field(
        default=None, ge=0, description="secure aggregation: the participant's slot in the round's set; None: plain"
    )


class ProofGenerated(Message):
    routing_key: ClassVar[str] = "proof.generated"
    round: RoundId
    branch: Branch
    participant: Address
    update_words: list[BigInt] = Field(description="the words to submit (masked with secure aggregation)")
    proof: list[BigInt] = Field(min_length=8, max_length=8)
    proof_seconds: float = Field(ge=0)
    witness_seconds: float = Field(ge=0)
    queue_seconds: float = Field(ge=0, description="time the job waited for a prover")


class UpdateSubmitted(Message):
    routing_key: ClassVar[str] = "update.submitted"
    round: RoundId
    participant: Address
    tx_hash: TxHash
    block_number: int = Field(ge=0)
    gas_used: int = Field(ge=0)
    submit_seconds: float = Field(ge=0, description="signing to the first receipt (block inclusion included)")
    send_seconds: float = Field(default=0.0, ge=0, description="estimating, signing and broadcasting")


class UpdateFailed(Message):
    routing_key: ClassVar[str] = "update.failed"
    round: RoundId
    participant: Address
    reason: str = Field(description="custom error name (Wafl__...) or a failure kind")
    detail: str = ""


class RoundFinalizeSent(Message):
    """The submitter closed a round after its deadline."""

    routing_key: ClassVar[str] = "round.finalize_sent"
    round: RoundId
    tx_hash: TxHash
    gas_used: int = Field(ge=0)


PUBLIC_MESSAGES: tuple[type[Message], ...] = (
    RoundOpened,
    UpdateAccepted,
    RoundFinalized,
    RoundVoided,
    MemberRejoined,
    RoundDeadline,
    ChainReorged,
    UpdateTrained,
    ProofGenerated,
    UpdateSubmitted,
    UpdateFailed,
    RoundFinalizeSent,
)
BY_ROUTING_KEY: dict[str, type[Message]] = {m.routing_key: m for m in PUBLIC_MESSAGES}


def encode(message: Message) -> bytes:
    return message.model_dump_json().encode()
