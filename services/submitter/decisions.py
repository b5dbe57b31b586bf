"""The submitter's decisions: what to send for a proven update or a round deadline, and which
answer to publish. Sending, nonces, re-sends, receipts and revert names are the transaction
engine's (``engine.py``).

- a message whose transaction is recorded is answered from that transaction, never sent again;
- a first update is sent only for the open round, when ``hasSubmitted`` is false and the
  estimate does not revert; a refusal costs no transaction and is named by the contract's error;
- the contract accepts one update per participant and round: an update refused (before sending,
  or mined and reverted) because the round is closed or the participant already submitted may be
  ours on chain by another transaction (a version we lost track of, an operator, lost Redis
  state), and then that transaction is the answer (``_answer``, the one place of this rule);
- a round is closed with ``finalizeRound`` once the contract says its deadline has passed;
- secure aggregation: a voided round that excluded this participant (``round.voided``) is answered
  with ``rejoin()``, once per voided round (its own record, like ``finalizeRound``'s); the
  contract's ``Wafl__NotExcluded`` means it is back already;
- update records are per opening of the round (``ProofGenerated.branch``): a round opened again
  on another branch after a reorganisation is submitted anew. After a reorganisation deeper than
  the confirmation depth (``chain.reorged``), every resolved transaction of the dropped blocks
  that is no longer on chain is taken up again (``resubmit_dropped``): an update whose proof
  still holds on the new branch is sent again, under the same record; one that no longer holds,
  and every dropped ``finalizeRound``, is forgotten (the new branch brings its own proof and
  deadline).
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import redis.asyncio as aioredis
import structlog
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from prometheus_client import Counter
from web3 import Web3

from services.submitter.engine import TxEngine
from services.submitter.nonces import NonceSession
from services.submitter.records import UNRESOLVED, Mined, NotMined, Outcome, Reverted, TxPolicy
from wafl.bus.messages import ProofGenerated, RoundFinalizeSent, RoundVoided, UpdateFailed, UpdateSubmitted
from wafl.bus.secrets import redact
from wafl.chain.aggregator import AggregatorClient

log = structlog.get_logger()

DEADLINE_NOT_REACHED = "Wafl__DeadlineNotReached"
ALREADY_SUBMITTED = "Wafl__AlreadySubmitted"
ROUND_CLOSED = "Wafl__RoundClosed"
NOT_EXCLUDED = "Wafl__NotExcluded"

Rejoin = Literal["rejoined", "already_rejoined", "not_excluded", "refused"]
"""What ``Submitter.rejoin`` did: sent rejoin() (now or at an earlier delivery), found this participant
back already, had nothing to do (the voided round did not exclude it), or was refused (logged)."""

TX_OUTCOMES = Counter(
    "wafl_submitter_outcomes",
    "Answers of the submitter (a redelivery counts again), by kind and outcome (mined or the failure reason).",
    ["kind", "outcome"],
)


class UnknownRoundError(ValueError):
    """The message names a round the contract has not opened (dead-letter it)."""


class WrongParticipantError(ValueError):
    """The proof is bound to another address than the one this submitter signs for."""


class SubmissionPendingError(RuntimeError):
    """A transaction is still unresolved; retrying the message resumes it (same nonce)."""


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
        self.redis = redis
        self.address: ChecksumAddress = account.address
        self.key_prefix = key_prefix
        self.org = org
        self.contract_address = Web3.to_checksum_address(aggregator.deployment.address)
        self.engine = TxEngine(aggregator.w3, account, redis, key_prefix, self.contract_address,
                               aggregator.deployment.chain_id, aggregator.decoder, policy or TxPolicy())

    def __repr__(self) -> str:  # never the account object (it holds the key)
        return f"Submitter(address={self.address}, aggregator={self.contract_address})"

    def record_key(self, kind: str, round_id: int, branch: str | None = None) -> str:
        """Per aggregator (a redeployment starts again at round 1) and signing address; an update's
        also per opening of its round."""
        key = f"{self._records_prefix}:{kind}:{round_id}"
        return key if branch is None else f"{key}:{branch.lower()}"

    @property
    def _records_prefix(self) -> str:
        return f"{self.key_prefix}:tx:{self.contract_address.lower()}:{self.address.lower()}"

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
        key = self.record_key("update", proof.round, proof.branch)

        async def first(session: NonceSession) -> Outcome:
            current = await asyncio.to_thread(self.aggregator.current_round)
            if proof.round > current.round:
                raise UnknownRoundError(f"unknown round {proof.round}: the contract is at round {current.round}")
            if proof.round < current.round:
                return NotMined(ROUND_CLOSED, f"round {proof.round} is closed: the contract is at round "
                                              f"{current.round}; not sent")
            if await asyncio.to_thread(self.aggregator.has_submitted, self.address):
                return NotMined(ALREADY_SUBMITTED, "hasSubmitted is true for this round; not sent")
            data = self.aggregator.contract.encode_abi(
                "submitUpdate", args=[proof.round, list(proof.update_words), list(proof.proof)]
            )
            estimate = await self.engine.estimate(data)
            if isinstance(estimate, NotMined):
                return estimate
            # The update that reaches the quorum also finalises the round: leave room for it, since
            # another organisation's update may land first between estimation and mining.
            allowance = 80_000 + 15_000 * len(proof.update_words)
            record = self.engine.new_record("update", proof.round, data, estimate, allowance, started)
            return await self.engine.send(session, key, record)

        return await self._answer(proof.round, key, await self.engine.resume_or(key, first))

    async def resubmit_dropped(self, fork_block: int) -> list[tuple[str, UpdateSubmitted | UpdateFailed]]:
        """Take up the transactions a reorganisation at ``fork_block`` dropped (module docstring):
        the answers to publish, with their record keys."""
        answers: list[tuple[str, UpdateSubmitted | UpdateFailed]] = []
        keys = [key async for key in self.redis.scan_iter(match=f"{self._records_prefix}:*")]
        for key in sorted(k.decode() if isinstance(k, bytes) else str(k) for k in keys):
            if ":published:" in key:
                continue
            async with self.engine.nonces.session() as session:
                record = await self.engine.load(key)
                if record is None or record.state == "pending" or (record.block_number or 0) <= fork_block:
                    continue  # untouched by the reorganisation, or still being driven
                if await asyncio.to_thread(self.engine.on_chain, record):
                    continue  # mined again on the new branch
                estimate = await self.engine.estimate(record.data) if record.kind == "update" else None
                if not isinstance(estimate, int):
                    await self.redis.delete(key)
                    log.info("dropped_transaction_forgotten", kind=record.kind, round=record.round,
                             reason=estimate.reason if estimate else record.kind)
                    continue
                log.warning("dropped_update_resent", round=record.round, old_tx=record.tx_hash)
                record.state, record.tx_hash, record.block_number, record.nonce = "pending", None, None, None
                await self.engine.save(key, record)
                outcome = await self.engine.transact(session, key, record)
            answers.append((key, await self._answer(record.round, key, outcome)))
        return answers

    async def _answer(self, round_id: int, key: str, outcome: Outcome) -> UpdateSubmitted | UpdateFailed:
        """Accepted (by our transaction, or already on chain by another one of ours), else failed."""
        if isinstance(outcome, Mined):
            return self._submitted(round_id, outcome)
        if outcome.reason in (ALREADY_SUBMITTED, ROUND_CLOSED):
            on_chain = await self._find_accepted(round_id, key)
            if on_chain is not None:
                log.info("update_already_on_chain", tx_hash=on_chain.tx_hash, reason=outcome.reason)
                return self._submitted(round_id, on_chain)
        detail = outcome.detail
        if isinstance(outcome, Reverted):
            detail = f"{detail} (mined in {outcome.tx_hash})"
        TX_OUTCOMES.labels(kind="update", outcome=outcome.reason).inc()
        log.warning("update_failed", reason=outcome.reason, detail=detail)
        return UpdateFailed(org=self.org, round=round_id, participant=self.address, reason=outcome.reason,
                            detail=redact(detail)[:500])

    def _submitted(self, round_id: int, mined: Mined) -> UpdateSubmitted:
        TX_OUTCOMES.labels(kind="update", outcome="mined").inc()
        return UpdateSubmitted(
            message_id=mined.tx_hash[2:],  # the same answer for every delivery: consumers can dedupe
            org=self.org, round=round_id, participant=self.address, tx_hash=mined.tx_hash,
            block_number=mined.block_number, gas_used=mined.gas_used, submit_seconds=mined.submit_seconds,
            send_seconds=mined.send_seconds,
        )

    async def _find_accepted(self, round_id: int, key: str) -> Mined | None:
        """The transaction that got this participant's update for ``round_id`` accepted, if any."""

        def find() -> Mined | None:
            event = self.aggregator.contract.events.UpdateAccepted()
            logs = list(event.get_logs(argument_filters={"round": round_id, "participant": self.address},
                                       from_block=self.aggregator.deployment.start_block))
            if not logs:
                return None
            receipt = self.aggregator.w3.eth.get_transaction_receipt(logs[0]["transactionHash"])
            return Mined(receipt["transactionHash"].to_0x_hex(), int(receipt["blockNumber"]),
                         int(receipt["gasUsed"]), 0.0)

        found = await asyncio.to_thread(find)
        if found is None:
            return None
        record = await self.engine.load(key)
        if record is not None and record.tx_hash == found.tx_hash and record.submit_seconds is not None:
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

        async def first(session: NonceSession) -> Outcome | None:
            current = await asyncio.to_thread(self.aggregator.current_round)
            if round_id > current.round:
                raise UnknownRoundError(f"unknown round {round_id}: the contract is at round {current.round}")
            if round_id < current.round:
                log.info("round_already_finalized", current=current.round)
                TX_OUTCOMES.labels(kind="finalize", outcome="already_finalized").inc()
                return None
            data = self.aggregator.contract.encode_abi("finalizeRound", args=[])
            estimate = await self.engine.estimate(data)
            if isinstance(estimate, NotMined):
                TX_OUTCOMES.labels(kind="finalize", outcome=estimate.reason).inc()
                if estimate.reason == DEADLINE_NOT_REACHED:
                    log.info("deadline_not_reached", detail=estimate.detail)
                else:
                    log.warning("finalize_refused", reason=estimate.reason, detail=estimate.detail)
                return None
            record = self.engine.new_record("finalize", round_id, data, estimate, 0, started)
            return await self.engine.send(session, key, record)

        outcome = await self.engine.resume_or(key, first)
        if outcome is None:
            return None
        TX_OUTCOMES.labels(kind="finalize", outcome="mined" if isinstance(outcome, Mined) else outcome.reason).inc()
        if isinstance(outcome, Mined):
            return RoundFinalizeSent(message_id=outcome.tx_hash[2:], org=self.org, round=round_id,
                                     tx_hash=outcome.tx_hash, gas_used=outcome.gas_used)
        if isinstance(outcome, Reverted):
            # Someone else closed the round first: our call then hit the next, open round.
            log.info("finalize_reverted", reason=outcome.reason, tx_hash=outcome.tx_hash)
            return None
        raise SubmissionPendingError(f"finalizeRound for round {round_id}: {outcome.reason}: {outcome.detail}")

    # ---- secure aggregation -----------------------------------------------------------------

    async def rejoin(self, voided: RoundVoided) -> Rejoin:
        """After a voided round that excluded this participant: ``rejoin()``, once whatever the
        deliveries of ``voided`` (one record per voided round). Logs ``rejoined`` (``already``
        when the contract says it is not excluded) or ``rejoin_refused`` with the error's name.

        Raises SubmissionPendingError when the transaction is still unresolved (a retry resumes
        it with the same nonce).
        """
        if not voided.excluded or self.address.lower() not in {m.lower() for m in voided.missing}:
            return "not_excluded"
        started = time.time()
        key = self.record_key("rejoin", voided.round)

        async def first(session: NonceSession) -> Outcome:
            data = self.aggregator.contract.encode_abi("rejoin", args=[])
            estimate = await self.engine.estimate(data)
            if isinstance(estimate, NotMined):
                return estimate
            record = self.engine.new_record("rejoin", voided.round, data, estimate, 0, started)
            return await self.engine.send(session, key, record)

        outcome = await self.engine.resume_or(key, first)
        if isinstance(outcome, Mined):
            TX_OUTCOMES.labels(kind="rejoin", outcome="mined").inc()
            log.info("rejoined", voided_round=voided.round, tx_hash=outcome.tx_hash, gas_used=outcome.gas_used)
            return "rejoined"
        if outcome.reason == NOT_EXCLUDED:  # back already: an earlier call of ours, or the operator's
            TX_OUTCOMES.labels(kind="rejoin", outcome="already_rejoined").inc()
            log.info("rejoined", voided_round=voided.round, already=True)
            return "already_rejoined"
        if isinstance(outcome, Reverted) or outcome.reason not in UNRESOLVED:
            TX_OUTCOMES.labels(kind="rejoin", outcome=outcome.reason).inc()
            log.warning("rejoin_refused", voided_round=voided.round, reason=outcome.reason, detail=outcome.detail)
            return "refused"
        raise SubmissionPendingError(f"rejoin after round {voided.round}: {outcome.reason}: {outcome.detail}")
