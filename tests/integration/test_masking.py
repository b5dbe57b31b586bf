"""The secure-aggregation circuit (docs/design.md section 12) on iris-4x3-b3-secagg, proved and
checked by the real prover (zokrates-js witness, groth16py proof, snarkjs verification).

- the keys are ZoKrates' own Baby Jubjub arithmetic: G spans the prime subgroup;
- a member's public inputs are (masked words, global words, round, the set's keys, its slot),
  the masked words being packed update + the signed Poseidon masks towards each present peer;
- the masks of a whole set cancel: the sum of its members' words is the sum of their updates;
- an absent slot masks nothing; the same data under other keys gives other words;
- a member that does not hold its slot's secret, or claims a slot outside the set, cannot prove;
- the plain circuits are untouched by the flag, and the masked one's size is pinned.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from tests.support.updates import batch
from wafl.core.config import load_config
from wafl.core.field import SNARK_FIELD
from wafl.core.fixedpoint import Weights, train_step
from wafl.core.packing import pack
from wafl.zk import masking
from wafl.zk.build import CircuitBuild, build_circuit, development_keys
from wafl.zk.circuit import masked_witness_args
from wafl.zk.masking import IDENTITY, SUBGROUP_ORDER, MaskingKeyError, generate_secret, pair_masks, public_key
from wafl.zk.prover import Prover, UnsatisfiedConstraintError

CONFIG = load_config("iris-4x3-b3-secagg")
ROUND = 7
# zokrates-js 1.1.9: the plain iris circuit (1,966) plus two Baby Jubjub scalar multiplications
# by a public point (~11,500 each), one by G (~3,300) and 2 x 2 Poseidon hashes (~262 each).
MASKED_IRIS_CONSTRAINTS = 28_572


@pytest.fixture(scope="module")
def build() -> CircuitBuild:
    return build_circuit(CONFIG)


@pytest.fixture(scope="module")
def prover(build: CircuitBuild) -> Iterator[Prover]:
    with Prover(build, development_keys(build)) as started:
        yield started


@pytest.fixture(scope="module")
def members() -> list[tuple[int, tuple[int, int]]]:
    secrets = [generate_secret() for _ in range(3)]
    return [(secret, public_key(secret)) for secret in secrets]


def key_words(keys: list[tuple[int, int]]) -> list[int]:
    padded = keys + [IDENTITY] * (CONFIG.set_size - len(keys))
    return [coordinate for key in padded for coordinate in key]


def test_keys_are_in_the_prime_subgroup() -> None:
    secret = generate_secret()
    pk = public_key(secret)
    assert pk != IDENTITY and 0 < secret < SUBGROUP_ORDER
    # (s + order) G = s G: ZoKrates' generator spans the subgroup of that prime order, so no key
    # (and no shared point) falls into a small subgroup. masking.mjs itself takes any field element.
    assert masking._run(["public-key"], {"secret": str(secret + SUBGROUP_ORDER)}) == {"x": str(pk[0]), "y": str(pk[1])}
    with pytest.raises(MaskingKeyError):
        public_key(SUBGROUP_ORDER)


def test_a_full_set_cancels_its_masks_and_each_word_is_update_plus_signed_masks(
    build: CircuitBuild, prover: Prover, members: list[tuple[int, tuple[int, int]]]
) -> None:
    assert build.constraints == MASKED_IRIS_CONSTRAINTS
    n = CONFIG.n_words
    keys = [pk for _, pk in members]
    rng = random.Random(12)
    global_model = Weights.zeros(CONFIG)
    sums, packed_sums = [0] * n, [0] * n
    for slot, (secret, _) in enumerate(members):
        x, y = batch(CONFIG, rng)
        packed = pack(CONFIG, train_step(CONFIG, global_model, x, y).flat())
        result = prover.prove(masked_witness_args(CONFIG, global_model, x, y, ROUND, key_words(keys), slot, secret))
        words = result.inputs[:n]
        assert result.inputs[n:] == [*pack(CONFIG, global_model.flat()), ROUND, *key_words(keys), slot]
        expected = list(packed)
        for peer_slot, peer in enumerate(keys):
            if peer_slot == slot:
                continue
            sign = 1 if peer_slot > slot else -1
            for w, mask in enumerate(pair_masks(secret, peer, ROUND, n)):
                expected[w] = (expected[w] + sign * mask) % SNARK_FIELD
        assert words == expected
        assert words != packed  # what the chain sees is not the update
        for w in range(n):
            sums[w] = (sums[w] + words[w]) % SNARK_FIELD
            packed_sums[w] += packed[w]
    assert sums == packed_sums  # exact: the lane sums stay below the field


def test_absent_slots_mask_nothing_and_other_keys_give_other_words(
    prover: Prover, members: list[tuple[int, tuple[int, int]]]
) -> None:
    n = CONFIG.n_words
    rng = random.Random(5)
    global_model = Weights.zeros(CONFIG)
    x, y = batch(CONFIG, rng)
    packed = pack(CONFIG, train_step(CONFIG, global_model, x, y).flat())
    (secret, pk), (_, peer), _ = members
    two = prover.prove(masked_witness_args(CONFIG, global_model, x, y, ROUND, key_words([pk, peer]), 0, secret))
    masks = pair_masks(secret, peer, ROUND, n)
    assert two.inputs[:n] == [(p + m) % SNARK_FIELD for p, m in zip(packed, masks, strict=True)]
    other_secret, other_peer = generate_secret(), public_key(generate_secret())
    other = prover.prove(masked_witness_args(
        CONFIG, global_model, x, y, ROUND, key_words([public_key(other_secret), other_peer]), 0, other_secret))
    assert other.inputs[:n] != two.inputs[:n]
    # A later round masks the same update differently: a stale round's words are other words.
    later = prover.prove(masked_witness_args(CONFIG, global_model, x, y, ROUND + 1, key_words([pk, peer]), 0, secret))
    assert later.inputs[:n] != two.inputs[:n]


def test_a_member_without_its_slots_secret_or_outside_the_set_cannot_prove(
    prover: Prover, members: list[tuple[int, tuple[int, int]]]
) -> None:
    rng = random.Random(9)
    global_model = Weights.zeros(CONFIG)
    x, y = batch(CONFIG, rng)
    keys = key_words([pk for _, pk in members])
    (secret0, _), (secret1, _), _ = members
    with pytest.raises(UnsatisfiedConstraintError):  # slot 0 holds member 0's key
        prover.prove(masked_witness_args(CONFIG, global_model, x, y, ROUND, keys, 0, secret1))
    args = masked_witness_args(CONFIG, global_model, x, y, ROUND, keys, 0, secret0)
    args[3] = str(CONFIG.set_size)  # no slot of the set
    with pytest.raises(UnsatisfiedConstraintError):
        prover.prove(args)


def test_the_flag_leaves_the_plain_circuits_alone() -> None:
    plain = load_config("iris-4x3-b3")
    assert "secure_aggregation" not in plain.canonical_json()
    assert build_circuit(plain).constraints == 1_966
    assert plain.set_size == 0 and CONFIG.set_size == 3
    assert CONFIG.public_inputs == 2 * CONFIG.n_words + 2 + 2 * 3
