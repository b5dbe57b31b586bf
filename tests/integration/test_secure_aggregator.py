"""Secure aggregation on chain (anvil, the production deploy path): masking keys checked on the
curve and registered once, a round's set fixed when the round opens, masked updates whose sum is
the exact sum of the updates (the on-chain model equals the reference FedAvg bit for bit), proofs
for another set, round or slot refused, and a missing member voiding its round and being left
out of the sets until it rejoins. Gas of masked and plain updates is pinned."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import TxReceipt

from tests.conftest import new_account
from tests.integration.test_deploy_cli import run_cli
from tests.support.updates import batch, make_update
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil, increase_time
from wafl.chain.deploy import DeploymentError, deploy
from wafl.chain.tx import ContractRevertError
from wafl.core.config import ModelConfig, load_config
from wafl.core.field import SNARK_FIELD
from wafl.core.fixedpoint import Weights, fedavg, train_step
from wafl.core.packing import pack
from wafl.zk.build import CircuitBuild, build_circuit, development_keys
from wafl.zk.circuit import masked_witness_args
from wafl.zk.masking import IDENTITY, generate_secret, public_key, write_secret
from wafl.zk.prover import Groth16Proof, Prover

CONFIG = "iris-4x3-b3-secagg"
PLAIN_CONFIG = "iris-4x3-b3"
ROUND_SECONDS = 3600

# Whole-transaction gas (receipt gasUsed) measured on anvil (osaka) for iris-4x3-b3(-secagg), 3
# members: calldata (the proof's and the masked words' zero bytes) moves it by a few dozen gas.
GAS_MARGIN = 500
MASKED_UPDATE_GAS = 268_160
MASKED_FINALISING_GAS = 403_600  # also opens the next round: its set's 6 key words enter the round share
PLAIN_UPDATE_GAS = 267_680
PLAIN_FINALISING_GAS = 317_840


@dataclass(frozen=True)
class Member:
    account: LocalAccount
    secret: int
    key: tuple[int, int]

    @property
    def address(self) -> str:
        return self.account.address


@dataclass(frozen=True)
class MaskedUpdate:
    words: list[int]
    proof: Groth16Proof
    weights: Weights


@pytest.fixture(scope="module")
def cfg() -> ModelConfig:
    return load_config(CONFIG)


@pytest.fixture(scope="module")
def build(cfg: ModelConfig) -> CircuitBuild:
    return build_circuit(cfg)


@pytest.fixture(scope="module")
def prover(build: CircuitBuild) -> Iterator[Prover]:
    with Prover(build, development_keys(build)) as worker:
        yield worker


@pytest.fixture(scope="module")
def masking_pairs() -> list[tuple[int, tuple[int, int]]]:
    """Masking secrets and their public keys (each a ZoKrates run), made once for the module."""
    secrets = [generate_secret() for _ in range(5)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        keys = list(pool.map(public_key, secrets))
    return list(zip(secrets, keys, strict=True))


def members_of(w3: Web3, pairs: Sequence[tuple[int, tuple[int, int]]]) -> list[Member]:
    return [Member(new_account(w3), secret, key) for secret, key in pairs]


def secure_federation(
    w3: Web3, cfg: ModelConfig, members: Sequence[Member], *, attesting: bool = True
) -> tuple[AggregatorClient, LocalAccount]:
    """A fresh deployment with `members` registered (and, `attesting`, keyed and attested: round 1 open)."""
    admin = new_account(w3)
    if attesting:
        deployment = deploy(w3, admin, cfg, quorum=cfg.max_participants, round_duration=ROUND_SECONDS,
                            participants=[m.account for m in members],
                            masking_keys={m.address: m.key for m in members})
    else:
        deployment = deploy(w3, admin, cfg, quorum=cfg.max_participants, round_duration=ROUND_SECONDS,
                            participants=[m.address for m in members])
    return AggregatorClient(w3, deployment), admin


def set_keys(cfg: ModelConfig, keys: Sequence[tuple[int, int]]) -> list[int]:
    """A set's keys as RoundMembers lays them out: slot by slot, absent slots the identity."""
    padded = [*keys, *[IDENTITY] * (cfg.set_size - len(keys))]
    return [value for key in padded for value in key]


