"""The packed training-step circuit against the vectors in tests/circuits/ (ZoKrates stdlib style).

Each configuration has a JSON file of cases generated from the Python reference by
tests/integration/circuits/generate_vectors.py (inputs, expected update and packed public inputs, and
``expect``: "ok" or the failure the circuit must reject) and a constraint budget. One build and
one prover worker per configuration serve every test of this module.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from wafl.core.config import ModelConfig, load_config
from wafl.core.field import SNARK_FIELD
from wafl.core.fixedpoint import Weights, train_step
from wafl.core.packing import lane_shift
from wafl.zk.build import CircuitBuild, build_circuit
from wafl.zk.ceremony import required_power
from wafl.zk.circuit import CircuitKind, witness_args
from wafl.zk.prover import ProofResult, Prover, UnsatisfiedConstraintError

VECTOR_DIR = Path(__file__).parent / "circuits"
CONFIGS = ("ref-9x6-b10", "wine-13x3-b16", "iris-4x3-b3")


def _load_generator() -> Any:
    spec = importlib.util.spec_from_file_location("generate_vectors", VECTOR_DIR / "generate_vectors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def vectors(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTOR_DIR / f"{name}.json").read_text())
    return data


def case_params(expect_ok: bool) -> list[Any]:
    return [
        pytest.param(name, case["name"], id=f"{name}/{case['name']}")
        for name in CONFIGS
        for case in vectors(name)["cases"]
        if (case["expect"] == "ok") == expect_ok
    ]


def get_case(name: str, case_name: str) -> dict[str, Any]:
    return next(c for c in vectors(name)["cases"] if c["name"] == case_name)


def case_args(cfg: ModelConfig, case: dict[str, Any]) -> list[object]:
    """computeWitness arguments straight from the vector: no range check on the way."""

    def enc(v: int) -> str:
        return str(v % SNARK_FIELD)

    inputs, n, flat = case["public_inputs"], cfg.n_words, case["global"]
    return [
        inputs[:n],
        inputs[n],
        inputs[n + 1 : 2 * n + 1],
        inputs[-1],
        [[enc(v) for v in flat[k * cfg.d_in : (k + 1) * cfg.d_in]] for k in range(cfg.d_out)],
        [enc(v) for v in flat[cfg.d_out * cfg.d_in :]],
        [[enc(v) for v in row] for row in case["x"]],
        [[enc(v) for v in row] for row in case["y"]],
    ]


@dataclass
class Circuit:
    cfg: ModelConfig
    build: CircuitBuild
    worker: Prover
    proofs: dict[str, ProofResult]


@pytest.fixture(scope="module")
def circuits() -> Iterator[dict[str, Circuit]]:
    """Lazily built circuits with one started worker each, shared by the whole module."""
    started: dict[str, Circuit] = {}

    class Lazy(dict[str, Circuit]):
        def __missing__(self, name: str) -> Circuit:
            cfg = load_config(name)
            build = build_circuit(cfg, CircuitKind.PACKED)
            worker = Prover(build)
            worker.start()
            started[name] = self[name] = Circuit(cfg, build, worker, {})
            return self[name]

    yield Lazy()
    for circuit in started.values():
        circuit.worker.close()


def prove_case(circuit: Circuit, case_name: str) -> ProofResult:
    """Prove an "ok" case once per module run (the binding tests reuse the proofs)."""
    if case_name not in circuit.proofs:
        case = get_case(circuit.cfg.name, case_name)
        circuit.proofs[case_name] = circuit.worker.prove(case_args(circuit.cfg, case))
    return circuit.proofs[case_name]


def _count_flat(component: dict[str, Any]) -> int:
    if component["type"] == "array":
        return int(component["components"]["size"]) * _count_flat(component["components"])
    if component["type"] == "struct":
        return sum(_count_flat(m) for m in component["components"]["members"])
    return 1


# ---- the vectors themselves --------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_vectors_are_fresh(name: str) -> None:
    """The committed JSON equals what the reference generates now (else: run the generator)."""
    generator = _load_generator()
    committed = (VECTOR_DIR / f"{name}.json").read_text()
    assert committed == generator.render_file(name), (
        f"tests/circuits/{name}.json is stale: run .venv/bin/python tests/integration/circuits/generate_vectors.py"
    )


@pytest.mark.parametrize("name", CONFIGS)
def test_vectors_cover_every_failure_kind(name: str) -> None:
    data = vectors(name)
    cfg = load_config(name)
    assert data["config_digest"] == cfg.digest
    kinds = {c["expect"] for c in data["cases"]}
    assert kinds == {"ok", *_load_generator().FAILURE_KINDS} == {"ok", *FAILURE_MESSAGE}
    for case in data["cases"]:
        assert len(case["public_inputs"]) == cfg.public_inputs
    # Valid steps with the bound idle, clipping, and clipping with saturation (docs/design.md section 2).
    assert {c["bounded"] for c in data["cases"] if c["expect"] == "ok"} >= {"none", "clip", "clip+saturate"}


# ---- constraint budget and ABI -------------------------------------------------------------------
@pytest.mark.parametrize("name", CONFIGS)
def test_constraint_budget(circuits: dict[str, Circuit], name: str) -> None:
    build, budget = circuits[name].build, vectors(name)
    assert build.constraints <= budget["max_constraints"] <= 12000
    assert build.constraints <= budget["tight_max_constraints"], (
        f"{name} grew to {build.constraints} constraints (budget {budget['tight_max_constraints']})"
    )
    if name == "iris-4x3-b3":  # CI's ceremony circuit: a phase 1 of 2^11 must hold it
        assert required_power(build.r1cs) == 11


@pytest.mark.parametrize("name", CONFIGS)
def test_public_input_count(circuits: dict[str, Circuit], name: str) -> None:
    circuit = circuits[name]
    abi = json.loads((circuit.build.directory / "abi.json").read_text())
    public = [p for p in abi["inputs"] if p["public"]]
    assert [p["name"] for p in public] == ["global_words", "round", "update_words", "sender"]
    assert sum(_count_flat(p) for p in public) == circuit.cfg.public_inputs == vectors(name)["public_inputs"]


# ---- valid steps ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "case_name"), case_params(expect_ok=True))
def test_ok_vector_proves_and_verifies(circuits: dict[str, Circuit], name: str, case_name: str) -> None:
    circuit, case = circuits[name], get_case(name, case_name)
    cfg = circuit.cfg
    g, update = Weights.from_flat(cfg, case["global"]), Weights.from_flat(cfg, case["update"])
    assert train_step(cfg, g, case["x"], case["y"]) == update
    args = case_args(cfg, case)
    assert args == witness_args(
        cfg, CircuitKind.PACKED, g, update, case["x"], case["y"], int(case["sender"]), int(case["round"])
    )
    result = prove_case(circuit, case_name)
    assert result.inputs == [int(v) for v in case["public_inputs"]]
    assert circuit.worker.verify(result.proof, result.inputs) is True


# ---- failures: each must be caught when the witness is computed ---------------------------------
# How zokrates-js reports the failure: a mismatch of a packed word fails an assert; a value
# outside its range fails the bit decomposition (the unpack embed's "Sum check"). An update that
# is not the bounded step (unclipped, or unsaturated and so outside its lane) is a mismatch: the
# circuit computes the bounded step's lanes itself.
MISMATCH = "Assertion failed"
RANGE = "Sum check failed"
FAILURE_MESSAGE = {
    "tampered-update": MISMATCH,
    "unclipped-update": MISMATCH,
    "tampered-global": MISMATCH,
    "update-headroom-bit": MISMATCH,
    "data-out-of-range": RANGE,
    "target-out-of-range": RANGE,
    "global-lane-out-of-range": RANGE,
    "update-lane-out-of-range": MISMATCH,
    "weight-wraps": RANGE,
    "sender-out-of-range": RANGE,
    "round-out-of-range": RANGE,
}


@pytest.mark.parametrize(("name", "case_name"), case_params(expect_ok=False))
def test_failing_vector_is_unsatisfiable(circuits: dict[str, Circuit], name: str, case_name: str) -> None:
    circuit, case = circuits[name], get_case(name, case_name)
    with pytest.raises(UnsatisfiedConstraintError, match="Execution failed") as raised:
        circuit.worker.prove(case_args(circuit.cfg, case))
    assert FAILURE_MESSAGE[case["expect"]] in str(raised.value)


# ---- binding: a proof is for its sender, round, global model and update ----------------------------
def _altered(cfg: ModelConfig, inputs: list[int], what: str) -> list[int]:
    altered = list(inputs)
    n = cfg.n_words
    if what == "sender":
        altered[-1] ^= 1
    elif what == "round":
        altered[n] += 1
    elif what == "global":  # a validly packed global model with W[0][0] + 1
        altered[0] += 1 << lane_shift(cfg, 0)
    else:  # a validly packed update with its last lane + 1 (the last word may be partial)
        altered[2 * n] += 1 << lane_shift(cfg, cfg.n_weights - 1)
    assert altered != inputs and all(0 <= v < SNARK_FIELD for v in altered)
    return altered


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("what", ["sender", "round", "global", "update"])
def test_proof_is_bound_to_public_input(circuits: dict[str, Circuit], name: str, what: str) -> None:
    circuit = circuits[name]
    result = prove_case(circuit, "random-small")
    assert circuit.worker.verify(result.proof, result.inputs) is True
    assert circuit.worker.verify(result.proof, _altered(circuit.cfg, result.inputs, what)) is False
