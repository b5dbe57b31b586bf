"""`wafl model export` and `wafl model evaluate`: the federation's model in the user's hands.

Export reads the global model after a finalised round from the chain (wafl.chain.history), turns
its fixed-point weights into real values (fixed / 2^F: exact in float32 for lanes of up to 25
bits, else float64) and writes the format the file's suffix names, an `nn.Linear(d_in, d_out)`:

- ``.pt``: ``torch.save({"state_dict": <the module's state_dict>, "wafl": <provenance>})``;
- ``.safetensors``: tensors ``weight`` and ``bias``, the provenance as the header's metadata;
- ``.onnx``: the module exported by torch (one Gemm), the provenance as ``metadata_props``.

The provenance (`Provenance`) says where the weights come from: chain id, contract, round, the
block and its hash, the model configuration, the verification key hash, and the federation's
standardisation of raw features when the deployment artifact records one. Every file written is
read back before it takes its name: the weights must be the chain's, bit for bit, and the ONNX
graph's outputs (onnxruntime) those of the fixed-point reference on sample inputs.

Evaluate reads the weights and the provenance from any of the three formats and computes accuracy
and loss exactly as the simulation's reference does (wafl.data.datasets.evaluate, float64): the
weights are exact, so the figures are the same, to the last bit, as the ones `wafl simulate`
reports for the same round and data.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, get_type_hints

import numpy as np
from pydantic import ConfigDict, TypeAdapter, ValidationError

from tools.errors import UsageError
from wafl import __version__
from wafl.chain.history import ChainModelError, FinalisedModel, ModelOrigin, finalised_model
from wafl.core.config import ConfigError, ModelConfig, load_config, parse_config
from wafl.core.fixedpoint import Weights, quantize
from wafl.data.datasets import evaluate
from wafl.data.standardisation import Standardisation, StandardisationError

# Each command imports what it needs of the heavy rest: export web3 and torch (and onnx), evaluate
# scikit-learn (the data file reader) and the reader of the model file's format.
if TYPE_CHECKING:
    import torch
    from web3 import Web3

    from wafl.chain.artifact import Deployment

FORMAT = "wafl-model/1"
SUFFIXES = (".pt", ".safetensors", ".onnx")
ONNX_OPSET = 17
# Sample inputs the ONNX graph is checked on at export (and a row of zeros).
CHECK_ROWS = 256


class ExportCheckError(RuntimeError):
    """A file written does not hold what was exported: a bug, not bad input."""


@dataclass(frozen=True)
class Provenance(ModelOrigin):
    """Where an exported model comes from (the chain's facts, then the deployment's); every file carries it."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid")

    config: dict[str, Any]
    config_digest: str
    keys_kind: str
    circuit_sha256: str
    standardisation: dict[str, list[float]] | None
    dtype: str
    exporter: str
    format: str = FORMAT

    @classmethod
    def of(cls, model: FinalisedModel, deployment: Deployment, cfg: ModelConfig) -> Provenance:
        return cls(
            **asdict(model.origin), config=cfg.model_dump(mode="json"), config_digest=cfg.digest,
            keys_kind=deployment.keys_kind, circuit_sha256=deployment.circuit_sha256,
            standardisation=deployment.standardisation, dtype=weight_dtype(cfg), exporter=f"wafl {__version__}",
        )

    def plain(self) -> dict[str, Any]:
        return asdict(self)

    def strings(self) -> dict[str, str]:
        """The string-to-string form that safetensors' and ONNX's metadata take: text as it is,
        everything else as JSON."""
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in self.plain().items()}

    @classmethod
    def read(cls, raw: object, path: Path, *, strings: bool) -> Provenance:
        """The provenance a file holds (`strings`: in the string-to-string form); UsageError if none."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise UsageError(f"{path} is not a model file `wafl model export` wrote (no {FORMAT} provenance)")
        try:
            if strings:
                text = {name for name, kind in get_type_hints(cls).items() if kind is str}
                raw = {k: v if k in text else json.loads(v) for k, v in raw.items()}
            return TypeAdapter(cls).validate_python(raw)
        except (ValidationError, json.JSONDecodeError, TypeError) as exc:
            raise UsageError(f"{path}: its provenance is damaged ({_first_problem(exc)})") from None

    def configuration(self) -> ModelConfig:
        return parse_config(self.config, source="the model file's provenance")


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"
    return " ".join(str(exc).split())


def weight_dtype(cfg: ModelConfig) -> str:
    """float32 holds every weight exactly (an integer below 2^24 over 2^F) up to 25-bit lanes."""
    return "float32" if cfg.weight_bits <= 25 else "float64"


def check_out(out: Path) -> None:
    if out.suffix.lower() not in SUFFIXES:
        raise UsageError(f"--out {out}: name a .pt, .safetensors or .onnx file (its suffix picks the format)")


# ---- export ------------------------------------------------------------------------------------


def export_model(w3: Web3, deployment: Deployment, round_id: int | None, out: Path) -> dict[str, Any]:
    """Write the model after `round_id` (default: the last finalised) to `out`; what was written."""
    started = time.monotonic()
    cfg = deployment.model_config
    if deployment.standardisation is not None:  # a record that evaluating the file would refuse is refused now
        try:
            Standardisation.from_record(deployment.standardisation, cfg.d_in, "the deployment artifact")
        except StandardisationError as exc:
            raise UsageError(str(exc)) from None
    try:
        model = finalised_model(w3, deployment, round_id)
    except ChainModelError as exc:
        raise UsageError(str(exc)) from None
    provenance = Provenance.of(model, deployment, cfg)
    check = write_model(out, model.weights, provenance)
    return {
        "out": str(out), "format": out.suffix.lower()[1:], **asdict(model.origin), "config": cfg.name,
        "standardisation": "recorded" if provenance.standardisation else "none",
        "check": check, "seconds": round(time.monotonic() - started, 2),
    }


def write_model(out: Path, weights: Weights, provenance: Provenance) -> str:
    """Write fixed-point `weights` as real values in the format `out`'s suffix names, with their
    provenance; what was checked of the file."""
    cfg = provenance.configuration()
    scale = float(1 << cfg.frac_bits)
    weight = np.asarray(weights.w, dtype=np.float64) / scale  # exact: a power-of-two divisor
    bias = np.asarray(weights.b, dtype=np.float64) / scale
    suffix = out.suffix.lower()
    # Written beside, checked, then renamed: a file of the final name is always a checked one.
    partial = out.with_name(f".{out.name}.partial")
    try:
        module = linear(cfg, weight, bias)
        if suffix == ".pt":
            _write_pt(partial, module, provenance)
        elif suffix == ".safetensors":
            _write_safetensors(partial, module, provenance)
        elif suffix == ".onnx":
            _write_onnx(partial, module, provenance)
        else:
            check_out(out)
        check = _check_written(partial, suffix, cfg, weight, bias, provenance)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return check


def linear(cfg: ModelConfig, weight: np.ndarray, bias: np.ndarray) -> torch.nn.Linear:
    """The `nn.Linear(d_in, d_out)` holding these real weights (in the configuration's dtype)."""
    import torch

    dtype = getattr(torch, weight_dtype(cfg))
    module = torch.nn.Linear(cfg.d_in, cfg.d_out, dtype=dtype)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weight))
        module.bias.copy_(torch.from_numpy(bias))
    return module.eval()