def masked_update(
    cfg: ModelConfig, prover: Prover, global_model: Weights, round_id: int, keys: list[int], slot: int,
    secret: int, rng: random.Random,
) -> MaskedUpdate:
    x, y = batch(cfg, rng)
    result = prover.prove(masked_witness_args(cfg, global_model, x, y, round_id, keys, slot, secret))
    return MaskedUpdate(result.inputs[: cfg.n_words], result.proof, train_step(cfg, global_model, x, y))


def reverted(name: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> ContractRevertError:
    """`action(*args, **kwargs)` reverts with the custom error `name`."""
    with pytest.raises(ContractRevertError) as raised:
        action(*args, **kwargs)
    assert raised.value.name == name, str(raised.value)
    return raised.value


def events(aggregator: AggregatorClient, receipt: TxReceipt, name: str) -> list[dict[str, Any]]:
    """The arguments of each `name` event in a receipt (RoundMembers has an argument named keys: no dict())."""
    logs = aggregator.contract.events[name]().process_receipt(receipt, errors=DISCARD)
    return [{key: value for key, value in log["args"].items()} for log in logs]


def log_names(aggregator: AggregatorClient, receipt: TxReceipt) -> list[str]:
    """The names of the aggregator's events in a receipt, in log order."""
    by_topic = {
        bytes(Web3.keccak(text=f"{item['name']}({','.join(i['type'] for i in item['inputs'])})")): item["name"]
        for item in aggregator.contract.abi if item["type"] == "event"
    }
    return [by_topic[bytes(log["topics"][0])] for log in receipt["logs"] if bytes(log["topics"][0]) in by_topic]


# ---- without proofs --------------------------------------------------------------------------


def test_masking_keys_are_points_of_the_curve_registered_once(
    w3: Web3, cfg: ModelConfig, masking_pairs: list[tuple[int, tuple[int, int]]]
) -> None:
    members = members_of(w3, masking_pairs[:2])
    aggregator, _ = secure_federation(w3, cfg, members, attesting=False)
    assert aggregator.secure_aggregation() and aggregator.set_size() == cfg.set_size == 3
    first = members[0]
    x, y = first.key
    reverted("Wafl__NotParticipant", aggregator.register_masking_key, new_account(w3), first.key)
    for bad in [(x, y + 1), IDENTITY, (0, SNARK_FIELD - 1), (x + SNARK_FIELD, y), (x, y + SNARK_FIELD),
                (SNARK_FIELD, 1)]:
        error = reverted("Wafl__InvalidMaskingKey", aggregator.register_masking_key, first.account, bad)
        assert error.args_ == bad
    assert aggregator.masking_key(first.address) is None
    receipt = aggregator.register_masking_key(first.account, first.key)
    assert events(aggregator, receipt, "MaskingKeyRegistered") == [{"participant": first.address, "x": x, "y": y}]
    assert aggregator.masking_key(first.address) == first.key
    for again in (first.key, members[1].key):
        error = reverted("Wafl__MaskingKeyAlreadySet", aggregator.register_masking_key, first.account, again)
        assert error.args_ == (first.address,)
    assert aggregator.masking_key(first.address) == first.key


def test_attesting_needs_a_masking_key(
    w3: Web3, cfg: ModelConfig, masking_pairs: list[tuple[int, tuple[int, int]]]
) -> None:
    members = members_of(w3, masking_pairs[:2])
    aggregator, _ = secure_federation(w3, cfg, members, attesting=False)
    error = reverted("Wafl__NoMaskingKey", aggregator.attest_keys, members[0].account)
    assert error.args_ == (members[0].address,)
    aggregator.register_masking_key(members[0].account, members[0].key)
    aggregator.attest_keys(members[0].account)
    assert aggregator.has_attested(members[0].address)
    # Participants deployed as accounts attest on the spot: each needs its key.
    with pytest.raises(DeploymentError, match="masking key"):
        deploy(w3, new_account(w3), cfg, quorum=3, round_duration=ROUND_SECONDS,
               participants=[members[1].account, new_account(w3)], masking_keys={members[1].address: members[1].key})


def test_a_plain_aggregator_refuses_masking_keys(
    w3: Web3, masking_pairs: list[tuple[int, tuple[int, int]]]
) -> None:
    plain = load_config(PLAIN_CONFIG)
    participant = new_account(w3)
    deployment = deploy(w3, new_account(w3), plain, quorum=1, round_duration=ROUND_SECONDS,
                        participants=[participant])
    aggregator = AggregatorClient(w3, deployment)
    assert not aggregator.secure_aggregation() and aggregator.set_size() == 0
    reverted("Wafl__NotSecureAggregation", aggregator.register_masking_key, participant, masking_pairs[0][1])
    assert aggregator.round_members() == []
    assert aggregator.participants() == [participant.address]


def test_the_round_set_is_fixed_when_the_round_opens(
    w3: Web3, cfg: ModelConfig, masking_pairs: list[tuple[int, tuple[int, int]]]
) -> None:
    first, second, late = members_of(w3, masking_pairs[:3])
    aggregator, admin = secure_federation(w3, cfg, [first, second], attesting=False)
    for member in (first, second):
        aggregator.register_masking_key(member.account, member.key)
    receipt = aggregator.attest_keys(second.account)
    assert aggregator.current_round().round == 0
    receipt = aggregator.attest_keys(first.account)  # the last attestation opens round 1
    # RoundMembers just before RoundOpened: registration order, the absent third slot (0, 1).
    assert log_names(aggregator, receipt)[-2:] == ["RoundMembers", "RoundOpened"]
    expected_keys = set_keys(cfg, [first.key, second.key])
    assert expected_keys[-2:] == [0, 1]
    assert events(aggregator, receipt, "RoundMembers") == [
        {"round": 1, "members": [first.address, second.address], "keys": expected_keys}]
    assert aggregator.round_members() == [first.address, second.address]

    # Registered, keyed and attested during round 1: not in its set.
    aggregator.register(admin, [late.address])
    aggregator.register_masking_key(late.account, late.key)
    aggregator.attest_keys(late.account)
    assert aggregator.participants() == [first.address, second.address, late.address]
    assert aggregator.round_members() == [first.address, second.address]
    words = [0] * cfg.n_words
    error = reverted("Wafl__NotInRoundSet", aggregator.submit_update, late.account, 1, words, [0] * 8)
    assert error.args_ == (1, late.address)
    reverted("Wafl__NotParticipant", aggregator.submit_update, new_account(w3), 1, words, [0] * 8)
    reverted("Wafl__WrongWordCount", aggregator.submit_update, first.account, 1, words[:-1], [0] * 8)

    # Rejoining is for the excluded.
    error = reverted("Wafl__NotExcluded", aggregator.rejoin, first.account)
    assert error.args_ == (first.address,)
    reverted("Wafl__NotParticipant", aggregator.rejoin, new_account(w3))

    # Nothing submitted: the round is voided, nobody excluded, and round 2's set has all three.
    model = aggregator.global_words()
    increase_time(w3, ROUND_SECONDS + 1)
    receipt = aggregator.finalize_round(admin)
    assert events(aggregator, receipt, "RoundVoided") == [
        {"round": 1, "missing": [first.address, second.address], "excluded": False}]
    assert events(aggregator, receipt, "RoundFinalized") == [{"round": 1, "accepted": 0}]
    assert not aggregator.is_excluded(first.address) and not aggregator.is_excluded(second.address)
    assert aggregator.global_words() == model
    assert events(aggregator, receipt, "RoundMembers") == [
        {"round": 2, "members": [first.address, second.address, late.address],
         "keys": set_keys(cfg, [first.key, second.key, late.key])}]
    assert aggregator.round_members() == [first.address, second.address, late.address]


def test_a_lone_member_cannot_submit(
    w3: Web3, cfg: ModelConfig, masking_pairs: list[tuple[int, tuple[int, int]]]
) -> None:
    """Its masked update would be its update: refused before the proof is even looked at."""
    (alone,) = members_of(w3, masking_pairs[:1])
    aggregator, _ = secure_federation(w3, cfg, [alone])
    assert aggregator.round_members() == [alone.address]
    error = reverted("Wafl__SetTooSmall", aggregator.submit_update, alone.account, 1, [0] * cfg.n_words, [0] * 8)
    assert error.args_ == (1, 1)


def test_attest_registers_the_masking_key_of_its_file(
    anvil: Anvil, w3: Web3, cfg: ModelConfig, masking_pairs: list[tuple[int, tuple[int, int]]], tmp_path: Path
) -> None:
    """`wafl attest --masking-key FILE`: the key goes on chain first; a missing, unreadable or
    foreign file is one line and exit status 2."""
    member = members_of(w3, masking_pairs[:1])[0]
    aggregator, _ = secure_federation(w3, cfg, [member], attesting=False)
    out = tmp_path / "deployment.json"
    aggregator.deployment.save(out)
    key_file = tmp_path / "member.key"
    key_file.write_text(member.account.key.hex())
    secret_file, other_file, garbled = tmp_path / "masking.secret", tmp_path / "other.secret", tmp_path / "garbled"
    write_secret(secret_file, member.secret)
    write_secret(other_file, masking_pairs[1][0])
    garbled.write_text("not a number\n")

    def attest(*extra: str, env: dict[str, str] | None = None) -> Any:
        return run_cli("attest", "--deployment", str(out), "--rpc-url", anvil.url, "--key-file", str(key_file),
                       *extra, env={"WAFL_MASKING_KEY_FILE": "", **(env or {})})

    for extra, message in [((), "--masking-key FILE"), (("--masking-key", str(tmp_path / "absent")), "absent"),
                           (("--masking-key", str(garbled)), "does not hold one decimal integer")]:
        proc = attest(*extra)
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    assert aggregator.masking_key(member.address) is None and not aggregator.has_attested(member.address)

    proc = attest(env={"WAFL_MASKING_KEY_FILE": str(secret_file)})  # the provers' variable will do
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["already_attested"] is False
    assert str(member.secret) not in proc.stdout + proc.stderr
    assert aggregator.masking_key(member.address) == member.key and aggregator.has_attested(member.address)
    assert aggregator.current_round().round == 1

    proc = attest("--masking-key", str(other_file))
    assert proc.returncode == 2 and "registered another masking key" in proc.stderr, proc.stderr
    again = attest("--masking-key", str(secret_file))
    assert again.returncode == 0 and json.loads(again.stdout)["already_attested"] is True


# ---- with masked proofs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def federation(
    w3: Web3, cfg: ModelConfig, masking_pairs: list[tuple[int, tuple[int, int]]]
) -> tuple[AggregatorClient, LocalAccount, list[Member]]:
    members = members_of(w3, masking_pairs[:3])
    aggregator, admin = secure_federation(w3, cfg, members)
    return aggregator, admin, members


