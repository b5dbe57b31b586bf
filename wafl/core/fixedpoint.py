"""Plain-Python reference of the proven training step and of FedAvg (docs/design.md section 2),
and the one quantisation of real features to the fixed-point data the step takes.

This is the definition: the torch trainer, the ZoKrates circuit and the contract are tested
against it bit for bit. Truncation is floor division by a power of two (``>>`` on Python ints
floors for negative values too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from wafl.core.config import ModelConfig

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

Matrix = list[list[int]]
Vector = list[int]


class FixedPointRangeError(ValueError):
    """A value lies outside the range the configuration (and so the circuit) admits."""


@dataclass(frozen=True)
class Weights:
    """A dense layer: w is d_out x d_in, b is d_out, all fixed-point integers."""

    w: Matrix
    b: Vector

    def flat(self) -> list[int]:
        """The lane order used everywhere: W row-major, then b."""
        return [v for row in self.w for v in row] + list(self.b)

    @classmethod
    def from_flat(cls, cfg: ModelConfig, values: Sequence[int]) -> Weights:
        if len(values) != cfg.n_weights:
            raise ValueError(f"expected {cfg.n_weights} weight values, got {len(values)}")
        w = [list(values[k * cfg.d_in : (k + 1) * cfg.d_in]) for k in range(cfg.d_out)]
        return cls(w=w, b=list(values[cfg.d_out * cfg.d_in :]))

    @classmethod
    def zeros(cls, cfg: ModelConfig) -> Weights:
        return cls.from_flat(cfg, [0] * cfg.n_weights)


def check_range(what: str, values: Sequence[int], low: int, high: int) -> None:
    for index, value in enumerate(values):
        if not low <= value <= high:
            raise FixedPointRangeError(f"{what}[{index}] = {value} is outside [{low}, {high}]")


def check_shapes(cfg: ModelConfig, weights: Weights, x: Matrix, y: Matrix) -> None:
    if len(weights.w) != cfg.d_out or any(len(r) != cfg.d_in for r in weights.w):
        raise ValueError(f"W must be {cfg.d_out} x {cfg.d_in}")
    if len(weights.b) != cfg.d_out:
        raise ValueError(f"b must have {cfg.d_out} entries")
    if len(x) != cfg.batch or any(len(r) != cfg.d_in for r in x):
        raise ValueError(f"X must be {cfg.batch} x {cfg.d_in}")
    if len(y) != cfg.batch or any(len(r) != cfg.d_out for r in y):
        raise ValueError(f"Y must be {cfg.batch} x {cfg.d_out}")


def check_inputs(cfg: ModelConfig, weights: Weights, x: Matrix, y: Matrix) -> None:
    """Everything the circuit range-checks, checked before any arithmetic."""
    check_shapes(cfg, weights, x, y)
    check_range("weights", weights.flat(), cfg.weight_min, cfg.weight_max)
    check_range("X", [v for r in x for v in r], cfg.data_min, cfg.data_max)
    check_range("Y", [v for r in y for v in r], 0, cfg.target_max)


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def bounded_update(cfg: ModelConfig, weight: int, decrement: int) -> int:
    """One weight's bounded step (docs/design.md section 2): the decrement (the truncated
    gradient step) is saturated to [-B_step, B_step - 1], B_step = ``cfg.step_change_bound``, and
    the new weight to its lane [weight_min, weight_max]. So |new - weight| <= B_step, and every
    step's weights are lanes whatever the data."""
    bound = cfg.step_change_bound
    return _clamp(weight - _clamp(decrement, -bound, bound - 1), cfg.weight_min, cfg.weight_max)


def train_step(cfg: ModelConfig, weights: Weights, x: Matrix, y: Matrix) -> Weights:
    """E local steps of mini-batch gradient descent on the MSE loss, in fixed point, each
    weight's change clipped and the weight saturated into its lane (``bounded_update``).

    Never raises on in-range inputs: the only errors are shapes and inputs outside their ranges
    (what the circuit refuses too). No weight moves by more than ``cfg.max_weight_change``.
    """
    check_inputs(cfg, weights, x, y)
    f, s = cfg.frac_bits, cfg.lr_shift
    w = [row[:] for row in weights.w]
    b = weights.b[:]
    for _ in range(cfg.local_steps):
        err = [
            [
                (sum(x[i][j] * w[k][j] for j in range(cfg.d_in)) >> f) + b[k] - (y[i][k] << f)
                for k in range(cfg.d_out)
            ]
            for i in range(cfg.batch)
        ]
        w = [
            [
                bounded_update(cfg, w[k][j], sum(err[i][k] * x[i][j] for i in range(cfg.batch)) >> (f + s))
                for j in range(cfg.d_in)
            ]
            for k in range(cfg.d_out)
        ]
        b = [bounded_update(cfg, b[k], sum(err[i][k] for i in range(cfg.batch)) >> s) for k in range(cfg.d_out)]
    return Weights(w=w, b=b)


def fedavg(cfg: ModelConfig, updates: Sequence[Weights]) -> Weights:
    """Element-wise floor of the mean, exactly as the contract's finalization computes it."""
    if not updates:
        raise ValueError("FedAvg of no updates")
    if len(updates) > cfg.max_participants:
        raise ValueError(f"at most {cfg.max_participants} updates fit the lane headroom")
    flats = [u.flat() for u in updates]
    n = len(flats)
    return Weights.from_flat(cfg, [sum(col) // n for col in zip(*flats, strict=True)])


class Quantized(NamedTuple):
    values: np.ndarray
    """int64, the input's shape: round(v * 2^F) clipped to [data_min, data_max]."""
    clipped: int
    """How many entries were clipped to the data range."""


def quantize(x: npt.ArrayLike, cfg: ModelConfig) -> Quantized:
    """Real features to fixed-point data: round(v * 2^F), clipped to [data_min, data_max].

    The rounding is ``cfg.to_fixed``'s (Python's ``round``): to nearest, ties to even, on the
    exact product (multiplying by 2^F is exact in float64). NaN is refused; +-inf and values
    beyond the range are clipped, and counted. Every caller (the organisations' data, user
    files, the torch trainer's helper) quantises through here.
    """
    import numpy as np  # here, not above: the prover's image has no numpy, and it needs the rest

    real = np.asarray(x, dtype=np.float64)
    if bool(np.isnan(real).any()):
        raise ValueError("features contain NaN")
    with np.errstate(over="ignore"):  # a product beyond float64 is inf, and clipped below
        scaled = np.rint(real * float(1 << cfg.frac_bits))
    # data_min and data_max + 1 are powers of two, exact in float64 (data_max itself may not be).
    low, high_excl = float(cfg.data_min), float(cfg.data_max + 1)
    outside = (scaled < low) | (scaled >= high_excl)
    values = np.clip(np.clip(scaled, low, high_excl).astype(np.int64), cfg.data_min, cfg.data_max)
    return Quantized(values=values, clipped=int(outside.sum()))
