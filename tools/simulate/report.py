"""What `wafl simulate` reports: the central baseline, the per-round table, JSON and a PNG plot."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from tools.simulate.federation import RoundRecord
from wafl.core.config import ModelConfig
from wafl.data.fedsplit import FederationData

CENTRAL_EPOCHS = 400


def central_baseline(cfg: ModelConfig, data: FederationData, seed: int = 0) -> tuple[float, float]:
    """The same linear model (and loss: MSE against one-hot targets) trained centrally in float
    on the union of every organisation's training rows; accuracy and loss on the held-out rows."""
    torch.manual_seed(seed)
    x = torch.tensor(data.x_train, dtype=torch.float32)
    y = torch.nn.functional.one_hot(torch.tensor(data.y_train), cfg.d_out).float()
    model = torch.nn.Linear(cfg.d_in, cfg.d_out)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(CENTRAL_EPOCHS):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
    with torch.no_grad():
        outputs = model(torch.tensor(data.x_test, dtype=torch.float32))
        targets = torch.nn.functional.one_hot(torch.tensor(data.y_test), cfg.d_out).float()
        accuracy = float((outputs.argmax(dim=1).numpy() == data.y_test).mean())
        test_loss = float(torch.nn.functional.mse_loss(outputs, targets))
    return accuracy, test_loss


def summary(cfg: ModelConfig, data: FederationData, records: list[RoundRecord], central: tuple[float, float],
            malicious: int, wall_seconds: float, rejections: list[dict[str, Any]]) -> dict[str, Any]:
    final = records[-1] if records else None
    return {
        "config": cfg.name,
        "data": data.source,
        "organisations": len(data.orgs),
        "samples_per_organisation": data.sizes(),
        "malicious": malicious,
        "secure_aggregation": cfg.secure_aggregation,
        "rounds": [asdict(r) for r in records],
        "central_accuracy": central[0],
        "central_loss": central[1],
        "final_accuracy": final.accuracy if final else None,
        "gap_points": round(100 * (central[0] - final.accuracy), 2) if final else None,
        "honest_model_unaffected": all(r.matches_reference for r in records),
        "rejections": rejections,
        "wall_seconds": round(wall_seconds, 1),
    }


def table(records: list[RoundRecord], malicious: int) -> Table:
    grid = Table(title="WaFL federation, per round", header_style="bold")
    failures = any(r.failed for r in records)
    for column in ("round", "accuracy", "loss", "accepted", "rejected", "proof s (median)", "gas / update",
                   "round s"):
        grid.add_column(column, justify="right")
    if failures:
        grid.add_column("failed", justify="right")
    if malicious:
        grid.add_column("plain FedAvg acc.", justify="right")
    for r in records:
        row = [str(r.round), f"{r.accuracy:.3f}", f"{r.loss:.4f}", str(r.accepted), str(r.rejected),
               "-" if r.median_proof_seconds is None else f"{r.median_proof_seconds:.2f}",
               "-" if r.gas_per_update is None else f"{r.gas_per_update:,.0f}", f"{r.round_seconds:.1f}"]
        if failures:
            row.append(str(len(r.failed)))
        if malicious:
            row.append("-" if r.plain_fedavg_accuracy is None else f"{r.plain_fedavg_accuracy:.3f}")
        grid.add_row(*row)
    return grid


def _weights(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:+.3f}" for v in values) + "]"


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def write_plot(path: Path, result: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no screen here
    import matplotlib.pyplot as plt

    rounds = result["rounds"]
    xs = [r["round"] for r in rounds]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    top.plot(xs, [r["accuracy"] for r in rounds], marker="o", label="WaFL (verified on chain)")
    top.axhline(result["central_accuracy"], color="grey", linestyle="--", label="central, float (torch)")
    if result["malicious"]:
        top.plot(xs, [r["plain_fedavg_accuracy"] for r in rounds], marker="x", color="crimson",
                 label=f"plain FedAvg with {result['malicious']} poisoned client(s)")
    top.set_ylabel("accuracy (held out)")
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="lower right")
    top.set_title(f"{result['config']}: {result['organisations']} organisations, {result['data']}")
    gas = [r["gas_per_update"] or np.nan for r in rounds]
    bottom.bar(xs, gas, color="tab:blue")
    bottom.set_ylabel("gas per accepted update")
    bottom.set_xlabel("round")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_results(console: Console, result: dict[str, Any], records: list[RoundRecord]) -> None:
    console.print(table(records, result["malicious"]))
    console.print(
        f"central (float, all data): accuracy {result['central_accuracy']:.3f}; "
        f"federated after {len(records)} rounds: {result['final_accuracy']:.3f} "
        f"(gap {result['gap_points']:+.1f} points); wall time {result['wall_seconds']:.0f}s"
    )
    for r in records:
        for failure in r.failed:
            console.print(f"round {r.round}: no update from {failure}", highlight=False)
    observed = [r for r in records if r.observed]
    if observed:
        masked = "masked: noise, only the round's sum is the updates'" if result.get("secure_aggregation") \
            else "plain: the weights themselves"
        first = observed[0].observed or {}
        console.print(f"what anyone reading the chain sees of {first['participant']}'s update "
                      f"({masked}):", highlight=False)
        for r in observed:
            seen = r.observed or {}
            trained = seen["weights_trained"]
            console.print(f"  round {r.round}: word {seen['first_word'][:18]}..., lanes {seen['lanes']} read as "
                          f"weights {_weights(seen['weights_read'])}; trained {_weights(trained) if trained else '-'}",
                          highlight=False)
    if result["malicious"]:
        names = sorted({r["error"] for r in result["rejections"]})
        console.print(
            f"{len(result['rejections'])} poisoned submissions rejected on chain ({', '.join(names)}); "
            f"honest model unaffected: {result['honest_model_unaffected']}"
        )