def test_masked_updates_sum_to_the_reference_fedavg(
    federation: tuple[AggregatorClient, LocalAccount, list[Member]], cfg: ModelConfig, prover: Prover,
) -> None:
    aggregator, _, members = federation
    rng = random.Random(21)
    keys = set_keys(cfg, [m.key for m in members])
    assert aggregator.round_members() == [m.address for m in members]
    gas = []
    for round_id in (1, 2):
        global_model = aggregator.global_model()
        updates = [masked_update(cfg, prover, global_model, round_id, keys, slot, m.secret, rng)
                   for slot, m in enumerate(members)]
        for member, update in zip(members, updates, strict=True):
            assert update.words != pack(cfg, update.weights.flat())  # what the chain sees is masked
            receipt = aggregator.submit_update(member.account, round_id, update.words, update.proof)
            assert events(aggregator, receipt, "UpdateAccepted")[0]["participant"] == member.address
            gas.append(int(receipt["gasUsed"]))
        # The whole set submitted: the masks cancelled, the sum is exact.
        assert aggregator.global_model() == fedavg(cfg, [u.weights for u in updates])
        assert aggregator.current_round().round == round_id + 1
    updates_gas, finalising_gas = [g for i, g in enumerate(gas) if i % 3 != 2], gas[2::3]
    assert all(abs(g - MASKED_UPDATE_GAS) <= GAS_MARGIN for g in updates_gas), gas
    assert all(abs(g - MASKED_FINALISING_GAS) <= GAS_MARGIN for g in finalising_gas), gas


