"""Keys on chain, tried as an attacker would: attestation before round 1, proofs from another
setup's trapdoor, invalid points with a huge gas limit, public inputs at or above the field
order, development keys on a chain that is not local, a verifier that does not hold the keys."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from tests.conftest import new_account
from tests.support.updates import make_update
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil
from wafl.chain.deploy import DeploymentError, deploy
from wafl.chain.tx import ContractRevertError, ErrorDecoder
from wafl.core.config import ModelConfig
from wafl.core.field import SNARK_FIELD
from wafl.zk.build import CircuitBuild, development_keys
from wafl.zk.keys import KeySet, load_keys, make_development_keys, vk_hash
from wafl.zk.prover import Prover

# The bound: no invalid proof may cost more than this, whatever the gas limit.
MAX_INVALID_PROOF_GAS = 350_000
HUGE_GAS_LIMIT = 10_000_000


@pytest.fixture(scope="module")
def other_keys(ref_build: CircuitBuild, tmp_path_factory: pytest.TempPathFactory) -> KeySet:
    """A second, independent setup of the same circuit: its holder knows its trapdoor."""
    directory = tmp_path_factory.mktemp("other-keys") / "keys"
    return make_development_keys(
        ref_build.r1cs, directory, config=ref_build.config.name, circuit_sha256=ref_build.circuit_sha256
    )


def test_round_one_opens_only_when_every_participant_attested(w3: Web3, ref_config: ModelConfig,
                                                              ref_worker: Prover) -> None:
    admin = new_account(w3)
    members = [new_account(w3) for _ in range(3)]
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=3600,
                        participants=[m.address for m in members])
    aggregator = AggregatorClient(w3, deployment)
    assert aggregator.verification_key_hash() == deployment.vk_hash
    assert aggregator.current_round().round == 0
    update = make_update(ref_config, ref_worker, aggregator.global_model(), members[0].address, 1,
                         random.Random(1))

    with pytest.raises(ContractRevertError) as wrong:
        aggregator.attest_keys(members[0], "0x" + "11" * 32)
    assert wrong.value.name == "Wafl__WrongKeyHash"
    with pytest.raises(ContractRevertError) as outsider:
        aggregator.attest_keys(new_account(w3))
    assert outsider.value.name == "Wafl__NotParticipant"

    for count, member in enumerate(members[:2], start=1):
        receipt = aggregator.attest_keys(member)
        event = aggregator.contract.events.KeysAttested().process_receipt(receipt, errors=DISCARD)[0]["args"]
        assert (event["participant"], event["attested"], event["registered"]) == (member.address, count, 3)
        assert "0x" + bytes(event["keyHash"]).hex() == deployment.vk_hash
        assert aggregator.current_round().round == 0
        with pytest.raises(ContractRevertError) as early:
            aggregator.submit_update(members[0], 1, update.words, update.proof)
        assert early.value.name == "Wafl__KeysNotAttested"
        assert early.value.args_ == (count, 3)
    with pytest.raises(ContractRevertError) as not_open:
        aggregator.finalize_round(admin)
    assert not_open.value.name == "Wafl__KeysNotAttested"
    with pytest.raises(ContractRevertError) as again:
        aggregator.attest_keys(members[0])
    assert again.value.name == "Wafl__AlreadyAttested"

    receipt = aggregator.attest_keys(members[2])  # the last attestation opens round 1
    opened = aggregator.contract.events.RoundOpened().process_receipt(receipt, errors=DISCARD)
    assert opened[0]["args"]["round"] == 1
    aggregator.submit_update(members[0], 1, update.words, update.proof)

    # Registered later: no submission before its own attestation.
    late = new_account(w3)
    aggregator.register(admin, [late.address])
    late_update = make_update(ref_config, ref_worker, aggregator.global_model(), late.address, 1,
                              random.Random(2))
    with pytest.raises(ContractRevertError) as unattested:
        aggregator.submit_update(late, 1, late_update.words, late_update.proof)
    assert unattested.value.name == "Wafl__NotAttested"
    aggregator.attest_keys(late)
    aggregator.submit_update(late, 1, late_update.words, late_update.proof)


def test_open_first_round_after_a_revocation(w3: Web3, ref_config: ModelConfig) -> None:
    admin = new_account(w3)
    attesting, silent = new_account(w3), new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=1, round_duration=3600,
                        participants=[attesting.address, silent.address])
    aggregator = AggregatorClient(w3, deployment)
    aggregator.attest_keys(attesting)
    with pytest.raises(ContractRevertError) as missing:
        aggregator.open_first_round(admin)
    assert missing.value.name == "Wafl__KeysNotAttested"
    role = aggregator.contract.functions.PARTICIPANT_ROLE().call()
    from wafl.chain.tx import send

    send(w3, admin, aggregator.contract.functions.revokeRole(role, silent.address), aggregator.decoder)
    aggregator.open_first_round(new_account(w3))
    assert aggregator.current_round().round == 1
    with pytest.raises(ContractRevertError) as started:
        aggregator.open_first_round(admin)
    assert started.value.name == "Wafl__AlreadyStarted"


@pytest.fixture(scope="module")
def federation(w3: Web3, ref_config: ModelConfig) -> tuple[AggregatorClient, list[LocalAccount]]:
    admin = new_account(w3)
    members = [new_account(w3) for _ in range(2)]
    deployment = deploy(w3, admin, ref_config, quorum=2, round_duration=3600, participants=members)
    return AggregatorClient(w3, deployment), members


def test_a_proof_from_another_setup_is_rejected(
    federation: tuple[AggregatorClient, list[LocalAccount]], ref_config: ModelConfig, ref_build: CircuitBuild,
    other_keys: KeySet, ref_worker: Prover,
) -> None:
    """Whoever holds another setup's trapdoor can prove anything under that setup: here an
    honest relation proven under other keys, which the deployment's verifier must refuse."""
    aggregator, members = federation
    assert other_keys.vk_hash != aggregator.verification_key_hash()
    with Prover(ref_build, other_keys) as forger:
        forged = make_update(ref_config, forger, aggregator.global_model(), members[0].address, 1,
                             random.Random(3))
        assert forger.verify(forged.proof, [*aggregator.global_words(), 1, *forged.words,
                                            int(members[0].address, 16)])
    assert not ref_worker.verify(forged.proof, [*aggregator.global_words(), 1, *forged.words,
                                                int(members[0].address, 16)])
    with pytest.raises(ContractRevertError) as rejected:
        aggregator.submit_update(members[0], 1, forged.words, forged.proof, gas=HUGE_GAS_LIMIT)
    assert rejected.value.name == "Wafl__InvalidProof"


