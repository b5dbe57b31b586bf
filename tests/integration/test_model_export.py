"""`wafl model export` and `wafl model evaluate` after a short real federation: `wafl simulate` on a
running anvil (real proofs, the real contract), then the global model after each round read back
from that chain into .pt, .safetensors and .onnx files, whose predictions on the held-out data are
the fixed-point reference's classes, and whose evaluation is the accuracy the simulation reported.
The tests that need the federation are slow (one simulation for all, about a minute); the formats'
own round trip is not."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime  # type: ignore[import-untyped]
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from web3 import Web3

from tools.cli import main
from wafl import __version__ as wafl_version
from wafl.chain.anvil import Anvil
from wafl.chain.artifact import Deployment
from wafl.core.config import ModelConfig, load_config
from wafl.core.packing import unpack
from wafl.data.datasets import split_dataset, standardised_split

CONFIG = "iris-4x3-b3"  # the smallest circuit: two rounds of two organisations in well under a minute
ROUNDS = 2
FORMATS = ("pt", "safetensors", "onnx")
Exported = dict[tuple[int, str], Path]  # (round, format): the file


@dataclass(frozen=True)
class Federation:
    anvil: Anvil
    out: Path
    deployment_file: Path
    deployment: Deployment
    result: dict[str, Any]
    cfg: ModelConfig
    x_raw: np.ndarray  # the simulation's held-out rows, raw
    y: np.ndarray

    @property
    def w3(self) -> Web3:
        return self.anvil.web3()


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    tmp = tmp_path_factory.mktemp("model")
    with Anvil() as anvil:
        proc = subprocess.run(
            [sys.executable, "-m", "tools.cli", "simulate", "--config", CONFIG, "--orgs", "2", "--rounds", str(ROUNDS),
             "--rpc-url", anvil.url, "--round-timeout", "120", "--out", str(tmp / "sim")],
            capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        result = json.loads((tmp / "sim" / "results.json").read_text())
        assert [r["round"] for r in result["rounds"]] == [1, 2] and all(r["accepted"] == 2 for r in result["rounds"])
        cfg = load_config(CONFIG)
        _, x_test, _, y_test = split_dataset(cfg, "iris")  # the bundled split the simulation held out (seed 0)
        deployment_file = tmp / "sim" / "deployment.json"
        yield Federation(anvil, tmp, deployment_file, Deployment.load(deployment_file), result, cfg, x_test, y_test)


def wafl(*argv: str) -> tuple[int, str, str]:
    """`wafl ARGV` in this process (the imports once): exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def exported(federation: Federation) -> Exported:
    """The model after every round, in every format."""
    files = {}
    for round_id in range(1, ROUNDS + 1):
        for fmt in FORMATS:
            out = federation.out / f"round{round_id}.{fmt}"
            code, stdout, stderr = wafl("model", "export", "--deployment", str(federation.deployment_file),
                                        "--rpc-url", federation.anvil.url, "--round", str(round_id), "--out", str(out))
            assert code == 0, stderr
            line = json.loads(stdout)
            assert (line["out"], line["round"], line["format"]) == (str(out), round_id, fmt) and out.is_file()
            if fmt == "onnx":  # the graph was run by onnxruntime against the fixed-point reference
                assert "onnxruntime on 257 sample inputs: classes equal" in line["check"]
            files[(round_id, fmt)] = out
    return files


def chain_reference(federation: Federation, round_id: int) -> tuple[np.ndarray, np.ndarray, int]:
    """The model after `round_id` read straight from the contract's state, and the block holding it:
    the first block whose currentRound is round_id + 1 (each round is finalised in one block)."""
    w3 = federation.w3
    cfg = federation.cfg
    contract = w3.eth.contract(address=Web3.to_checksum_address(federation.deployment.address),
                               abi=federation.deployment.abi)
    block = next(n for n in range(federation.deployment.start_block, w3.eth.block_number + 1)
                 if w3.eth.get_code(contract.address, block_identifier=n)
                 and contract.functions.currentRound().call(block_identifier=n)[0] == round_id + 1)
    flat = unpack(cfg, [int(w) for w in contract.functions.globalModel().call(block_identifier=block)])
    w = np.array(flat[: cfg.d_out * cfg.d_in], dtype=np.int64).reshape(cfg.d_out, cfg.d_in)
    return w, np.array(flat[cfg.d_out * cfg.d_in:], dtype=np.int64), block


def provenance_of(path: Path) -> dict[str, Any]:
    """The provenance a file carries, read with the format's own library (strings parsed as JSON)."""
    if path.suffix == ".pt":
        saved = torch.load(path, weights_only=True)
        provenance: dict[str, Any] = saved["wafl"]
        return provenance
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="numpy") as handle:
            strings = handle.metadata()
    else:
        import onnx

        strings = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    return {k: v if k in {"format", "contract", "block_hash", "transaction_hash", "config_digest", "vk_hash",
                          "keys_kind", "circuit_sha256", "dtype", "exporter"} else json.loads(v)
            for k, v in strings.items()}