def _write_pt(path: Path, module: torch.nn.Linear, provenance: Provenance) -> None:
    import torch

    torch.save({"state_dict": module.state_dict(), "wafl": provenance.plain()}, path)


def _write_safetensors(path: Path, module: torch.nn.Linear, provenance: Provenance) -> None:
    from safetensors.torch import save

    # Bytes written here rather than by save_file, which makes its files readable by their owner only.
    path.write_bytes(save(module.state_dict(), metadata=provenance.strings()))


def _write_onnx(path: Path, module: torch.nn.Linear, provenance: Provenance) -> None:
    import onnx
    import torch

    sample = torch.zeros(1, module.in_features, dtype=module.weight.dtype)
    with warnings.catch_warnings():
        # The TorchScript exporter: the one that needs no onnxscript, and is deprecated from torch 2.9.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (sample,), str(path), dynamo=False, input_names=["features"],
                          output_names=["scores"], dynamic_axes={"features": {0: "rows"}, "scores": {0: "rows"}},
                          opset_version=ONNX_OPSET)
    graph = onnx.load(str(path))
    cfg = provenance.configuration()
    graph.doc_string = (f"WaFL global model after round {provenance.round} of {provenance.contract} on chain "
                        f"{provenance.chain_id}: {cfg.name}, scores = features @ weight.T + bias")
    onnx.helper.set_model_props(graph, provenance.strings())
    onnx.save(graph, str(path))


