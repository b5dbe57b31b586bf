"""The trainer's fixed-point training step in torch int64 (docs/design.md section 2).

This reproduces :func:`wafl.core.fixedpoint.train_step` bit for bit: same inputs, same range
checks (same exception type and message), same floor truncation, same clipping and saturation,
same outputs. It knows nothing of the broker; the service wraps it.

Why int64 is exact here: ``ModelConfig`` refuses any configuration whose intermediates
(forward accumulator, error, gradients) could reach 2^62, every input is range-checked before
any arithmetic and every step's weights are saturated into their lanes, so no sum or product
below can wrap. Integer matmul is exact whatever the accumulation order, and ``>>`` on int64
tensors is an arithmetic shift, i.e. floor division by a power of two for negative values too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeAlias

import numpy as np
import torch

from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import FixedPointRangeError, Weights, quantize

__all__ = [
    "IntMatrixLike",
    "QuantizedFeatures",
    "TorchFixedPointTrainer",
    "floor_shift",
    "one_hot",
    "quantize_features",
]

IntMatrixLike: TypeAlias = torch.Tensor | np.ndarray | Sequence[Sequence[int]]

# dtypes whose every value is exactly an int64: anything wider or unsigned-64 could wrap.
_EXACT_INT_DTYPES = frozenset({torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool})


def floor_shift(t: torch.Tensor, shift: int) -> torch.Tensor:
    """floor(t / 2^shift) for an int64 tensor (arithmetic shift right).

    Shifts of 63 or more give 0 or -1, as Python's ``>>`` does; the clamp keeps that
    independent of how the backend treats shift counts at or beyond the word width.
    """
    if shift < 0:
        raise ValueError(f"shift must be non-negative, got {shift}")
    return torch.bitwise_right_shift(t, min(shift, 63))


def _check_tensor_range(what: str, t: torch.Tensor, low: int, high: int) -> None:
    """The reference's ``check_range`` on a tensor: first offending flat index, same message."""
    flat = t.reshape(-1)
    bad = (flat < low) | (flat > high)
    if bool(bad.any()):
        index = int(torch.nonzero(bad)[0, 0])
        raise FixedPointRangeError(f"{what}[{index}] = {int(flat[index])} is outside [{low}, {high}]")


def _check_list_range(what: str, values: Sequence[int], low: int, high: int) -> None:
    for index, value in enumerate(values):
        if not low <= value <= high:
            raise FixedPointRangeError(f"{what}[{index}] = {value} is outside [{low}, {high}]")


class _Matrix:
    """An input matrix after its shape check, before its range check and int64 conversion.

    List inputs stay Python ints until they are range-checked, so that a value too large for
    int64 is reported as a range error (as the reference does) rather than a conversion error.
    """

    def __init__(self, name: str, value: IntMatrixLike, rows: int, cols: int) -> None:
        self.name = name
        self.tensor: torch.Tensor | None = None
        self.values: list[int] = []
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if isinstance(value, torch.Tensor):
            if value.dtype not in _EXACT_INT_DTYPES:
                raise TypeError(f"{name} must hold integers (int8..int64, uint8 or bool), not {value.dtype}")
            if tuple(value.shape) != (rows, cols):
                raise ValueError(f"{name} must be {rows} x {cols}")
            self.tensor = value.detach().to(device="cpu", dtype=torch.int64)
            return
        if len(value) != rows or any(len(r) != cols for r in value):
            raise ValueError(f"{name} must be {rows} x {cols}")
        for r in value:
            for v in r:
                if not isinstance(v, int | np.integer):
                    raise TypeError(f"{name} must hold integers, found {type(v).__name__}")
                self.values.append(int(v))

    def check_range(self, what: str, low: int, high: int) -> None:
        if self.tensor is not None:
            _check_tensor_range(what, self.tensor, low, high)
        else:
            _check_list_range(what, self.values, low, high)

    def to_tensor(self, rows: int, cols: int) -> torch.Tensor:
        if self.tensor is not None:
            return self.tensor
        return torch.tensor(self.values, dtype=torch.int64).reshape(rows, cols)