def test_invalid_points_cost_bounded_gas_whatever_the_limit(
    federation: tuple[AggregatorClient, list[LocalAccount]], ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    aggregator, members = federation
    good = make_update(ref_config, ref_worker, aggregator.global_model(), members[1].address, 1,
                       random.Random(4))
    flat = good.proof.as_uint256x8()
    cases = {
        "A off the curve": [flat[0] ^ 1, *flat[1:]],
        "B off the curve": [*flat[:2], flat[2] ^ 1, *flat[3:]],
        "C off the curve": [*flat[:6], flat[6], flat[7] ^ 1],
        "A at infinity encoded badly": [0, 1, *flat[2:]],
        "valid points, wrong proof": [*flat[6:8], *flat[2:6], *flat[0:2]],
    }
    for name, proof in cases.items():
        with pytest.raises(ContractRevertError) as reverted:
            aggregator.submit_update(members[1], 1, good.words, proof, gas=HUGE_GAS_LIMIT)
        assert reverted.value.name == "Wafl__InvalidProof", name
        assert reverted.value.receipt is not None, "mined, not refused by an estimate"
        gas = int(reverted.value.receipt["gasUsed"])
        assert 200_000 <= gas <= MAX_INVALID_PROOF_GAS, (name, gas)
    aggregator.submit_update(members[1], 1, good.words, good.proof)


def test_public_inputs_at_or_above_the_field_order_are_refused(
    federation: tuple[AggregatorClient, list[LocalAccount]], ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    """ecMul reduces its scalar: without the check, word + r verifies exactly like word."""
    aggregator, members = federation
    w3 = aggregator.w3
    deployment = aggregator.deployment
    verifier = w3.eth.contract(address=Web3.to_checksum_address(deployment.verifier_address),
                               abi=deployment.verifier_abi)
    decoder = ErrorDecoder(deployment.verifier_abi)
    global_words = aggregator.global_words()
    round_id = aggregator.current_round().round
    sender = members[0]
    update = make_update(ref_config, ref_worker, aggregator.global_model(), sender.address, round_id,
                         random.Random(5))
    share = verifier.functions.roundShare(global_words, round_id, []).call()
    flat = update.proof.as_uint256x8()
    tag = int(sender.address, 16)  # plain updates: the sender
    assert verifier.functions.verifyUpdate(share, update.words, tag, flat).call()

    def refused(call: object, index: int) -> None:
        with pytest.raises(ContractLogicError) as raised:
            call.call()  # type: ignore[attr-defined]
        error = decoder.from_exception(raised.value)
        assert (error.name, error.args_) == ("WaflVerifier__InputNotInField", (index,))

    n = ref_config.n_words
    for i in range(n):
        shifted = list(update.words)
        shifted[i] += SNARK_FIELD
        refused(verifier.functions.verifyUpdate(share, shifted, tag, flat), n + 1 + i)
        lifted = list(global_words)
        lifted[i] += SNARK_FIELD
        refused(verifier.functions.roundShare(lifted, round_id, []), i)
    refused(verifier.functions.roundShare(global_words, round_id + SNARK_FIELD, []), n)
    refused(verifier.functions.verifyUpdate(share, update.words, tag + SNARK_FIELD, flat), 2 * n + 1)
    for value in (SNARK_FIELD, 2**256 - 1):
        words = list(update.words)
        words[0] = value
        refused(verifier.functions.verifyUpdate(share, words, tag, flat), n + 1)


def test_every_public_input_changed_fails(
    federation: tuple[AggregatorClient, list[LocalAccount]], ref_config: ModelConfig, ref_worker: Prover,
) -> None:
    aggregator, members = federation
    round_id = aggregator.current_round().round
    update = make_update(ref_config, ref_worker, aggregator.global_model(), members[0].address, round_id,
                         random.Random(6))
    inputs = [*aggregator.global_words(), round_id, *update.words, int(members[0].address, 16)]
    assert ref_worker.verify(update.proof, inputs)
    for i in range(len(inputs)):
        changed = list(inputs)
        changed[i] = (changed[i] + 1) % SNARK_FIELD
        assert not ref_worker.verify(update.proof, changed), i


def test_deployment_records_the_keys_the_verifier_holds(
    federation: tuple[AggregatorClient, list[LocalAccount]], ref_build: CircuitBuild,
) -> None:
    aggregator, _ = federation
    deployment = aggregator.deployment
    keys = development_keys(ref_build)
    verifier = aggregator.w3.eth.contract(address=Web3.to_checksum_address(deployment.verifier_address),
                                          abi=deployment.verifier_abi)
    on_chain = "0x" + bytes(verifier.functions.keyHash().call()).hex()
    assert on_chain == deployment.vk_hash == keys.vk_hash == vk_hash(keys.verification_key)
    assert aggregator.verification_key_hash() == on_chain
    assert deployment.keys_kind == "development"
    assert deployment.circuit_sha256 == ref_build.circuit_sha256
    assert deployment.transcript_sha256 is None


def test_development_keys_are_refused_on_a_chain_that_is_not_local(ref_config: ModelConfig) -> None:
    with Anvil(chain_id=11155111) as node:
        w3 = node.web3()
        admin = new_account(w3)
        with pytest.raises(DeploymentError, match="refusing development keys on chain 11155111"):
            deploy(w3, admin, ref_config, quorum=1, round_duration=60)
        allowed = deploy(w3, admin, ref_config, quorum=1, round_duration=60, allow_development_keys=True)
        assert allowed.keys_kind == "development"


def test_keys_of_another_circuit_are_refused(w3: Web3, ref_config: ModelConfig, tmp_path: Path) -> None:
    from wafl.core.config import load_config
    from wafl.zk.build import build_circuit

    wine_keys = development_keys(build_circuit(load_config("wine-13x3-b16")))
    with pytest.raises(DeploymentError, match="another circuit"):
        deploy(w3, new_account(w3), ref_config, quorum=1, round_duration=60, keys=wine_keys)
    assert load_keys(wine_keys.directory).vk_hash == wine_keys.vk_hash