def _check_written(path: Path, suffix: str, cfg: ModelConfig, weight: np.ndarray, bias: np.ndarray,
                   provenance: Provenance) -> str:
    """What was checked of the file at `path`; ExportCheckError if it does not hold the export."""
    loaded = load_model(path, suffix)
    if loaded.provenance != provenance:
        raise ExportCheckError(f"{path}: the provenance read back differs from the one written")
    if not (np.array_equal(loaded.weight, weight) and np.array_equal(loaded.bias, bias)):
        raise ExportCheckError(f"{path}: the weights read back differ from the chain's")
    if suffix != ".onnx":
        return "weights read back bit for bit"
    rows, error = _check_onnx(path, cfg, weight, bias)
    return f"weights read back bit for bit; onnxruntime on {rows} sample inputs: classes equal, max |error| {error:.2g}"


def _check_onnx(path: Path, cfg: ModelConfig, weight: np.ndarray, bias: np.ndarray) -> tuple[int, float]:
    """The graph run by onnxruntime against the fixed-point reference (float64 on the exact weights)
    on sample inputs of the data's fixed-point grid: outputs within the rounding of the graph's
    dtype, and the same classes wherever the reference's top two are further apart than that."""
    import onnxruntime  # type: ignore[import-untyped]  # it ships no type information

    rng = np.random.default_rng(0)
    scale = float(1 << cfg.frac_bits)
    x = quantize(rng.normal(0.0, 1.5, (CHECK_ROWS, cfg.d_in)), cfg).values / scale
    x = np.vstack([np.zeros((1, cfg.d_in)), x])
    reference = x @ weight.T + bias
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(["scores"], {"features": x.astype(weight_dtype(cfg))})
    # Each output sums d_in + 1 terms, each rounded once, and is rounded d_in times: a bound.
    unit = float(np.finfo(weight_dtype(cfg)).eps)
    tolerance = (cfg.d_in + 2) * unit * (np.abs(x) @ np.abs(weight).T + np.abs(bias)) + 1e-30
    error = np.abs(scores.astype(np.float64) - reference)
    if np.any(error > tolerance):
        row = int(np.argwhere(error > tolerance)[0][0])
        raise ExportCheckError(f"{path}: onnxruntime gives {scores[row].tolist()} on sample row {row}, "
                               f"the fixed-point reference {reference[row].tolist()}")
    ordered = np.sort(reference, axis=1)
    clear = ordered[:, -1] - ordered[:, -2] > 2 * tolerance.max(axis=1) if cfg.d_out > 1 else np.ones(len(x), bool)
    if np.any(scores.argmax(axis=1)[clear] != reference.argmax(axis=1)[clear]):
        raise ExportCheckError(f"{path}: onnxruntime's classes differ from the fixed-point reference's")
    return len(x), float(error.max())


# ---- reading a model file ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    weight: np.ndarray  # float64, d_out x d_in: exactly the file's values
    bias: np.ndarray  # float64, d_out
    provenance: Provenance
    config: ModelConfig


def load_model(path: Path, suffix: str | None = None) -> LoadedModel:
    """The weights and provenance of a model file `wafl model export` wrote (the format: `suffix`,
    default the file's own); UsageError saying why a file is not one."""
    suffix = (suffix or path.suffix).lower()
    if suffix not in SUFFIXES:
        raise UsageError(f"{path}: unknown model format {path.suffix!r} (.pt, .safetensors or .onnx)")
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    readers = {".pt": _read_pt, ".safetensors": _read_safetensors, ".onnx": _read_onnx}
    weight, bias, provenance = readers[suffix](path)
    try:
        cfg = provenance.configuration()
    except ConfigError as exc:
        raise UsageError(f"{path}: {exc}") from None
    if cfg.digest != provenance.config_digest:
        raise UsageError(f"{path}: its provenance's configuration does not match its digest: the file was changed")
    if weight.shape != (cfg.d_out, cfg.d_in) or bias.shape != (cfg.d_out,):
        raise UsageError(f"{path}: weights of shape {weight.shape} and bias {bias.shape} are not those of its "
                         f"configuration {cfg.name} ({cfg.d_out} x {cfg.d_in})")
    return LoadedModel(weight.astype(np.float64), bias.astype(np.float64), provenance, cfg)