class TorchFixedPointTrainer:
    """E local steps of the proven dense-layer MSE gradient descent, on int64 tensors."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg

    def step(self, weights: Weights, x: IntMatrixLike, y: IntMatrixLike) -> Weights:
        """New weights after ``cfg.local_steps`` steps on the batch (X, Y).

        x is batch x d_in (fixed-point features), y is batch x d_out (targets in
        [0, target_max], one-hot for classification); tensors, integer arrays or nested lists.
        Raises ``FixedPointRangeError`` (message naming tensor and flat index, as the
        reference) for an input out of range; never for the data's effect on the weights (the
        step is bounded and saturated).
        """
        cfg = self.cfg
        # Shapes first, then ranges in the reference's order: weights, X, Y.
        w_in = _Matrix("W", weights.w, cfg.d_out, cfg.d_in)
        if len(weights.b) != cfg.d_out:
            raise ValueError(f"b must have {cfg.d_out} entries")
        b_in = _Matrix("b", [list(weights.b)], 1, cfg.d_out)
        x_in = _Matrix("X", x, cfg.batch, cfg.d_in)
        y_in = _Matrix("Y", y, cfg.batch, cfg.d_out)
        _check_list_range("weights", w_in.values + b_in.values, cfg.weight_min, cfg.weight_max)
        x_in.check_range("X", cfg.data_min, cfg.data_max)
        y_in.check_range("Y", 0, cfg.target_max)

        w, b = self.step_tensors(
            w_in.to_tensor(cfg.d_out, cfg.d_in),
            b_in.to_tensor(1, cfg.d_out).reshape(cfg.d_out),
            x_in.to_tensor(cfg.batch, cfg.d_in),
            y_in.to_tensor(cfg.batch, cfg.d_out),
        )
        return Weights(w=w.tolist(), b=b.tolist())

    def step_tensors(
        self, w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The arithmetic on already validated int64 tensors: returns (W', b').

        The caller guarantees shapes and input ranges (``step`` does). Every step's change is
        clipped and its weights saturated into their lanes (the reference's ``bounded_update``),
        so no step can leave the range the next one's int64 bounds assume.
        """
        cfg = self.cfg
        f, s = cfg.frac_bits, cfg.lr_shift
        y_scaled = y * (1 << f)
        for _ in range(cfg.local_steps):
            err = floor_shift(x @ w.T, f) + b - y_scaled  # B x d_out
            w = self._bounded(w, floor_shift(err.T @ x, f + s))  # d_out x d_in
            b = self._bounded(b, floor_shift(err.sum(dim=0), s))  # d_out
        return w, b

    def _bounded(self, weights: torch.Tensor, decrement: torch.Tensor) -> torch.Tensor:
        """:func:`wafl.core.fixedpoint.bounded_update` on tensors (|values| < 2^63: exact)."""
        cfg, bound = self.cfg, self.cfg.step_change_bound
        return torch.clamp(weights - torch.clamp(decrement, -bound, bound - 1), cfg.weight_min, cfg.weight_max)


class QuantizedFeatures(NamedTuple):
    values: torch.Tensor
    """int64, same shape as the input: round(v * 2^F) clipped to [data_min, data_max]."""
    clipped: int
    """How many entries were clipped to the data range."""


def quantize_features(x_float: torch.Tensor | np.ndarray, cfg: ModelConfig) -> QuantizedFeatures:
    """:func:`wafl.core.fixedpoint.quantize` for tensors: round(v * 2^F) (half to even, as
    ``cfg.to_fixed``), clipped to [data_min, data_max]. NaN is refused; +-inf is clipped (and counted)."""
    if isinstance(x_float, torch.Tensor):
        x_float = x_float.detach().to(device="cpu", dtype=torch.float64).numpy()  # exact for float16/32
    quantized = quantize(x_float, cfg)
    return QuantizedFeatures(values=torch.from_numpy(quantized.values), clipped=quantized.clipped)


def one_hot(labels: torch.Tensor | np.ndarray | Sequence[int], cfg: ModelConfig) -> torch.Tensor:
    """int64 batch x d_out one-hot targets (1 at the label) for class labels in [0, d_out)."""
    t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
    if t.dim() != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"labels must be integers, not {t.dtype}")
    t = t.to(torch.int64)
    bad = (t < 0) | (t >= cfg.d_out)
    if bool(bad.any()):
        index = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"labels[{index}] = {int(t[index])} is not a class in [0, {cfg.d_out})")
    return torch.nn.functional.one_hot(t, num_classes=cfg.d_out).to(torch.int64)