def test_proofs_for_another_set_round_or_slot_are_refused(
    federation: tuple[AggregatorClient, LocalAccount, list[Member]], cfg: ModelConfig, prover: Prover,
    masking_pairs: list[tuple[int, tuple[int, int]]],
) -> None:
    aggregator, _, members = federation
    rng = random.Random(22)
    round_id = aggregator.current_round().round
    global_model = aggregator.global_model()
    keys = set_keys(cfg, [m.key for m in members])
    first = members[0]
    stranger_key = masking_pairs[3][1]
    forged = {
        "another set": masked_update(cfg, prover, global_model, round_id,
                                     set_keys(cfg, [first.key, members[1].key, stranger_key]), 0, first.secret, rng),
        "another round": masked_update(cfg, prover, global_model, round_id - 1, keys, 0, first.secret, rng),
        "another slot": masked_update(cfg, prover, global_model, round_id, keys, 1, members[1].secret, rng),
    }
    before = (aggregator.current_round(), aggregator.global_words())
    for name, update in forged.items():
        error = reverted("Wafl__InvalidProof", aggregator.submit_update, first.account, round_id, update.words,
                         update.proof, gas=2_000_000)
        assert error.receipt is not None, name
    # Words at or above the field order: refused by the verifier, not reduced.
    honest = masked_update(cfg, prover, global_model, round_id, keys, 0, first.secret, rng)
    lifted = [honest.words[0] + SNARK_FIELD, *honest.words[1:]]
    error = reverted("WaflVerifier__InputNotInField", aggregator.submit_update, first.account, round_id, lifted,
                     honest.proof)
    assert error.args_ == (0,)
    assert (aggregator.current_round(), aggregator.global_words()) == before
    aggregator.submit_update(first.account, round_id, honest.words, honest.proof)
    error = reverted("Wafl__AlreadySubmitted", aggregator.submit_update, first.account, round_id, honest.words,
                     honest.proof)
    assert error.args_ == (round_id, first.address)


