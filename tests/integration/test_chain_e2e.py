"""End to end on anvil: real proofs, the production deploy script, FedAvg on chain bit for bit,
and every rejection reverting with its own custom error while leaving the state unchanged."""

from __future__ import annotations

import random

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.logs import DISCARD

from tests.conftest import new_account
from tests.support.updates import make_update
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import increase_time
from wafl.chain.deploy import deploy
from wafl.chain.tx import ContractRevertError
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights, fedavg
from wafl.zk.prover import Groth16Proof, Prover

ROUND_SECONDS = 3600
# Gas targets of the issue, checked on every accepted update of the run.
MAX_GAS_SUBMIT = 310_000
MIN_GAS_SUBMIT = 250_000  # a verified update cannot cost less than tx + 4 pairings + its ecMuls


def new_federation(
    w3: Web3, cfg: ModelConfig, size: int
) -> tuple[AggregatorClient, LocalAccount, list[LocalAccount]]:
    """A fresh deployment with ``size`` registered members, all of them needed for the quorum."""
    admin = new_account(w3)
    members = [new_account(w3) for _ in range(size)]
    deployment = deploy(w3, admin, cfg, quorum=size, round_duration=ROUND_SECONDS, participants=members)
    return AggregatorClient(w3, deployment), admin, members


@pytest.fixture(scope="module")
def federation(w3: Web3, ref_config: ModelConfig) -> tuple[AggregatorClient, LocalAccount, list[LocalAccount]]:
    return new_federation(w3, ref_config, 3)


def snapshot(aggregator: AggregatorClient, members: list[LocalAccount]) -> tuple[object, ...]:
    return (
        aggregator.current_round(),
        aggregator.global_words(),
        tuple(aggregator.has_submitted(m.address) for m in members),
    )


def test_three_participants_two_rounds_match_reference_fedavg(
    federation: tuple[AggregatorClient, LocalAccount, list[LocalAccount]],
    ref_config: ModelConfig,
    ref_worker: Prover,
) -> None:
    aggregator, _, members = federation
    rng = random.Random(11)
    for round_id in (1, 2):
        info = aggregator.current_round()
        assert (info.round, info.accepted) == (round_id, 0)
        global_model = aggregator.global_model()
        updates = [make_update(ref_config, ref_worker, global_model, m.address, round_id, rng) for m in members]
        gas = []
        for member, update in zip(members, updates, strict=True):
            receipt = aggregator.submit_update(member, round_id, update.words, update.proof)
            gas.append(receipt["gasUsed"])
            logs = aggregator.contract.events.UpdateAccepted().process_receipt(receipt, errors=DISCARD)
            assert logs[0]["args"]["participant"] == member.address
        # The quorum-reaching update also finalises: it costs more and opens the next round.
        assert all(MIN_GAS_SUBMIT <= g <= MAX_GAS_SUBMIT for g in gas[:-1]), gas
        assert gas[-1] > MAX_GAS_SUBMIT
        assert aggregator.global_model() == fedavg(ref_config, [u.weights for u in updates])
        assert aggregator.current_round().round == round_id + 1


