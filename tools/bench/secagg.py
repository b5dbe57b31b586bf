"""`wafl bench secagg`: what masking costs a configuration's prover (docs/design.md section 12).

For a secure-aggregation configuration and its unmasked twin (the same configuration with
secure_aggregation off: same lanes and words), the same jobs are proven alternately by the same
backend (groth16py, one core), each circuit on this machine's development keys. Prints the
constraints, median witness and prove seconds of each, and their ratios, measured in one run.
"""

from __future__ import annotations

import random
import statistics
from typing import Any

from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights, train_step
from wafl.zk.build import build_circuit, development_keys
from wafl.zk.circuit import CircuitKind, masked_witness_args, witness_args
from wafl.zk.masking import IDENTITY, generate_secret, public_key
from wafl.zk.prover import Prover


def unmasked(cfg: ModelConfig) -> ModelConfig:
    """The same configuration without masking: the plain circuit with the same packing."""
    return cfg.model_copy(update={"secure_aggregation": False, "name": cfg.name.removesuffix("-secagg") + "-unmasked"})


def bench_secagg(cfg: ModelConfig, runs: int = 5, seed: int = 3) -> dict[str, Any]:
    if not cfg.secure_aggregation:
        raise ValueError(f"{cfg.name} does not mask its updates: give a secure-aggregation configuration")
    plain_cfg = unmasked(cfg)
    secret, peers = generate_secret(), [public_key(generate_secret()) for _ in range(cfg.set_size - 1)]
    keys = [public_key(secret), *peers]
    key_words = [c for key in keys for c in key] + [c for _ in range(cfg.set_size - len(keys)) for c in IDENTITY]
    rng = random.Random(seed)
    span = max(1, cfg.data_max // 4)
    masked_build, plain_build = build_circuit(cfg), build_circuit(plain_cfg)
    times: dict[str, dict[str, list[float]]] = {"masked": {"witness": [], "prove": []},
                                                "plain": {"witness": [], "prove": []}}
    with Prover(masked_build, development_keys(masked_build), cores=1) as masked, \
            Prover(plain_build, development_keys(plain_build), cores=1) as plain:
        for run in range(runs + 1):  # the first of each is a warm-up, not measured
            x = [[rng.randint(-span, span) for _ in range(cfg.d_in)] for _ in range(cfg.batch)]
            y = [[int(k == rng.randrange(cfg.d_out)) for k in range(cfg.d_out)] for _ in range(cfg.batch)]
            global_model = Weights.zeros(cfg)
            update = train_step(cfg, global_model, x, y)
            results = {
                "masked": masked.prove(masked_witness_args(cfg, global_model, x, y, run + 1, key_words, 0, secret)),
                "plain": plain.prove(witness_args(plain_cfg, CircuitKind.PACKED, global_model, update, x, y,
                                                  0xBEEF, run + 1)),
            }
            if run:
                for name, result in results.items():
                    times[name]["witness"].append(result.witness_seconds)
                    times[name]["prove"].append(result.proof_seconds)
    median = {name: {k: round(statistics.median(v), 4) for k, v in kinds.items()} for name, kinds in times.items()}
    return {
        "config": cfg.name,
        "set_size": cfg.set_size,
        "words": cfg.n_words,
        "runs": runs,
        "constraints": masked_build.constraints,
        "constraints_unmasked": plain_build.constraints,
        "constraints_ratio": round(masked_build.constraints / plain_build.constraints, 2),
        "witness_seconds": median["masked"]["witness"],
        "witness_seconds_unmasked": median["plain"]["witness"],
        "prove_seconds": median["masked"]["prove"],
        "prove_seconds_unmasked": median["plain"]["prove"],
        "prove_ratio": round(median["masked"]["prove"] / median["plain"]["prove"], 2),
        "proof_ratio_with_witness": round(
            (median["masked"]["prove"] + median["masked"]["witness"])
            / (median["plain"]["prove"] + median["plain"]["witness"]), 2),
        "backend": "groth16py",
    }