Arrays = tuple[np.ndarray, np.ndarray, Provenance]


def _read_pt(path: Path) -> Arrays:
    import torch

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # not a torch file, or one holding more than tensors and plain data
        raise UsageError(f"{path} is not a torch file `wafl model export` wrote ({type(exc).__name__})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise UsageError(f"{path} is not a model file `wafl model export` wrote (no state_dict)")
    provenance = Provenance.read(saved.get("wafl"), path, strings=False)
    return (*_tensors(saved["state_dict"], path, lambda t: t.detach().cpu().numpy()), provenance)


def _read_safetensors(path: Path) -> Arrays:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (a handle, not a dict)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UsageError(f"{path} is not a safetensors file ({' '.join(str(exc).split())})") from None
    provenance = Provenance.read(metadata, path, strings=True)
    return (*_tensors(tensors, path, np.asarray), provenance)


def _read_onnx(path: Path) -> Arrays:
    import onnx
    from onnx import numpy_helper

    try:
        graph = onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends: not an ONNX file
        raise UsageError(f"{path} is not an ONNX file ({type(exc).__name__})") from None
    metadata = {p.key: p.value for p in graph.metadata_props}
    provenance = Provenance.read(metadata, path, strings=True)
    tensors = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer}
    return (*_tensors(tensors, path, np.asarray), provenance)


def _tensors(tensors: dict[str, Any], path: Path, to_numpy: Any) -> tuple[np.ndarray, np.ndarray]:
    if not {"weight", "bias"} <= set(tensors):
        raise UsageError(f"{path}: holds no 'weight' and 'bias' of a linear layer (it has {sorted(tensors)})")
    return np.asarray(to_numpy(tensors["weight"])), np.asarray(to_numpy(tensors["bias"]))


# ---- evaluate ------------------------------------------------------------------------------------


def evaluate_model(path: Path, data: Path, config: str | None, standardised: bool) -> dict[str, Any]:
    """Accuracy and loss of the model file on a data file of `wafl simulate --data`'s format,
    standardised as the federation did (unless `standardised`: the data already is)."""
    from wafl.data.fedsplit import read_file

    started = time.monotonic()
    model = load_model(path)
    cfg = model.config
    if config is not None:
        wanted = load_config(config)
        if wanted.digest != cfg.digest:
            same_name = " (same name, other settings)" if wanted.name == cfg.name else ""
            raise UsageError(f"{path} is a model of configuration {cfg.name} ({cfg.d_in} x {cfg.d_out}), "
                             f"not of --config {wanted.name} ({wanted.d_in} x {wanted.d_out}){same_name}")
    x, y = read_file(data, cfg)
    record = model.provenance.standardisation
    if standardised:
        how = "as given (--standardised)"
    elif record is None:
        raise UsageError(f"{path} records no standardisation of raw features (its deployment artifact had none): "
                         f"pass --standardised if the features in {data} are already standardised")
    else:
        try:
            x = Standardisation.from_record(record, cfg.d_in, str(path)).apply(x)
        except StandardisationError as exc:
            raise UsageError(str(exc)) from None
        how = "the federation's (recorded in the model file)"
    scale = float(1 << cfg.frac_bits)
    # Times 2^F: exact, so that the reference computes with the very weights of the file.
    accuracy, loss = evaluate(cfg, model.weight * scale, model.bias * scale, x, y)
    provenance = model.provenance
    return {
        "accuracy": accuracy, "loss": loss, "rows": len(y), "data": str(data), "model": str(path),
        "config": cfg.name, "round": provenance.round, "chain_id": provenance.chain_id,
        "contract": provenance.contract, "block_number": provenance.block_number, "standardisation": how,
        "seconds": round(time.monotonic() - started, 2),
    }