def test_a_missing_member_voids_the_round_and_stays_out_until_it_rejoins(
    federation: tuple[AggregatorClient, LocalAccount, list[Member]], cfg: ModelConfig, prover: Prover,
) -> None:
    aggregator, admin, members = federation
    w3 = aggregator.w3
    rng = random.Random(23)
    first, second, missing = members
    voided = aggregator.current_round().round  # the previous test's round: `first` has submitted
    assert aggregator.has_submitted(first.address)
    keys = set_keys(cfg, [m.key for m in members])
    model = aggregator.global_words()
    update = masked_update(cfg, prover, aggregator.global_model(), voided, keys, 1, second.secret, rng)
    aggregator.submit_update(second.account, voided, update.words, update.proof)
    increase_time(w3, ROUND_SECONDS + 1)
    receipt = aggregator.finalize_round(admin)
    assert events(aggregator, receipt, "RoundVoided") == [
        {"round": voided, "missing": [missing.address], "excluded": True}]
    assert events(aggregator, receipt, "RoundFinalized") == [{"round": voided, "accepted": 0}]
    assert aggregator.global_words() == model
    assert aggregator.is_excluded(missing.address)

    # The next set leaves it out (its slot is absent) and completes without it.
    round_id = voided + 1
    two = set_keys(cfg, [first.key, second.key])
    assert events(aggregator, receipt, "RoundMembers") == [
        {"round": round_id, "members": [first.address, second.address], "keys": two}]
    global_model = aggregator.global_model()
    stray = masked_update(cfg, prover, global_model, round_id, keys, 2, missing.secret, rng)
    error = reverted("Wafl__NotInRoundSet", aggregator.submit_update, missing.account, round_id, stray.words,
                     stray.proof)
    assert error.args_ == (round_id, missing.address)
    updates = [masked_update(cfg, prover, global_model, round_id, two, slot, m.secret, rng)
               for slot, m in enumerate((first, second))]
    for member, update in zip((first, second), updates, strict=True):
        receipt = aggregator.submit_update(member.account, round_id, update.words, update.proof)
    assert events(aggregator, receipt, "RoundFinalized") == [{"round": round_id, "accepted": 2}]
    assert aggregator.global_model() == fedavg(cfg, [u.weights for u in updates])

    # Rejoining during a round: in the set of the round after it.
    during = round_id + 1
    receipt = aggregator.rejoin(missing.account)
    assert events(aggregator, receipt, "MemberRejoined") == [{"participant": missing.address, "fromRound": during + 1}]
    assert not aggregator.is_excluded(missing.address)
    assert aggregator.round_members() == [first.address, second.address]
    global_model = aggregator.global_model()
    for slot, member in enumerate((first, second)):
        update = masked_update(cfg, prover, global_model, during, two, slot, member.secret, rng)
        receipt = aggregator.submit_update(member.account, during, update.words, update.proof)
    assert events(aggregator, receipt, "RoundMembers") == [
        {"round": during + 1, "members": [m.address for m in members], "keys": keys}]
    assert aggregator.round_members() == [m.address for m in members]


