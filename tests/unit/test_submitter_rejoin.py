"""The submitter's answer to a voided round that excluded its participant (secure aggregation):
rejoin() once per voided round whatever the deliveries, Wafl__NotExcluded taken as done, any other
revert named; the handler behind round.voided. The transaction engine is a stand-in here (the
engine's own rules are tested on anvil: tests/integration/test_submitter*.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import fakeredis
import pytest
from eth_account import Account
from eth_utils import keccak
from structlog.testing import capture_logs
from web3 import Web3

from services.submitter.decisions import SubmissionPendingError, Submitter
from services.submitter.handlers import SubmitterState, register
from services.submitter.records import Mined, NotMined, Outcome, Reverted, TxRecord
from tests.support.inmemory import ORG, Observer, chain_fields, deployment, publish, runtime, serving
from wafl.bus.messages import RoundVoided
from wafl.chain.aggregator import AggregatorClient

ACCOUNT = Account.create()
ME = ACCOUNT.address
OTHER = "0x" + "0c" * 20
REJOIN = {"type": "function", "name": "rejoin", "inputs": [], "outputs": [], "stateMutability": "nonpayable"}
MINED = Mined("0x" + "e1" * 32, 12, 41_000, 0.5)


class FakeEngine:
    """Records by key, as the engine keeps them in Redis: a key with a record is resumed, never sent anew."""

    def __init__(self, estimate: int | NotMined = 40_000, outcome: Outcome = MINED) -> None:
        self.estimate_answer = estimate
        self.outcome = outcome
        self.records: dict[str, Outcome] = {}
        self.estimated: list[str] = []
        self.sent: list[tuple[str, TxRecord]] = []

    async def resume_or(self, key: str, first: Callable[[Any], Awaitable[Any]]) -> Any:
        if key in self.records:
            return self.records[key]
        return await first(None)

    async def estimate(self, data: str) -> int | NotMined:
        self.estimated.append(data)
        return self.estimate_answer

    def new_record(self, kind: str, round_id: int, data: str, estimate: int, allowance: int,
                   started: float) -> TxRecord:
        return TxRecord(kind=kind, round=round_id, to="0x" + "5a" * 20, data=data, gas_limit=estimate + allowance,
                        started=started)

    async def send(self, session: Any, key: str, record: TxRecord) -> Outcome:
        self.sent.append((key, record))
        self.records[key] = self.outcome
        return self.outcome


def submitter(engine: FakeEngine, redis: Any = None) -> Submitter:
    core = Submitter(AggregatorClient(Web3(), deployment(functions=[REJOIN])), ACCOUNT,
                     redis or fakeredis.FakeAsyncRedis(), f"wafl:{ORG}:submitter", ORG)
    core.engine = engine  # type: ignore[assignment]
    return core


def voided(missing: list[str], excluded: bool = True, round_id: int = 4, block: int = 9) -> RoundVoided:
    return RoundVoided(org=ORG, round=round_id, missing=missing, excluded=excluded, **chain_fields(block))


def test_rejoin_is_sent_once_per_voided_round() -> None:
    engine = FakeEngine()
    core = submitter(engine)
    event = voided([OTHER, ME.lower()])  # addresses compared case-blind

    async def scenario() -> list[str]:
        answers = [await core.rejoin(event), await core.rejoin(event.model_copy(update={"message_id": "again"}))]
        answers.append(await core.rejoin(voided([ME], round_id=8)))  # excluded again later: a new rejoin
        return answers

    with capture_logs() as logs:
        answers = asyncio.run(scenario())
    assert answers == ["rejoined"] * 3
    assert [record.round for _, record in engine.sent] == [4, 8]
    (key, record), _ = engine.sent
    assert record.kind == "rejoin" and record.data == "0x" + keccak(text="rejoin()")[:4].hex()
    assert key == core.record_key("rejoin", 4)
    assert next(e for e in logs if e["event"] == "rejoined") == {
        "event": "rejoined", "voided_round": 4, "tx_hash": MINED.tx_hash, "gas_used": MINED.gas_used,
        "log_level": "info"}


@pytest.mark.parametrize("event", [voided([OTHER]), voided([ME], excluded=False)], ids=["others", "not-excluded"])
def test_nothing_is_sent_unless_the_round_excluded_this_participant(event: RoundVoided) -> None:
    engine = FakeEngine()
    assert asyncio.run(submitter(engine).rejoin(event)) == "not_excluded"
    assert not engine.estimated and not engine.sent


def test_not_excluded_is_taken_as_done() -> None:
    refused = FakeEngine(estimate=NotMined("Wafl__NotExcluded", f"Wafl__NotExcluded({ME})"))
    with capture_logs() as logs:
        assert asyncio.run(submitter(refused).rejoin(voided([ME]))) == "already_rejoined"
    assert not refused.sent
    assert {"event": "rejoined", "voided_round": 4, "already": True, "log_level": "info"} in logs
    reverted = FakeEngine(outcome=Reverted("0x" + "e2" * 32, 12, 30_000, "Wafl__NotExcluded", ""))
    assert asyncio.run(submitter(reverted).rejoin(voided([ME]))) == "already_rejoined"


def test_other_reverts_are_named_and_unresolved_transactions_retried() -> None:
    refused = FakeEngine(estimate=NotMined("Wafl__NotParticipant", f"Wafl__NotParticipant({ME})"))
    with capture_logs() as logs:
        assert asyncio.run(submitter(refused).rejoin(voided([ME]))) == "refused"
    (warning,) = [e for e in logs if e["event"] == "rejoin_refused"]
    assert warning["reason"] == "Wafl__NotParticipant" and warning["log_level"] == "warning"
    pending = FakeEngine(outcome=NotMined("timeout", "no receipt within 120s"))
    with pytest.raises(SubmissionPendingError, match="rejoin after round 4: timeout"):
        asyncio.run(submitter(pending).rejoin(voided([ME])))


def test_the_handler_rejoins_on_round_voided_and_rejects_an_unknown_round() -> None:
    engine = FakeEngine()

    async def scenario() -> Observer:
        rt = runtime("submitter")
        register(rt, SubmitterState(submitter(engine, rt.redis)))
        observer = Observer(rt.broker, rt.topology, ())
        async with serving(rt, chain_round=5) as broker:
            await publish(broker, rt, voided([ME]), voided([ME], round_id=9, block=10))  # round 9: not opened
        return observer

    observer = asyncio.run(scenario())
    assert [record.round for _, record in engine.sent] == [4]
    assert observer.dead == ["rejected: unknown round 9: the contract is at round 5"]