class TestRejections:
    """Each rejection on a fresh round: named custom error, state unchanged, mined or not."""

    @pytest.fixture()
    def setup(
        self, w3: Web3, ref_config: ModelConfig
    ) -> tuple[AggregatorClient, LocalAccount, list[LocalAccount]]:
        return new_federation(w3, ref_config, 2)

    def expect_revert(
        self, aggregator: AggregatorClient, members: list[LocalAccount], name: str,
        account: LocalAccount, round_id: int, words: list[int], proof: Groth16Proof | list[int],
    ) -> ContractRevertError:
        before = snapshot(aggregator, members)
        # Mined with a fixed gas limit: the revert happens on chain and is replayed for its name.
        with pytest.raises(ContractRevertError) as mined:
            aggregator.submit_update(account, round_id, words, proof, gas=2_000_000)
        assert mined.value.name == name, str(mined.value)
        # Estimated first (what a careful submitter does): refused before sending.
        with pytest.raises(ContractRevertError) as estimated:
            aggregator.submit_update(account, round_id, words, proof)
        assert estimated.value.name == name
        assert snapshot(aggregator, members) == before
        return mined.value

    def test_invalid_proof(self, setup, ref_config, ref_worker) -> None:  # type: ignore[no-untyped-def]
        aggregator, _, members = setup
        good = make_update(ref_config, ref_worker, aggregator.global_model(), members[0].address, 1,
                           random.Random(1))
        tampered = good.proof.as_uint256x8()
        tampered[0] ^= 1  # A no longer on the curve
        self.expect_revert(aggregator, members, "Wafl__InvalidProof", members[0], 1, good.words, tampered)
        swapped = good.proof.as_uint256x8()
        swapped[0:2], swapped[6:8] = swapped[6:8], swapped[0:2]  # valid points, wrong proof
        self.expect_revert(aggregator, members, "Wafl__InvalidProof", members[0], 1, good.words, swapped)
        other_words = list(good.words)
        other_words[0] ^= 1  # a weight the proof does not vouch for
        self.expect_revert(aggregator, members, "Wafl__InvalidProof", members[0], 1, other_words, good.proof)
        # The genuine one still goes through afterwards.
        aggregator.submit_update(members[0], 1, good.words, good.proof)

    def test_proof_for_another_sender(self, setup, ref_config, ref_worker) -> None:  # type: ignore[no-untyped-def]
        aggregator, _, members = setup
        theirs = make_update(ref_config, ref_worker, aggregator.global_model(), members[0].address, 1,
                             random.Random(2))
        self.expect_revert(aggregator, members, "Wafl__InvalidProof", members[1], 1, theirs.words, theirs.proof)

    def test_proof_for_another_round(self, setup, ref_config, ref_worker) -> None:  # type: ignore[no-untyped-def]
        aggregator, _, members = setup
        later = make_update(ref_config, ref_worker, aggregator.global_model(), members[0].address, 2,
                            random.Random(3))
        self.expect_revert(aggregator, members, "Wafl__InvalidProof", members[0], 1, later.words, later.proof)
        error = self.expect_revert(aggregator, members, "Wafl__RoundClosed", members[0], 2, later.words,
                                   later.proof)
        assert error.args_ == (2, 1)

    def test_second_submission_in_a_round(self, setup, ref_config, ref_worker) -> None:  # type: ignore[no-untyped-def]
        aggregator, _, members = setup
        update = make_update(ref_config, ref_worker, aggregator.global_model(), members[0].address, 1,
                             random.Random(4))
        aggregator.submit_update(members[0], 1, update.words, update.proof)
        error = self.expect_revert(aggregator, members, "Wafl__AlreadySubmitted", members[0], 1,
                                   update.words, update.proof)
        assert error.args_ == (1, members[0].address)
        assert aggregator.current_round().accepted == 1

    def test_unregistered_sender(self, setup, w3, ref_config, ref_worker) -> None:  # type: ignore[no-untyped-def]
        aggregator, _, members = setup
        outsider = new_account(w3)
        update = make_update(ref_config, ref_worker, aggregator.global_model(), outsider.address, 1,
                             random.Random(5))
        error = self.expect_revert(aggregator, members, "Wafl__NotParticipant", outsider, 1, update.words,
                                   update.proof)
        assert error.args_ == (outsider.address,)

    def test_lane_out_of_range(self, setup, ref_config, ref_worker) -> None:  # type: ignore[no-untyped-def]
        aggregator, _, members = setup
        update = make_update(ref_config, ref_worker, aggregator.global_model(), members[0].address, 1,
                             random.Random(6))
        words = list(update.words)
        words[2] |= 1 << ref_config.weight_bits  # first headroom bit of the word's first lane
        error = self.expect_revert(aggregator, members, "Wafl__LaneOutOfRange", members[0], 1, words,
                                   update.proof)
        assert error.args_ == (2,)
        words = list(update.words)
        words[-1] |= 1 << 252  # above the last word's lanes
        self.expect_revert(aggregator, members, "Wafl__LaneOutOfRange", members[0], 1, words, update.proof)
        self.expect_revert(aggregator, members, "Wafl__WrongWordCount", members[0], 1, update.words[:-1],
                           update.proof)

    def test_submission_after_deadline_and_finalize_by_anyone(  # type: ignore[no-untyped-def]
        self, setup, w3, ref_config, ref_worker
    ) -> None:
        aggregator, _, members = setup
        rng = random.Random(7)
        global_model = aggregator.global_model()
        first = make_update(ref_config, ref_worker, global_model, members[0].address, 1, rng)
        late = make_update(ref_config, ref_worker, global_model, members[1].address, 1, rng)
        aggregator.submit_update(members[0], 1, first.words, first.proof)
        bystander = new_account(w3)
        with pytest.raises(ContractRevertError) as early:
            aggregator.finalize_round(bystander)
        assert early.value.name == "Wafl__DeadlineNotReached"
        increase_time(w3, ROUND_SECONDS + 1)
        self.expect_revert(aggregator, members, "Wafl__DeadlinePassed", members[1], 1, late.words, late.proof)
        receipt = aggregator.finalize_round(bystander)
        finalized = aggregator.contract.events.RoundFinalized().process_receipt(receipt, errors=DISCARD)
        assert (finalized[0]["args"]["round"], finalized[0]["args"]["accepted"]) == (1, 1)
        assert aggregator.global_model() == fedavg(ref_config, [first.weights])
        assert aggregator.current_round().round == 2


def test_registration_is_admin_only_and_bounded(w3: Web3, ref_config: ModelConfig) -> None:
    admin = new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=1, round_duration=ROUND_SECONDS)
    aggregator = AggregatorClient(w3, deployment)
    stranger = new_account(w3)
    with pytest.raises(ContractRevertError) as denied:
        aggregator.register(stranger, [stranger.address])
    assert denied.value.name == "AccessControlUnauthorizedAccount"
    members = [new_account(w3).address for _ in range(ref_config.max_participants)]
    aggregator.register(admin, members)
    with pytest.raises(ContractRevertError) as full:
        aggregator.register(admin, [stranger.address])
    assert full.value.name == "Wafl__TooManyParticipants"
    assert aggregator.contract.functions.participantCount().call() == ref_config.max_participants


def test_finalize_with_no_update_keeps_the_model(w3: Web3, ref_config: ModelConfig) -> None:
    admin = new_account(w3)
    start = Weights.from_flat(ref_config, [(i % 7) - 3 for i in range(ref_config.n_weights)])
    deployment = deploy(w3, admin, ref_config, quorum=1, round_duration=60, initial_model=start,
                        participants=[new_account(w3)])
    aggregator = AggregatorClient(w3, deployment)
    assert aggregator.global_model() == start
    increase_time(w3, 61)
    aggregator.finalize_round(admin)
    assert aggregator.global_model() == start
    assert aggregator.current_round().round == 2