def test_the_verifier_binds_the_set_keys_and_the_slot(
    federation: tuple[AggregatorClient, LocalAccount, list[Member]], cfg: ModelConfig, prover: Prover,
) -> None:
    """The masked layout (masked words, global words, round, set keys, index): the keys enter the
    round share (2 * setSize words, each below the field order), the slot is the update's tag."""
    aggregator, _, members = federation
    deployment = aggregator.deployment
    verifier = aggregator.w3.eth.contract(address=Web3.to_checksum_address(deployment.verifier_address),
                                          abi=deployment.verifier_abi)
    assert verifier.functions.setSize().call() == cfg.set_size
    round_id = aggregator.current_round().round
    global_words = aggregator.global_words()
    keys = set_keys(cfg, [m.key for m in members])
    update = masked_update(cfg, prover, aggregator.global_model(), round_id, keys, 2, members[2].secret,
                           random.Random(25))
    proof = update.proof.as_uint256x8()
    share = verifier.functions.roundShare(global_words, round_id, keys).call()
    assert verifier.functions.verifyUpdate(share, update.words, 2, proof).call()
    assert not verifier.functions.verifyUpdate(share, update.words, 1, proof).call()
    other = verifier.functions.roundShare(global_words, round_id, [*keys[:4], 0, 1]).call()
    assert not verifier.functions.verifyUpdate(other, update.words, 2, proof).call()

    def refused(call: Any, name: str, args: tuple[int, ...]) -> None:
        with pytest.raises(ContractLogicError) as raised:
            call.call()
        error = aggregator.decoder.from_exception(raised.value)
        assert (error.name, error.args_) == (name, args)

    n, size = cfg.n_words, cfg.set_size
    refused(verifier.functions.roundShare(global_words, round_id, keys[:-2]), "WaflVerifier__WrongInputCount",
            (2 * size, 2 * size - 2))
    refused(verifier.functions.roundShare(global_words, round_id, []), "WaflVerifier__WrongInputCount", (2 * size, 0))
    for i in range(2 * size):
        lifted = list(keys)
        lifted[i] += SNARK_FIELD
        refused(verifier.functions.roundShare(global_words, round_id, lifted), "WaflVerifier__InputNotInField",
                (2 * n + 1 + i,))
    refused(verifier.functions.roundShare([global_words[0] + SNARK_FIELD, *global_words[1:]], round_id, keys),
            "WaflVerifier__InputNotInField", (n,))
    refused(verifier.functions.verifyUpdate(share, update.words, 2 + SNARK_FIELD, proof),
            "WaflVerifier__InputNotInField", (2 * n + 1 + 2 * size,))


def test_plain_update_gas_for_comparison(w3: Web3) -> None:
    """The same model without secure aggregation: what the masks cost on chain."""
    plain = load_config(PLAIN_CONFIG)
    members = [new_account(w3) for _ in range(3)]
    deployment = deploy(w3, new_account(w3), plain, quorum=3, round_duration=ROUND_SECONDS, participants=members)
    aggregator = AggregatorClient(w3, deployment)
    rng = random.Random(24)
    with Prover(build_circuit(plain)) as worker:
        global_model = aggregator.global_model()
        updates = [make_update(plain, worker, global_model, m.address, 1, rng) for m in members]
    gas = [int(aggregator.submit_update(member, 1, update.words, update.proof)["gasUsed"])
           for member, update in zip(members, updates, strict=True)]
    assert all(abs(g - PLAIN_UPDATE_GAS) <= GAS_MARGIN for g in gas[:2]), gas
    assert abs(gas[2] - PLAIN_FINALISING_GAS) <= GAS_MARGIN, gas
