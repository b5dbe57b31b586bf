"""The federation's standardisation: the per-feature mean and divisor that turn raw features into
the values the model is trained on, (x - mean) / std.

The organisations agree on it before training (the statistics of all training rows) and it is
recorded where every one of them can read it: the deployment artifact (`standardisation`), and
from there every exported model file, so that the model can be evaluated on raw data. The record
is JSON: floats are written with their shortest round-tripping representation, so a
standardisation read back standardises to the very same float64 values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Added to every standard deviation: a constant feature is divided by this, not by zero.
EPSILON = 1e-9


class StandardisationError(ValueError):
    """A standardisation record that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Standardisation:
    mean: tuple[float, ...]
    std: tuple[float, ...]
    """The divisor: the standard deviation plus EPSILON."""

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardisation:
        """The statistics of the rows of `x` (samples x features)."""
        return cls(tuple(x.mean(axis=0).tolist()), tuple((x.std(axis=0) + EPSILON).tolist()))

    def apply(self, x: np.ndarray) -> np.ndarray:
        standardised: np.ndarray = (x - np.asarray(self.mean)) / np.asarray(self.std)
        return standardised

    def record(self) -> dict[str, list[float]]:
        """What the deployment artifact and the model files hold."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_record(cls, raw: object, features: int, source: str) -> Standardisation:
        """The standardisation a record holds, for `features` features; StandardisationError naming
        `source` if it is not one."""
        if not isinstance(raw, Mapping) or set(raw) != {"mean", "std"}:
            raise StandardisationError(f"{source}: the standardisation must be an object with 'mean' and 'std'")
        columns: dict[str, tuple[float, ...]] = {}
        for key in ("mean", "std"):
            values = raw[key]
            if (not isinstance(values, list) or len(values) != features
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                               for v in values)):
                raise StandardisationError(f"{source}: the standardisation's {key!r} must be {features} finite numbers")
            columns[key] = tuple(float(v) for v in values)
        if any(s <= 0 for s in columns["std"]):
            raise StandardisationError(f"{source}: the standardisation's 'std' must be positive")
        return cls(columns["mean"], columns["std"])