def predictions(path: Path, cfg: ModelConfig, x: np.ndarray) -> np.ndarray:
    """Classes from the file run as its format is meant to be: torch nn.Linear, or onnxruntime."""
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (scores,) = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
        classes: np.ndarray = scores.argmax(axis=1)
        return classes
    state = torch.load(path, weights_only=True)["state_dict"] if path.suffix == ".pt" else load_file(str(path))
    module = torch.nn.Linear(cfg.d_in, cfg.d_out)
    module.load_state_dict(state)
    with torch.no_grad():
        classes = module(torch.tensor(x, dtype=torch.float32)).argmax(dim=1).numpy()
    return classes


@pytest.mark.slow
def test_exports_predict_the_fixed_point_reference_classes(federation: Federation, exported: Exported) -> None:
    cfg, deployment, w3 = federation.cfg, federation.deployment, federation.w3
    record = deployment.standardisation
    assert record is not None  # simulate records the federation's standardisation in the artifact
    x = (federation.x_raw - np.asarray(record["mean"])) / np.asarray(record["std"])
    assert np.array_equal(x, standardised_split(cfg, "iris")[1])  # the very held-out values of the run
    scale = float(1 << cfg.frac_bits)
    for round_id in range(1, ROUNDS + 1):
        w, b, block = chain_reference(federation, round_id)
        reference = (x @ (w / scale).T + b / scale).argmax(axis=1)
        for fmt in FORMATS:
            path = exported[(round_id, fmt)]
            assert np.array_equal(predictions(path, cfg, x), reference), (round_id, fmt)
            provenance = provenance_of(path)
            assert provenance == {
                "format": "wafl-model/1", "chain_id": 31337, "contract": Web3.to_checksum_address(deployment.address),
                "round": round_id, "accepted": 2, "block_number": block,
                "block_hash": w3.eth.get_block(block)["hash"].to_0x_hex(),
                "block_timestamp": w3.eth.get_block(block)["timestamp"],
                "transaction_hash": provenance["transaction_hash"], "config": cfg.model_dump(mode="json"),
                "config_digest": cfg.digest, "vk_hash": deployment.vk_hash, "keys_kind": "development",
                "circuit_sha256": deployment.circuit_sha256, "standardisation": record, "dtype": "float32",
                "exporter": f"wafl {wafl_version}",
            }, (round_id, fmt)
            receipt = w3.eth.get_transaction_receipt(provenance["transaction_hash"])
            assert receipt["blockNumber"] == block
        # The weights themselves: the chain's, exactly (float32 holds every 16-bit lane over 2^10).
        state = load_file(str(exported[(round_id, "safetensors")]))
        assert np.array_equal(state["weight"].double().numpy() * scale, w)
        assert np.array_equal(state["bias"].double().numpy() * scale, b)
    assert not np.array_equal(chain_reference(federation, 1)[0], chain_reference(federation, 2)[0])


@pytest.mark.slow
def test_export_defaults_to_the_last_finalised_round(federation: Federation, tmp_path: Path) -> None:
    out = tmp_path / "latest.safetensors"
    code, stdout, stderr = wafl("model", "export", "--deployment", str(federation.deployment_file),
                                "--rpc-url", federation.anvil.url, "--out", str(out))
    assert code == 0, stderr
    line = json.loads(stdout)
    assert line["round"] == ROUNDS and line["format"] == "safetensors" and line["standardisation"] == "recorded"
    assert line["check"] == "weights read back bit for bit"
    assert provenance_of(out)["round"] == ROUNDS
    assert not list(tmp_path.glob(".*partial"))  # written beside, checked, renamed


