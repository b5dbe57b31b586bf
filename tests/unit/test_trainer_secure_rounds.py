"""The trainer with secure aggregation (in-process broker and Redis, the real handlers): a round is
trained only by the members of its set, the job carries the set's keys and the participant's slot,
update.trained carries no words; a plain deployment is trained as before."""

from __future__ import annotations

import asyncio
import functools

import pytest
from structlog.testing import capture_logs

from services.trainer.handlers import TrainerState, register
from services.trainer.rounds import RoundTrainer, UnprovableStepError
from tests.support.inmemory import ORG, Observer, chain_fields, publish, runtime, serving
from wafl.bus.messages import ProverJob, RoundOpened, UpdateFailed, UpdateTrained
from wafl.core.config import ModelConfig, load_config
from wafl.core.packing import pack
from wafl.data.datasets import OrgData, load_org_data

ME = "0x" + "ab" * 20
OTHERS = ["0x" + "01" * 20, "0x" + "02" * 20]


@functools.cache
def setup(name: str) -> tuple[ModelConfig, OrgData]:
    cfg = load_config(name)
    return cfg, load_org_data(cfg, None, 0, 2)


def keys(cfg: ModelConfig, members: int) -> list[int]:
    """2S key words: the members' (made-up) points, then absent slots as (0, 1)."""
    words: list[int] = []
    for slot in range(cfg.set_size):
        words += [1000 + slot, 2000 + slot] if slot < members else [0, 1]
    return words


def opened(cfg: ModelConfig, members: list[str], round_id: int = 1, **extra: object) -> RoundOpened:
    return RoundOpened(org=ORG, round=round_id, deadline=0, global_words=pack(cfg, [0] * cfg.n_weights),
                       members=members, member_keys=keys(cfg, len(members)) if members else [],
                       **chain_fields(round_id), **extra)  # type: ignore[arg-type]


def run(cfg: ModelConfig, data: OrgData, *events: RoundOpened) -> tuple[Observer, list[dict[str, object]]]:
    async def scenario() -> Observer:
        rt = runtime("trainer")
        register(rt, TrainerState(RoundTrainer(cfg, data, ORG, ME)))
        observer = Observer(rt.broker, rt.topology, ("update.trained", "update.failed"), jobs=True)
        async with serving(rt, chain_round=1) as broker:
            await publish(broker, rt, *events)
            await asyncio.sleep(0)
        return observer

    with capture_logs() as logs:
        observer = asyncio.run(scenario())
    return observer, logs


def test_a_member_trains_with_the_set_s_keys_and_its_slot_and_publishes_no_words() -> None:
    cfg, data = setup("iris-4x3-b3-secagg")
    event = opened(cfg, [OTHERS[0], ME.upper().replace("0X", "0x"), OTHERS[1]])  # addresses compared case-blind
    observer, _ = run(cfg, data, event)
    (job,) = observer.of(ProverJob)
    (trained,) = observer.of(UpdateTrained)
    assert job.slot == 1 and job.member_keys == event.member_keys and len(job.member_keys) == 2 * cfg.set_size
    assert job.update_words, "the prover masks the plain update: the job has it"
    assert trained.update_words == [] and trained.participant == ME
    assert not observer.seen["update.failed"]


def test_a_participant_outside_the_round_s_set_does_not_train_it() -> None:
    cfg, data = setup("iris-4x3-b3-secagg")
    observer, logs = run(cfg, data, opened(cfg, OTHERS))
    assert not observer.seen["prover.job"] and not observer.seen["update.trained"]
    assert not observer.seen["update.failed"]
    assert [entry for entry in logs if entry["event"] == "not_in_round_set"] == [
        {"event": "not_in_round_set", "participant": ME, "members": 2, "log_level": "info"}]


def test_a_set_that_does_not_fit_the_circuit_is_update_failed() -> None:
    cfg, data = setup("iris-4x3-b3-secagg")
    event = opened(cfg, [ME, OTHERS[0]]).model_copy(update={"member_keys": [1, 2]})
    observer, _ = run(cfg, data, event)
    assert not observer.seen["prover.job"]
    (failed,) = observer.of(UpdateFailed)
    assert failed.reason == "unprovable_step" and "does not fit the circuit's 3 slots" in failed.detail


def test_a_plain_deployment_trains_every_round_with_words_and_no_set() -> None:
    cfg, data = setup("iris-4x3-b3")
    observer, _ = run(cfg, data, opened(cfg, []))
    (job,) = observer.of(ProverJob)
    (trained,) = observer.of(UpdateTrained)
    assert job.slot is None and job.member_keys == []
    assert trained.update_words == job.update_words and trained.update_words


def test_the_core_keeps_plain_steps_for_the_reference() -> None:
    """Without a slot (the reference, benchmarks) a secure configuration's step is the plain one."""
    secure, data = setup("iris-4x3-b3-secagg")
    trainer = RoundTrainer(secure, data, ORG, ME)
    assert trainer.secure and trainer.slot(OTHERS) is None and trainer.slot([*OTHERS, ME]) == 2
    words = pack(secure, [0] * secure.n_weights)
    job, trained = trainer.train(1, words)
    assert job.slot is None and job.member_keys == [] and trained.update_words == []
    with_slot, _ = trainer.train(1, words, member_keys=keys(secure, 2), slot=0)
    assert with_slot.update_words == job.update_words  # the same deterministic step
    with pytest.raises(UnprovableStepError, match="slot 3"):
        trainer.train(1, words, member_keys=keys(secure, 2), slot=3)
