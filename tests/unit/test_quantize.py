"""The one rounding rule from real features to fixed-point data (wafl.core.fixedpoint.quantize):
round(v * 2^F) to nearest with ties to even, as ``cfg.to_fixed``, then clipped to the data range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wafl.core.config import load_config
from wafl.core.fixedpoint import quantize

CFG = load_config("ref-9x6-b10")  # F = 10: one unit is 2^-10; data in [-8192, 8191]
UNIT = 2.0**-10


def test_ties_round_to_even() -> None:
    ties = np.array([0.5, 1.5, 2.5, 3.5, 4.5]) * UNIT
    assert quantize(ties, CFG).values.tolist() == [0, 2, 2, 4, 4]
    assert [CFG.to_fixed(v) for v in ties] == [0, 2, 2, 4, 4]


def test_negative_ties_round_to_even_too() -> None:
    # Half up (floor(v + 0.5)) would give [0, -1, -2, -3, -4]; half away from zero [-1, -2, -3, -4, -5].
    ties = np.array([-0.5, -1.5, -2.5, -3.5, -4.5]) * UNIT
    assert quantize(ties, CFG).values.tolist() == [0, -2, -2, -4, -4]
    assert [CFG.to_fixed(v) for v in ties] == [0, -2, -2, -4, -4]


def test_off_ties_round_to_nearest() -> None:
    just_below_half = math.nextafter(0.5, 0.0)  # floor(v + 0.5) gets this one wrong: 1
    values = np.array([just_below_half, 0.5000001, -0.5000001, -just_below_half, 0.25, -0.75]) * UNIT
    assert quantize(values, CFG).values.tolist() == [0, 1, -1, 0, 0, -1]
    assert quantize(values, CFG).values.tolist() == [CFG.to_fixed(v) for v in values]


def test_clipping_to_the_data_range_is_counted() -> None:
    values = np.array([8191.4, 8191.5, 8192.0, -8192.0, -8192.5, -8192.6, 1e308, -np.inf, np.inf]) * UNIT
    q = quantize(values, CFG)
    # 8191.5 is a tie that rounds (to even) to 8192, one past data_max: clipped. -8192.5 rounds to
    # -8192 = data_min: in range. 1e308 * 2^10 overflows float64 to inf: clipped like inf.
    assert q.values.tolist() == [8191, 8191, 8191, -8192, -8192, -8192, 8191, -8192, 8191]
    assert q.clipped == 6


def test_shape_and_type() -> None:
    q = quantize([[0.25, -0.25], [1.0, 2.0]], CFG)
    assert q.values.dtype == np.int64 and q.values.shape == (2, 2)
    assert q.values.tolist() == [[256, -256], [1024, 2048]] and q.clipped == 0
    assert quantize(np.array([0.5, -1.0], dtype=np.float32), CFG).values.tolist() == [512, -1024]


def test_nan_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        quantize([0.0, float("nan")], CFG)