@pytest.mark.slow
def test_evaluate_reproduces_the_accuracy_simulate_reported(federation: Federation, exported: Exported,
                                                            tmp_path: Path) -> None:
    cfg = federation.cfg
    header = ",".join(f"f{i}" for i in range(cfg.d_in)) + ",label"
    csv_path = tmp_path / "held-out.csv"
    csv_path.write_text(header + "\n" + "\n".join(",".join([*map(repr, row.tolist()), str(label)])
                                                  for row, label in zip(federation.x_raw, federation.y, strict=True)))
    npz_path = tmp_path / "held-out.npz"
    np.savez(npz_path, x=federation.x_raw, y=federation.y)
    for round_id in range(1, ROUNDS + 1):
        reported = federation.result["rounds"][round_id - 1]
        for fmt in FORMATS:
            for data in (csv_path, npz_path):
                code, stdout, stderr = wafl("model", "evaluate", "--model", str(exported[(round_id, fmt)]),
                                            "--data", str(data), "--config", CONFIG, "--json")
                assert code == 0, stderr
                figures = json.loads(stdout)
                # The same weights, data and arithmetic as the simulation's reference: equal to the last bit.
                assert (figures["accuracy"], figures["loss"]) == (reported["accuracy"], reported["loss"]), (
                    round_id, fmt, data.suffix)
                assert figures["rows"] == len(federation.y) == 38 and figures["round"] == round_id
    # Data already standardised: as it is, with --standardised.
    standardised = tmp_path / "standardised.npz"
    np.savez(standardised, x=standardised_split(cfg, "iris")[1], y=federation.y)
    code, stdout, _ = wafl("model", "evaluate", "--model", str(exported[(ROUNDS, "onnx")]),
                           "--data", str(standardised), "--standardised")
    assert code == 0
    accuracy = federation.result["rounds"][-1]["accuracy"]
    assert stdout.startswith(f"accuracy {accuracy:.4f}, loss ") and "standardisation as given" in stdout


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.slow
def test_a_round_never_finalised_is_one_line(federation: Federation, tmp_path: Path) -> None:
    out = tmp_path / "round3.pt"
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "model", "export", "--deployment",
                           str(federation.deployment_file), "--rpc-url", federation.anvil.url, "--round", "3",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    address = Web3.to_checksum_address(federation.deployment.address)
    assert one_line(proc.stderr) == (f"wafl: round 3 was never finalised: the aggregator at {address} has finalised "
                                     "rounds 1 to 2 (round 3 is open)")
    assert not out.exists() and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_chain_without_the_contract_is_one_line(federation: Federation, tmp_path: Path) -> None:
    address = Web3.to_checksum_address(federation.deployment.address)
    with Anvil() as fresh:  # the same chain id, restarted: the deployment is gone
        code, stdout, stderr = wafl("model", "export", "--deployment", str(federation.deployment_file),
                                    "--rpc-url", fresh.url, "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and stdout == ""
    assert one_line(stderr).startswith(f"wafl: chain 31337 has no contract at {address} (block 0): is it the chain")
    # An artifact of another chain: refused before its contract is looked for.
    other = tmp_path / "other-chain.json"
    other.write_text(federation.deployment_file.read_text().replace('"chain_id": 31337', '"chain_id": 11155111'))
    code, _, stderr = wafl("model", "export", "--deployment", str(other), "--rpc-url", federation.anvil.url,
                           "--out", str(tmp_path / "m.pt"))
    assert code == 2
    assert one_line(stderr) == "wafl: the node is on chain 31337, the deployment artifact's is 11155111"
    assert not list(tmp_path.glob("m.*"))


@pytest.mark.slow
def test_a_model_of_another_configuration_is_one_line(federation: Federation, exported: Exported,
                                                      tmp_path: Path) -> None:
    model = exported[(ROUNDS, "pt")]
    wine = tmp_path / "wine.csv"  # 13 features: data of the wine configuration
    wine.write_text(",".join(f"f{i}" for i in range(13)) + ",label\n" + "\n".join(
        ",".join(["1.0"] * 13 + [str(i % 3)]) for i in range(8)) + "\n")
    held_out = tmp_path / "held-out.npz"
    np.savez(held_out, x=federation.x_raw, y=federation.y)
    cases = [
        (["--model", str(model), "--data", str(held_out), "--config", "wine-13x3-b16"],
         f"wafl: {model} is a model of configuration iris-4x3-b3 (4 x 3), not of --config wine-13x3-b16 (13 x 3)"),
        (["--model", str(model), "--data", str(wine)],
         f"wafl: {wine}: 13 feature columns, configuration iris-4x3-b3 needs 4"),
    ]
    for argv, expected in cases:
        code, stdout, stderr = wafl("model", "evaluate", *argv)
        assert code == 2 and stdout == "", argv
        assert one_line(stderr) == expected
    # The same name with other settings is another configuration too.
    changed = tmp_path / "iris-changed.yaml"
    changed.write_text(json.dumps({**load_config(CONFIG).model_dump(mode="json"), "lr_shift": 5}))  # JSON is YAML
    code, _, stderr = wafl("model", "evaluate", "--model", str(model), "--data", str(held_out),
                           "--config", str(changed))
    assert code == 2 and one_line(stderr).endswith("not of --config iris-4x3-b3 (4 x 3) (same name, other settings)")


@pytest.mark.slow
def test_other_bad_files_are_one_line(federation: Federation, tmp_path: Path) -> None:
    held_out = tmp_path / "held-out.npz"
    np.savez(held_out, x=federation.x_raw, y=federation.y)
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": torch.nn.Linear(4, 3).state_dict()}, plain)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not a model")
    cases = [
        (["model", "export", "--deployment", str(federation.deployment_file), "--rpc-url", federation.anvil.url,
          "--out", str(tmp_path / "model.bin")],
         f"wafl: --out {tmp_path / 'model.bin'}: name a .pt, .safetensors or .onnx file (its suffix picks the format)"),
        (["model", "evaluate", "--model", str(plain), "--data", str(held_out)],
         f"wafl: {plain} is not a model file `wafl model export` wrote (no wafl-model/1 provenance)"),
        (["model", "evaluate", "--model", str(garbage), "--data", str(held_out)],
         f"wafl: {garbage} is not an ONNX file (DecodeError)"),
    ]
    for argv, expected in cases:
        code, stdout, stderr = wafl(*argv)
        assert code == 2 and stdout == "", argv
        assert one_line(stderr) == expected


