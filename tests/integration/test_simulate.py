"""`wafl simulate`: the newcomer's first command. Real anvil, ZoKrates and service handlers; the
in-process broker and Redis stand-in by default, the real servers with flags."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from services.prover.proving import JobProver
from services.trainer.rounds import RoundTrainer
from tests.support.processes import processes_with
from tools.cli import main
from tools.simulate.attack import made_up_update
from tools.simulate.federation import Plan, Progress, Simulation
from wafl.bus.messages import ProofGenerated, ProverJob
from wafl.bus.settings import DEFAULT_AMQP_URL, DEFAULT_REDIS_URL, with_path
from wafl.chain.anvil import Anvil
from wafl.core.config import ModelConfig, load_config
from wafl.core.fixedpoint import Weights, fedavg
from wafl.core.packing import pack, unpack
from wafl.data.datasets import OrgData
from wafl.data.fedsplit import FederationData, bundled, from_files, split_indices
from wafl.zk.prover import UnsatisfiedConstraintError

AMQP_URL = DEFAULT_AMQP_URL
REDIS_URL = with_path(DEFAULT_REDIS_URL, 7)


def simulate(tmp_path: Path, *flags: str, timeout: float = 600) -> tuple[dict[str, Any], str]:
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "simulate", *flags], cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = flags[flags.index("--out") + 1] if "--out" in flags else "wafl-simulation"
    result = json.loads((tmp_path / out / "results.json").read_text())
    png = (tmp_path / out / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    return result, proc.stdout


@pytest.mark.slow
def test_defaults_run_a_converging_federation(tmp_path: Path) -> None:
    result, stdout = simulate(tmp_path)
    assert result["config"] == "wine-13x3-b16" and result["organisations"] == 4 and result["malicious"] == 0
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, 9))
    assert all(r["accepted"] == 4 and r["rejected"] == 0 for r in rounds)
    assert all(r["matches_reference"] for r in rounds)  # on chain == the Python reference FedAvg, bit for bit
    assert all(280_000 < r["gas_per_update"] < 320_000 for r in rounds)
    assert all(0 < r["median_proof_seconds"] < 30 for r in rounds)
    # The target: the federated model ends within 2 accuracy points of the central float model.
    assert result["gap_points"] <= 2.0, result
    assert rounds[-1]["accuracy"] > rounds[0]["accuracy"] - 1e-9
    # Progress, one line per event, and the table.
    assert "proof.generated" in stdout and "round.finalized" in stdout and "WaFL federation, per round" in stdout
    assert "gas / update" in stdout and "central (float, all data)" in stdout


@pytest.mark.slow
def test_secure_aggregation_shows_the_chain_only_noise_and_keeps_the_exact_average(tmp_path: Path) -> None:
    masked, stdout = simulate(tmp_path, "--secure-aggregation", "--config", "iris-4x3-b3", "--orgs", "3",
                              "--rounds", "1", "--out", "masked")
    assert masked["config"] == "iris-4x3-b3-secagg" and masked["secure_aggregation"] is True
    assert all(r["accepted"] == 3 and r["matches_reference"] for r in masked["rounds"])  # bit for bit
    assert "what anyone reading the chain sees" in stdout and "masked: noise" in stdout
    plain, plain_stdout = simulate(tmp_path, "--config", "iris-4x3-b3", "--orgs", "3", "--rounds", "1",
                                   "--out", "plain")
    assert plain["secure_aggregation"] is False and "plain: the weights themselves" in plain_stdout
    for record in plain["rounds"]:  # the plain chain shows the trained weights themselves
        assert record["observed"]["weights_read"] == record["observed"]["weights_trained"]
        assert any(w != 0 for w in record["observed"]["weights_trained"])
    for record in masked["rounds"]:  # the masked one shows noise: nowhere near a one-round step
        seen = record["observed"]
        assert seen["weights_read"] != seen["weights_trained"]
        assert max(abs(w) for w in seen["weights_read"]) > 1.0
    # Same data under other keys gives other words: tests/integration/test_masking.py.


@pytest.mark.slow
def test_poisoned_updates_are_rejected_and_the_honest_curve_is_unaffected(tmp_path: Path) -> None:
    result, stdout = simulate(tmp_path, "--orgs", "3", "--malicious", "1", "--attack", "random", "--rounds", "3",
                              "--out", "poisoned")
    rounds = result["rounds"]
    assert all(r["accepted"] == 2 and r["rejected"] == 1 for r in rounds)
    assert all(r["matches_reference"] for r in rounds) and result["honest_model_unaffected"]
    kinds = {(x["proof_kind"], x["error"]) for x in result["rejections"]}
    assert kinds == {("forged", "Wafl__InvalidProof"), ("reused", "Wafl__InvalidProof")}
    # The baseline that trusts its clients is dragged down by the same updates.
    assert rounds[-1]["plain_fedavg_accuracy"] < rounds[-1]["accuracy"] - 0.1
    assert "poisoned submissions rejected on chain" in stdout


@pytest.mark.slow
def test_real_servers_and_a_running_chain_with_a_non_iid_split(tmp_path: Path) -> None:
    with Anvil() as anvil:
        result, stdout = simulate(tmp_path, "--orgs", "3", "--rounds", "1", "--dataset", "wine", "--alpha", "0.5",
                                  "--seed", "3",
                                  "--amqp-url", AMQP_URL, "--redis-url", REDIS_URL, "--rpc-url", anvil.url,
                                  "--round-timeout", "120", "--verbose", "--out", "real")
        assert anvil.web3().eth.block_number > 5  # the deployment and the round happened on this chain
    assert result["data"] == "wine, dirichlet(alpha=0.5)"
    assert result["rounds"][0]["accepted"] == 3
    assert '"event": "proof_generated"' in stdout  # --verbose: the services' JSON logs
    # Nothing is left on the servers.
    queues = subprocess.run(["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True).stdout
    assert not [q for q in queues.split() if q.startswith("wafl.org")]
    import redis

    assert not list(redis.Redis.from_url(REDIS_URL).scan_iter(match="wafl:org*"))


@pytest.mark.slow
def test_own_data_files_csv_and_npz(tmp_path: Path) -> None:
    cfg = load_config("breast-cancer-30x2-b16")
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    first, second = order[:280], order[280:]
    header = ",".join(f"f{i}" for i in range(cfg.d_in)) + ",label"
    csv_path = tmp_path / "hospital-a.csv"
    csv_path.write_text(header + "\n" + "\n".join(",".join([*map(str, x[i]), str(y[i])]) for i in first) + "\n")
    npz_path = tmp_path / "hospital-b.npz"
    np.savez(npz_path, x=x[second], y=y[second])
    result, _ = simulate(tmp_path, "--config", cfg.name, "--data", str(csv_path), str(npz_path), "--rounds", "2",
                         "--out", "own")
    assert result["organisations"] == 2 and result["data"] == "2 files"
    assert result["samples_per_organisation"] == [210, 216]  # three quarters of each file train
    assert all(r["accepted"] == 2 for r in result["rounds"]) and result["rounds"][-1]["accuracy"] > 0.85


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def good_rows(n: int = 12) -> list[str]:
    rng = np.random.default_rng(1)
    return [",".join(f"{v:.3f}" for v in rng.normal(size=13)) + f",{i % 3}" for i in range(n)]


HEADER = ",".join(f"f{i}" for i in range(13)) + ",label"


def outlier_files(tmp_path: Path) -> tuple[Path, Path]:
    """good.csv (60 ordinary rows) and huge_value.csv (4 rows, one with 1e6 in every feature).
    Standardised over both, the outlier lies about 5.6 standard deviations out: inside the data
    range, so the files pass validation."""
    rng = np.random.default_rng(1)
    rows = [",".join(f"{v:.3f}" for v in rng.normal(size=13)) + f",{i % 3}" for i in range(64)]
    huge = ",".join(["1e6"] * 13) + ",0"
    return (write_csv(tmp_path / "huge_value.csv", HEADER, [huge, *rows[60:63]]),
            write_csv(tmp_path / "good.csv", HEADER, rows[:60]))


def _unbounded_round_leaving_the_lanes(data: FederationData, cfg: ModelConfig, rounds: int) -> int | None:
    """The first round whose step, unclipped and unsaturated (as before the bound), leaves the lanes."""
    f, s = cfg.frac_bits, cfg.lr_shift
    w, b = np.zeros((cfg.d_out, cfg.d_in), dtype=object), np.zeros(cfg.d_out, dtype=object)
    for round_id in range(1, rounds + 1):
        updates = []
        for org in data.orgs:
            x, y = (a.astype(object) for a in org.batch(cfg, round_id))
            err = (x @ w.T) // (1 << f) + b - y * (1 << f)
            updates.append((w - (err.T @ x) // (1 << (f + s)), b - err.sum(axis=0) // (1 << s)))
        values = np.concatenate([np.concatenate([u.reshape(-1), v]) for u, v in updates])
        if values.min() < cfg.weight_min or values.max() > cfg.weight_max:
            return round_id
        w, b = sum(u for u, _ in updates) // len(updates), sum(v for _, v in updates) // len(updates)
    return None


@pytest.mark.slow
def test_an_outlier_row_is_clipped_and_the_federation_completes(tmp_path: Path) -> None:
    """The issue's run: an outlier row that passes validation used to push a weight out of its lane
    (round 3 here), the honest step became unprovable and `wafl simulate` ended in a traceback.
    The bounded step clips it: every round is proven, accepted and equal to the reference."""
    cfg = load_config("wine-13x3-b16")
    huge, good = outlier_files(tmp_path)
    data = from_files(cfg, [huge, good])
    assert _unbounded_round_leaving_the_lanes(data, cfg, 3) == 3
    result, stdout = simulate(tmp_path, "--data", str(huge), str(good), "--rounds", "3", "--out", "outlier")
    rounds = result["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["accepted"] == 2 and not r["failed"] and r["matches_reference"] for r in rounds)
    assert "Traceback" not in stdout
    # The bound was at work: the outlier's organisation moved some weight by exactly B in a round.
    model = Weights.zeros(cfg)
    moved = []
    for round_id in range(1, 4):
        updates = [RoundTrainer(cfg, org, "o", "0x" + "12" * 20).train(round_id, pack(cfg, model.flat()))[0]
                   for org in data.orgs]
        flats = [unpack(cfg, job.update_words) for job in updates]
        moved.append(max(abs(a - c) for a, c in zip(flats[0], model.flat(), strict=True)))
        model = fedavg(cfg, [Weights.from_flat(cfg, f) for f in flats])
    assert max(moved) == cfg.max_weight_change, moved


@pytest.mark.slow
def test_an_unprovable_step_is_update_failed_and_the_federation_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Round 2: org2's batch holds a value outside the data range (what no data file gets past
    validation: a trainer fed by hand), so its trainer publishes update.failed with the reason.
    Round 3: org1's prover cannot prove its job (made to fail here), which is dead-lettered. Each
    round closes at its deadline with the other update, the next has both again, and the chain
    still equals the reference."""
    cfg = load_config("wine-13x3-b16")
    data = bundled(cfg, "wine", 2)
    broken = data.orgs[1]
    x = broken.x_train.copy()
    x[cfg.batch + 2, 0] = cfg.data_max + 1  # a row of round 2's batch
    data.orgs[1] = OrgData(x, broken.y_train, broken.x_test, broken.y_test)
    prove = JobProver.prove

    def failing_prove(self: JobProver, job: ProverJob) -> ProofGenerated:
        if (job.org, job.round) == ("org1", 3):
            raise UnsatisfiedConstraintError("Execution failed: made to fail by the test")
        return prove(self, job)

    monkeypatch.setattr(JobProver, "prove", failing_prove)
    seen: list[str] = []
    progress = Progress(on_event=lambda org, event: seen.append(f"{org} {event.routing_key}"))
    records = asyncio.run(Simulation(Plan(cfg, data, rounds=4, round_timeout=300), progress).run())
    assert [(r.round, r.accepted, len(r.failed)) for r in records] == [(1, 2, 0), (2, 1, 1), (3, 1, 1), (4, 2, 0)]
    assert all(r.matches_reference for r in records)
    assert records[1].failed == [f"org2: unprovable_step: FixedPointRangeError: X[{2 * cfg.d_in}] is outside "
                                 f"[{cfg.data_min}, {cfg.data_max}]"]  # row 2 of the batch, column 0
    assert records[2].failed == ["org1: unsatisfied_constraint: the job does not satisfy the circuit"]
    assert seen.count("org2 update.failed") == 1 and seen.count("org1 update.failed") == 1


