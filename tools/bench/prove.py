"""`wafl bench prove`: witness and proof time per configuration and proving backend.

For each configuration, the same jobs are proven by every backend in one run, alternating job by
job, each backend's processes pinned to one core (a prover replica's norm):

- ``zokrates``: zokrates-js' own witness and prover on its own one-party setup (the baseline);
- ``groth16py``: the zokrates-js witness in snarkjs' format, proven natively by groth16py;
- ``snarkjs``: the same witness proven by snarkjs from a ceremony zkey (a one-contribution
  ceremony on a local phase 1, made once and cached; skipped with the reason when the phase 1
  it needs is larger than ``max_phase1_power`` and not cached).

Figures are medians; ``ratio_vs_zokrates`` is a backend's prove time over zokrates-js' on the
same circuit and jobs, both measured in this run. ``prove_seconds`` excludes the witness and the
check every WaFL proof gets before it is published (``verify_seconds``, snarkjs).
"""

from __future__ import annotations

import random
import statistics
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights, train_step
from wafl.core.paths import BUILD_DIR, CIRCUIT_DIR, NODE
from wafl.zk.build import CircuitBuild, build_circuit, development_keys
from wafl.zk.circuit import CircuitKind, witness_args
from wafl.zk.keys import KeySet, KeySetError, load_keys
from wafl.zk.prover import Backend, ProofResult, Prover

ZOKRATES = "zokrates"


@dataclass(frozen=True)
class ProveBenchOptions:
    runs: int = 5
    cores: int = 1
    seed: int = 3
    max_phase1_power: int = 12


def _jobs(cfg: ModelConfig, runs: int, seed: int) -> list[list[object]]:
    rng = random.Random(seed)
    span = max(1, cfg.data_max // 4)
    jobs = []
    for run in range(runs):
        x = [[rng.randint(-span, span) for _ in range(cfg.d_in)] for _ in range(cfg.batch)]
        y = [[int(k == rng.randrange(cfg.d_out)) for k in range(cfg.d_out)] for _ in range(cfg.batch)]
        global_model = Weights.zeros(cfg)
        update = train_step(cfg, global_model, x, y)
        jobs.append(witness_args(cfg, CircuitKind.PACKED, global_model, update, x, y, 0xBEEF + run, run + 1))
    return jobs


def zokrates_proving_key(build: CircuitBuild) -> Path:
    """zokrates-js' own setup of the build (the baseline's key), made once and cached."""
    path = BUILD_DIR / "bench" / "zokrates" / f"{build.config.name}-{build.kind}" / build.circuit_sha256[:16] / "pk.bin"
    if not path.exists():
        subprocess.run([NODE, str(CIRCUIT_DIR / "zokrates_setup.mjs"), str(build.directory), str(path)],
                       check=True, capture_output=True)
    return path


def ceremony_keys(build: CircuitBuild, max_phase1_power: int) -> KeySet | str:
    """A one-contribution ceremony's keys for the snarkjs backend, or why there are none."""
    from wafl.zk import ceremony

    directory = BUILD_DIR / "bench" / "ceremony" / f"{build.config.name}-{build.kind}" / build.circuit_sha256[:16]
    try:
        return load_keys(directory / "final")
    except KeySetError:
        pass
    power = ceremony.required_power(build.r1cs)
    cached = BUILD_DIR / "ptau" / f"local_{power:02d}.ptau"
    if power > max_phase1_power and not cached.exists():
        return (f"needs a phase 1 of 2^{power}, not cached: `wafl ceremony phase1 --power {power}` makes it "
                f"(hours above 2^15), or raise --max-phase1-power")
    ptau = ceremony.local_phase1(power)
    ceremony.init(build.r1cs, ptau, directory / "0", build.config.name)
    ceremony.contribute(directory / "0", directory / "1", "bench")
    ceremony.finalize(directory / "1", directory / "final", "ab" * 32, build.r1cs, ptau)
    return load_keys(directory / "final")


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def bench_prove(cfg: ModelConfig, options: ProveBenchOptions) -> list[dict[str, Any]]:
    build = build_circuit(cfg)
    jobs = _jobs(cfg, options.runs, options.seed)
    dev_keys = development_keys(build)
    zkey_keys = ceremony_keys(build, options.max_phase1_power)
    provers: dict[str, Prover] = {
        ZOKRATES: Prover(build, dev_keys, cores=options.cores, zokrates_proving_key=zokrates_proving_key(build)),
        Backend.GROTH16PY.value: Prover(build, dev_keys, Backend.GROTH16PY, cores=options.cores),
    }
    if isinstance(zkey_keys, KeySet):
        provers[Backend.SNARKJS.value] = Prover(build, zkey_keys, Backend.SNARKJS, cores=options.cores)
    results: dict[str, list[ProofResult]] = {name: [] for name in provers}
    try:
        for prover in provers.values():
            prover.start()
            # One unmeasured proof each: first-call costs (curve tables, wasm) are not per job.
            (prover.prove_zokrates if prover is provers[ZOKRATES] else prover.prove)(jobs[0])
        for job in jobs:  # alternating: each job by every backend before the next job
            for name, prover in provers.items():
                results[name].append(prover.prove_zokrates(job) if name == ZOKRATES else prover.prove(job))
    finally:
        for prover in provers.values():
            prover.close()
    baseline = _median([r.proof_seconds for r in results[ZOKRATES]])
    rows = []
    for name, measured in results.items():
        prove = _median([r.proof_seconds for r in measured])
        rows.append({
            "config": cfg.name,
            "backend": name,
            "constraints": build.constraints,
            "cores": options.cores,
            "runs": len(measured),
            "witness_seconds": _median([r.witness_seconds for r in measured]),
            "prove_seconds": prove,
            "verify_seconds": None if name == ZOKRATES else _median([r.verify_seconds for r in measured]),
            "ratio_vs_zokrates": round(prove / baseline, 3),
        })
    if isinstance(zkey_keys, str):
        rows.append({"config": cfg.name, "backend": Backend.SNARKJS.value, "skipped": zkey_keys})
    return rows