@pytest.mark.slow
def test_a_model_without_a_recorded_standardisation_takes_standardised_data_only(federation: Federation,
                                                                                 tmp_path: Path) -> None:
    artifact = json.loads(federation.deployment_file.read_text())
    artifact["standardisation"] = None  # a deployment that recorded none (`wafl deploy` does not, yet)
    (tmp_path / "deployment.json").write_text(json.dumps(artifact))
    model = tmp_path / "model.onnx"
    code, stdout, stderr = wafl("model", "export", "--deployment", str(tmp_path / "deployment.json"),
                                "--rpc-url", federation.anvil.url, "--round", "1", "--out", str(model))
    assert code == 0 and json.loads(stdout)["standardisation"] == "none", stderr
    raw = tmp_path / "raw.npz"
    np.savez(raw, x=federation.x_raw, y=federation.y)
    code, _, stderr = wafl("model", "evaluate", "--model", str(model), "--data", str(raw))
    assert code == 2
    assert one_line(stderr) == (f"wafl: {model} records no standardisation of raw features (its deployment artifact "
                                f"had none): pass --standardised if the features in {raw} are already standardised")
    standardised = tmp_path / "standardised.npz"
    np.savez(standardised, x=standardised_split(federation.cfg, "iris")[1], y=federation.y)
    code, stdout, stderr = wafl("model", "evaluate", "--model", str(model), "--data", str(standardised),
                                "--standardised", "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["accuracy"] == federation.result["rounds"][0]["accuracy"]


@pytest.mark.parametrize("weight_bits", [16, 30])
def test_every_lane_value_survives_every_format(weight_bits: int, tmp_path: Path) -> None:
    """Without a chain: the extreme lane values and random ones, in float32 (lanes of up to 25 bits)
    or float64 (wider), written, read back and run, equal to the fixed-point values exactly."""
    from tools.model import Provenance, load_model, write_model
    from wafl.core.config import parse_config
    from wafl.core.fixedpoint import Weights

    cfg = parse_config({**load_config(CONFIG).model_dump(mode="json"), "name": "wide", "weight_bits": weight_bits})
    rng = np.random.default_rng(weight_bits)
    flat = [cfg.weight_min, cfg.weight_max, -1, 1, *rng.integers(cfg.weight_min, cfg.weight_max + 1, cfg.n_weights - 4)]
    weights = Weights.from_flat(cfg, [int(v) for v in flat])
    dtype = "float32" if weight_bits <= 25 else "float64"
    provenance = Provenance(
        chain_id=1, contract="0x" + "ab" * 20, round=3, accepted=2, block_number=7, block_hash="0x" + "cd" * 32,
        block_timestamp=1, transaction_hash="0x" + "ef" * 32, vk_hash="0x" + "01" * 32,
        config=cfg.model_dump(mode="json"), config_digest=cfg.digest, keys_kind="development", circuit_sha256="00",
        standardisation=None, dtype=dtype, exporter="test")
    scale = float(1 << cfg.frac_bits)
    x = rng.normal(0, 1, (50, cfg.d_in))
    w = np.asarray(weights.w, dtype=np.float64)
    b = np.asarray(weights.b, dtype=np.float64)
    reference = (x @ (w / scale).T + b / scale).argmax(axis=1)
    for fmt in FORMATS:
        out = tmp_path / f"model.{fmt}"
        check = write_model(out, weights, provenance)
        assert check.startswith("weights read back bit for bit")
        loaded = load_model(out)
        assert loaded.provenance == provenance and loaded.config == cfg
        assert np.array_equal(loaded.weight * scale, w) and np.array_equal(loaded.bias * scale, b)
        assert not list(tmp_path.glob(".*.partial"))
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == f"tensor({'float' if dtype == 'float32' else 'double'})"
    (scores,) = session.run(None, {"features": x.astype(dtype)})
    assert np.array_equal(scores.argmax(axis=1), reference)