@pytest.mark.parametrize(("case", "expected"), [
    ("columns", "12 feature columns, configuration wine-13x3-b16 needs 13"),
    ("label_header", "the last column must be named 'label'"),
    ("non_numeric", "'abc' is not a number"),
    ("nan", "NaN or infinite value at row 3"),
    ("out_of_range", "outside the fixed-point data range"),
    ("label", "label 7 at row 2 is not a class in [0, 3)"),
    ("extension", "unknown format '.txt'"),
    ("npz_arrays", "needs arrays 'x' and 'y'"),
    ("missing", "no such file"),
])
def test_a_bad_data_file_is_refused_with_its_reason(tmp_path: Path, case: str, expected: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    good = write_csv(tmp_path / "good.csv", HEADER, good_rows())
    rows = good_rows()
    bad: Path
    if case == "columns":
        bad = write_csv(tmp_path / "bad.csv", ",".join(f"f{i}" for i in range(12)) + ",label",
                        [",".join(r.split(",")[1:]) for r in rows])
    elif case == "label_header":
        bad = write_csv(tmp_path / "bad.csv", HEADER.replace("label", "class"), rows)
    elif case == "non_numeric":
        bad = write_csv(tmp_path / "bad.csv", HEADER, [rows[0], "abc" + rows[1][rows[1].index(","):], *rows[2:]])
    elif case == "nan":
        bad = write_csv(tmp_path / "bad.csv", HEADER, [rows[0], rows[1], "nan" + rows[2][rows[2].index(","):],
                                                       *rows[3:]])
    elif case == "out_of_range":
        # 120 ordinary rows and one 1e6: standardised, it lies ~11 standard deviations out, beyond
        # the 8 that the 14-bit fixed-point range (10 fraction bits) holds.
        many = good_rows(120)
        bad = write_csv(tmp_path / "bad.csv", HEADER, [*many, "1e6" + many[0][many[0].index(","):]])
    elif case == "label":
        bad = write_csv(tmp_path / "bad.csv", HEADER, [rows[0], rows[1].rsplit(",", 1)[0] + ",7", *rows[2:]])
    elif case == "extension":
        bad = write_csv(tmp_path / "bad.txt", HEADER, rows)
    elif case == "npz_arrays":
        bad = tmp_path / "bad.npz"
        np.savez(bad, features=np.zeros((5, 13)), y=np.zeros(5, dtype=np.int64))
    else:
        bad = tmp_path / "absent.csv"
    code = main(["simulate", "--data", str(good), str(bad), "--out", str(tmp_path / "never")])
    out = capsys.readouterr().err
    assert code == 2
    assert expected in out, out
    assert str(bad.name) in out
    assert not (tmp_path / "never").exists()  # refused before anything started


@pytest.mark.parametrize(("flags", "expected"), [
    (["--orgs", "1"], "--orgs must be between 2 and 8"),
    (["--orgs", "9"], "--orgs must be between 2 and 8"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--alpha", "0"], "--alpha must be positive"),
    (["--orgs", "3", "--malicious", "3"], "--malicious must leave at least one honest organisation"),
    (["--config", "nope"], "nope"),
    (["--config", "digits-64x10-b16", "--dataset", "wine"], "does not fit configuration digits-64x10-b16"),
    (["--secure-aggregation", "--config", "ref-9x6-b10"], "ref-9x6-b10 has no bundled ref-9x6-b10-secagg"),
    (["--secure-aggregation", "--malicious", "1"], "--malicious needs the plain mode"),
    (["--secure-aggregation", "--orgs", "5"], "--orgs must be between 2 and 4"),
])
def test_bad_flags_are_refused(flags: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *flags]) == 2
    assert expected in capsys.readouterr().err


def test_dirichlet_split_is_skewed_and_covers_every_row_once() -> None:
    labels = np.repeat(np.arange(3), 100)
    rng = np.random.default_rng(0)
    iid = split_indices(labels, 4, None, rng)
    skewed = split_indices(labels, 4, 0.1, np.random.default_rng(0))
    for parts in (iid, skewed):
        assert sorted(np.concatenate(parts).tolist()) == list(range(300))
        assert all(len(p) > 0 for p in parts)
    # IID: every organisation holds every class; small alpha: most organisations lack some class.
    assert all(len(np.unique(labels[p])) == 3 for p in iid)
    assert sum(len(np.unique(labels[p])) < 3 for p in skewed) >= 2


def test_bundled_split_fits_the_configuration() -> None:
    cfg = load_config("wine-13x3-b16")
    data = bundled(cfg, "wine", 4, alpha=None, seed=0)
    assert sum(data.sizes()) == len(data.x_train) and len(data.orgs) == 4
    assert all(o.x_train.dtype == np.int64 and o.x_train.shape[1] == 13 for o in data.orgs)
    assert all(int(o.x_train.min()) >= cfg.data_min and int(o.x_train.max()) <= cfg.data_max for o in data.orgs)
    with pytest.raises(ValueError, match="unknown dataset"):
        bundled(cfg, "mnist", 4)
    with pytest.raises(ValueError, match=r"dataset iris \(4 features, 3 classes\) does not fit"):
        bundled(cfg, "iris", 4)
    with pytest.raises(ValueError, match="at least two"):
        from_files(cfg, [Path("one.csv")])


@pytest.mark.parametrize("attack", ["scaled", "random"])
def test_made_up_updates_fit_the_lanes_but_are_far_from_honest(attack: str) -> None:
    cfg = load_config("wine-13x3-b16")
    data = bundled(cfg, "wine", 2)

    start = Weights.zeros(cfg)
    job, _ = RoundTrainer(cfg, data.orgs[0], "o", "0x" + "12" * 20).train(1, pack(cfg, start.flat()))
    honest = Weights.from_flat(cfg, unpack(cfg, job.update_words))
    made_up = made_up_update(cfg, attack, start, honest, np.random.default_rng(0))  # type: ignore[arg-type]
    values = np.asarray(made_up.flat())
    assert values.min() >= cfg.weight_min and values.max() <= cfg.weight_max  # only the proof can reject it
    assert np.abs(values - np.asarray(honest.flat())).mean() > 4 * np.abs(np.asarray(honest.flat())).mean()
    assert pack(cfg, made_up.flat())  # packs into lanes like an honest update


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_stops_everything_it_started(tmp_path: Path, sig: int) -> None:
    marker = f"WAFL_SIMULATE_TEST={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "simulate", "--rounds", "50", "--orgs", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while "round 1 finalised" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()
    assert "round 1 finalised" in seen, seen[-3000:]
    # Mid-run: anvil and the ZoKrates workers are up.
    running = processes_with(marker)
    assert any("anvil" in p for p in running) and any("worker.mjs" in p for p in running), running
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, seen[-2000:] + rest[-2000:]
    assert "interrupted" in rest
    time.sleep(0.5)
    assert processes_with(marker) == [], "left behind"
    assert not (tmp_path / "wafl-simulation" / "results.json").exists()
