"""`wafl demo`: a small local federation with real proofs on anvil, in one process.

Organisations split a bundled scikit-learn dataset, each round each one trains one batch with
the torch fixed-point trainer, proves the step with ZoKrates and submits it; the contract
averages at quorum. Accuracy of the on-chain global model on held-out data is printed per
round. (The full multi-service federation is `wafl simulate`.)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from eth_account import Account
from eth_account.signers.local import LocalAccount
from sklearn.datasets import load_breast_cancer, load_digits, load_wine
from sklearn.model_selection import train_test_split

from wafl.build import build_circuit
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil, fund
from wafl.chain.deploy import deploy
from wafl.circuit import CircuitKind, witness_args
from wafl.config import ModelConfig
from wafl.fixedpoint import Weights
from wafl.packing import pack
from wafl.zk import ZokratesWorker

LOADERS = {"wine": load_wine, "digits": load_digits, "breast_cancer": load_breast_cancer}


@dataclass(frozen=True)
class OrgData:
    x: np.ndarray  # fixed point, int64
    y: np.ndarray  # one-hot, int64


def accuracy(cfg: ModelConfig, weights: Weights, x_real: np.ndarray, labels: np.ndarray) -> float:
    w = np.asarray(weights.w, dtype=np.float64) / (1 << cfg.frac_bits)
    b = np.asarray(weights.b, dtype=np.float64) / (1 << cfg.frac_bits)
    return float(((x_real @ w.T + b).argmax(axis=1) == labels).mean())


def prepare(cfg: ModelConfig, orgs: int, seed: int) -> tuple[list[OrgData], np.ndarray, np.ndarray]:
    from wafl_trainer.core import one_hot, quantize_features

    if cfg.dataset not in LOADERS:
        raise ValueError(f"configuration {cfg.name} names no bundled dataset")
    features, labels = LOADERS[cfg.dataset](return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.25, stratify=labels, random_state=seed
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-9
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    order = np.random.default_rng(seed).permutation(len(x_train))
    parts = np.array_split(order, orgs)
    data = [
        OrgData(
            x=quantize_features(x_train[p], cfg).values.numpy(),
            y=one_hot(y_train[p], cfg).numpy(),
        )
        for p in parts
    ]
    return data, x_test, y_test


def run_demo(
    cfg: ModelConfig, orgs: int = 3, rounds: int = 10, seed: int = 0, echo: Callable[[str], None] = print
) -> list[dict[str, float]]:
    from wafl_trainer.core import TorchFixedPointTrainer

    data, x_test, y_test = prepare(cfg, orgs, seed)
    trainer = TorchFixedPointTrainer(cfg)
    echo(f"building the {cfg.name} circuit (cached after the first run)...")
    build = build_circuit(cfg, CircuitKind.PACKED)
    results: list[dict[str, float]] = []
    with Anvil() as anvil, ZokratesWorker(build.directory) as worker:
        w3 = anvil.web3()
        admin, *members = [Account.create() for _ in range(orgs + 1)]
        for account in (admin, *members):
            fund(w3, account.address)
        deployment = deploy(
            w3, admin, cfg, quorum=orgs, round_duration=3600, participants=[m.address for m in members]
        )
        aggregator = AggregatorClient(w3, deployment)
        echo(f"anvil at {anvil.url}; aggregator {deployment.address}; {orgs} organisations, {cfg.name}")
        echo(f"round 0: accuracy {accuracy(cfg, aggregator.global_model(), x_test, y_test):.3f}")
        for round_id in range(1, rounds + 1):
            started = time.monotonic()
            global_model = aggregator.global_model()
            gas: list[int] = []
            proof_seconds: list[float] = []
            for index, (member, org) in enumerate(zip(members, data, strict=True)):
                gas_used, seconds = _train_prove_submit(
                    cfg, trainer, worker, aggregator, member, org, global_model, round_id, index
                )
                gas.append(gas_used)
                proof_seconds.append(seconds)
            acc = accuracy(cfg, aggregator.global_model(), x_test, y_test)
            row = {
                "round": round_id,
                "accuracy": acc,
                "median_gas": statistics.median(gas),
                "median_proof_seconds": statistics.median(proof_seconds),
                "round_seconds": time.monotonic() - started,
            }
            results.append(row)
            echo(
                f"round {round_id}: accuracy {acc:.3f}, {len(gas)} updates accepted, "
                f"median gas {row['median_gas']:.0f}, median proof {row['median_proof_seconds']:.2f}s, "
                f"{row['round_seconds']:.1f}s"
            )
    return results


def _train_prove_submit(
    cfg: ModelConfig,
    trainer: object,
    worker: ZokratesWorker,
    aggregator: AggregatorClient,
    member: LocalAccount,
    org: OrgData,
    global_model: Weights,
    round_id: int,
    org_index: int,
) -> tuple[int, float]:
    from wafl_trainer.core import TorchFixedPointTrainer

    assert isinstance(trainer, TorchFixedPointTrainer)
    rows = [(round_id * cfg.batch + i + org_index) % len(org.x) for i in range(cfg.batch)]
    x, y = org.x[rows], org.y[rows]
    update = trainer.step(global_model, x, y)
    sender = int(member.address, 16)
    args = witness_args(cfg, CircuitKind.PACKED, global_model, update, x.tolist(), y.tolist(), sender, round_id)
    result = worker.prove(args)
    receipt = aggregator.submit_update(member, round_id, pack(cfg, update.flat()), result.proof)
    return int(receipt["gasUsed"]), result.proof_seconds
