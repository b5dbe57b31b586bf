"""Property tests: the torch trainer against the plain-Python reference, packing and FedAvg.

The reference (wafl.core.fixedpoint) is the definition of the arithmetic (docs/design.md section 2); the
torch trainer must reproduce it bit for bit over random valid configurations and random and
extreme data, including the cases where the reference refuses (inputs out of range). The step
is bounded: on in-range inputs it never fails, no weight moves by more than the configured
bound and every weight stays in its lane.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from services.trainer.core import TorchFixedPointTrainer, floor_shift, one_hot, quantize_features
from wafl.core.config import FIELD_SAFE_BITS, ModelConfig, load_config, named_configs
from wafl.core.fixedpoint import FixedPointRangeError, Weights, bounded_update, fedavg, train_step
from wafl.core.packing import LaneOutOfRangeError, lane_offset, pack, unpack

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BUNDLED = [load_config(name) for name in named_configs()]

Matrix = list[list[int]]


# ---- strategies ----------------------------------------------------------------------------
@st.composite
def random_configs(draw: st.DrawFn, small: bool = True) -> ModelConfig:
    """A configuration the validator accepts, from wide ranges of every knob."""
    data_bits = draw(st.integers(2, 48))
    weight_bits = draw(st.integers(2, 48))
    local_steps = draw(st.integers(1, 3))
    # The bound: omitted (its default), or any power of two the validator takes, small ones
    # (clipping nearly every step) as often as wide ones.
    bound = draw(st.one_of(st.none(), st.integers((local_steps - 1).bit_length(), weight_bits).map(lambda k: 1 << k)))
    try:
        cfg = ModelConfig(
            name="hyp",
            d_in=draw(st.integers(1, 5 if small else 64)),
            d_out=draw(st.integers(1, 4 if small else 16)),
            batch=draw(st.integers(1, 5 if small else 32)),
            local_steps=local_steps,
            frac_bits=draw(st.integers(1, min(32, data_bits - 1))),
            lr_shift=draw(st.one_of(st.integers(0, 6), st.integers(0, 48))),
            weight_bits=weight_bits,
            data_bits=data_bits,
            target_bits=draw(st.integers(1, 32)),
            max_participants=draw(st.one_of(st.integers(1, 20), st.integers(1, 1 << 16))),
            **({} if bound is None else {"max_weight_change": bound}),
        )
    except ValueError:
        assume(False)
        raise AssertionError("unreachable") from None
    return cfg


configs = st.one_of(random_configs(), st.sampled_from(BUNDLED))


def ranged(low: int, high: int, extra: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    """Integers in [low, high], biased to the boundaries, 0, small values of both signs."""
    specials = sorted({v for v in (low, high, 0, -1, 1, low + 1, high - 1, *extra) if low <= v <= high})
    return st.one_of(
        st.sampled_from(specials),
        st.integers(low, high),
        st.integers(max(low, -8), min(high, 8)),
    )


def magnitude(low: int, high: int) -> st.SearchStrategy[int]:
    """Bits of a common magnitude for the entries of one tensor: small-valued tensors (which
    train without leaving the lane range) are as common as full-range ones."""
    full = max(high, -low).bit_length()
    return st.one_of(st.just(full), st.integers(0, full))


@st.composite
def scaled(draw: st.DrawFn, low: int, high: int) -> st.SearchStrategy[int]:
    bits = draw(magnitude(low, high))
    lo, hi = max(low, -(1 << bits)), min(high, (1 << bits) - 1)
    return ranged(lo, hi, extra=(low, high))


# Above this many entries a tensor is generated from a drawn seed (fast) instead of entry by
# entry (shrinkable): the bundled digits configuration has 1024 features and 650 weights.
ELEMENTWISE_LIMIT = 48


def matrix(draw: st.DrawFn, rows: int, cols: int, low: int, high: int) -> Matrix:
    if rows * cols <= ELEMENTWISE_LIMIT:
        element = draw(scaled(low, high))
        return [[draw(element) for _ in range(cols)] for _ in range(rows)]
    bits = draw(magnitude(low, high))
    lo, hi = max(low, -(1 << bits)), min(high, (1 << bits) - 1)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    specials = np.array(sorted({low, high, 0, lo, hi}), dtype=np.int64)
    uniform = rng.integers(lo, hi, size=(rows, cols), endpoint=True, dtype=np.int64)
    special = specials[rng.integers(0, len(specials), size=(rows, cols))]
    values = np.where(rng.random((rows, cols)) < 0.2, special, uniform)
    return [[int(v) for v in row] for row in values]


@st.composite
def problems(
    draw: st.DrawFn, cfg_strategy: st.SearchStrategy[ModelConfig] = configs
) -> tuple[ModelConfig, Weights, Matrix, Matrix]:
    cfg = draw(cfg_strategy)
    w = matrix(draw, cfg.d_out, cfg.d_in, cfg.weight_min, cfg.weight_max)
    b = matrix(draw, 1, cfg.d_out, cfg.weight_min, cfg.weight_max)[0]
    x = matrix(draw, cfg.batch, cfg.d_in, cfg.data_min, cfg.data_max)
    y = matrix(draw, cfg.batch, cfg.d_out, 0, cfg.target_max)
    return cfg, Weights(w=w, b=b), x, y


@st.composite
def extreme_problems(
    draw: st.DrawFn, cfg_strategy: st.SearchStrategy[ModelConfig] = configs
) -> tuple[ModelConfig, Weights, Matrix, Matrix]:
    """Data at the ends of its range (the largest |X|), targets at 0 or target_max chosen against
    the weights' sign (the largest error), weights at the lane bounds, near them or random."""
    cfg = draw(cfg_strategy)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ends = np.array([cfg.data_min, cfg.data_max], dtype=object)
    x = ends[rng.integers(0, 2, size=(cfg.batch, cfg.d_in))]
    if draw(st.booleans()):  # one outlier row: every feature at the same end
        x[rng.integers(0, cfg.batch)] = ends[rng.integers(0, 2)]
    weights = draw(st.sampled_from(["bounds", "max", "min", "zero", "random"]))
    lanes = np.array([cfg.weight_min, cfg.weight_max], dtype=object)
    flat = {
        "bounds": lambda: lanes[rng.integers(0, 2, size=cfg.n_weights)],
        "max": lambda: np.full(cfg.n_weights, cfg.weight_max, dtype=object),
        "min": lambda: np.full(cfg.n_weights, cfg.weight_min, dtype=object),
        "zero": lambda: np.zeros(cfg.n_weights, dtype=object),
        "random": lambda: np.array([int(v) for v in rng.integers(cfg.weight_min, cfg.weight_max, cfg.n_weights,
                                                                   endpoint=True, dtype=np.int64)], dtype=object),
    }[weights]()
    w = Weights.from_flat(cfg, [int(v) for v in flat])
    # Adversarial targets: target_max where the forward pass is negative, 0 where it is positive.
    forward = x.dot(np.array(w.w, dtype=object).T)
    y = np.where(forward < 0, cfg.target_max, 0) if draw(st.booleans()) else np.where(forward < 0, 0, cfg.target_max)
    return cfg, w, [[int(v) for v in row] for row in x], [[int(v) for v in row] for row in y]


def outcome(fn: Callable[..., Weights], *args: object) -> Weights | str:
    """The result, or the FixedPointRangeError message (which names tensor, index and value)."""
    try:
        return fn(*args)
    except FixedPointRangeError as exc:
        return f"FixedPointRangeError: {exc}"


# ---- the torch trainer against the reference ---------------------------------------------
int64_values = st.one_of(st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-300, 300))


@PROPS
@given(st.lists(int64_values, min_size=1, max_size=20), st.integers(0, 90))
def test_floor_shift_is_floor_division_on_negatives_too(values: list[int], shift: int) -> None:
    t = torch.tensor(values, dtype=torch.int64)
    assert floor_shift(t, shift).tolist() == [v // (1 << shift) for v in values]


def test_floor_shift_examples() -> None:
    t = torch.tensor([-1, -2, -3, -1024, -1025, 1023, 1024], dtype=torch.int64)
    assert floor_shift(t, 10).tolist() == [-1, -1, -1, -1, -2, 0, 1]
    assert floor_shift(t, 64).tolist() == [-1, -1, -1, -1, -1, 0, 0]
    with pytest.raises(ValueError):
        floor_shift(t, -1)


def unbounded_steps(cfg: ModelConfig, weights: Weights, x: Matrix, y: Matrix) -> list[list[int]]:
    """Each local step's flat weights with the change neither clipped nor saturated (the step as
    it was before the bound), each step starting from the previous one."""
    f, s = cfg.frac_bits, cfg.lr_shift
    w, b, out = [r[:] for r in weights.w], weights.b[:], []
    for _ in range(cfg.local_steps):
        err = [[(sum(x[i][j] * w[k][j] for j in range(cfg.d_in)) >> f) + b[k] - (y[i][k] << f)
                for k in range(cfg.d_out)] for i in range(cfg.batch)]
        w = [[w[k][j] - (sum(err[i][k] * x[i][j] for i in range(cfg.batch)) >> (f + s)) for j in range(cfg.d_in)]
             for k in range(cfg.d_out)]
        b = [b[k] - (sum(err[i][k] for i in range(cfg.batch)) >> s) for k in range(cfg.d_out)]
        out.append([v for r in w for v in r] + b)
    return out


def check_bounded(cfg: ModelConfig, weights: Weights, x: Matrix, y: Matrix, new: Weights) -> str:
    """The bound's promises: lanes, |change| <= B, and the bound only bites when it must.
    Returns whether it bit (an event for hypothesis' statistics)."""
    before, after = weights.flat(), new.flat()
    assert all(cfg.weight_min <= v <= cfg.weight_max for v in after)
    assert all(abs(a - b) <= cfg.max_weight_change for a, b in zip(after, before, strict=True))
    unbounded = unbounded_steps(cfg, weights, x, y)
    if cfg.local_steps == 1:
        # One step: the bounded change goes the same way as the unbounded one, no further.
        for old, free, got in zip(before, unbounded[0], after, strict=True):
            assert min(old, free) <= got <= max(old, free)
    previous, honest = before, True
    for step in unbounded:
        bound = cfg.step_change_bound
        honest &= all(-bound <= p - v < bound and cfg.weight_min <= v <= cfg.weight_max
                      for p, v in zip(previous, step, strict=True))
        previous = step
    if honest:
        assert after == unbounded[-1]
    return "neither active" if honest else "clip or saturation active"


@settings(PROPS, max_examples=500)
@given(problems())
def test_torch_step_matches_reference(problem: tuple[ModelConfig, Weights, Matrix, Matrix]) -> None:
    cfg, weights, x, y = problem
    expected = outcome(train_step, cfg, weights, x, y)
    assert isinstance(expected, Weights), expected  # in-range inputs: the bounded step never fails
    event(check_bounded(cfg, weights, x, y, expected))
    trainer = TorchFixedPointTrainer(cfg)
    assert outcome(trainer.step, weights, x, y) == expected
    # Tensor and numpy inputs take the tensor path of the checks and must agree as well.
    xt = torch.tensor(x, dtype=torch.int64)
    yn = np.array(y, dtype=np.int64)
    assert outcome(trainer.step, weights, xt, yn) == expected


@PROPS
@given(problems(st.sampled_from(BUNDLED)))
def test_bundled_configs_match_reference(problem: tuple[ModelConfig, Weights, Matrix, Matrix]) -> None:
    cfg, weights, x, y = problem
    expected = outcome(train_step, cfg, weights, x, y)
    assert isinstance(expected, Weights), expected
    event(check_bounded(cfg, weights, x, y, expected))
    assert outcome(TorchFixedPointTrainer(cfg).step, weights, x, y) == expected


@settings(PROPS, max_examples=300)
@given(st.one_of(extreme_problems(), extreme_problems(st.sampled_from(BUNDLED))))
def test_extreme_data_is_bounded_and_matches(problem: tuple[ModelConfig, Weights, Matrix, Matrix]) -> None:
    """The largest |X|, adversarial targets, weights at their lane bounds: the step still trains
    (no FixedPointRangeError), stays bounded and in its lanes, and torch agrees bit for bit."""
    cfg, weights, x, y = problem
    expected = train_step(cfg, weights, x, y)
    event(check_bounded(cfg, weights, x, y, expected))
    assert TorchFixedPointTrainer(cfg).step(weights, torch.tensor(x), np.array(y)) == expected


@PROPS
@given(configs, st.data())
def test_bounded_update_is_clip_then_saturate(cfg: ModelConfig, data: st.DataObject) -> None:
    weight = data.draw(ranged(cfg.weight_min, cfg.weight_max))
    bound = cfg.step_change_bound
    decrement = data.draw(st.one_of(ranged(-4 * bound, 4 * bound, extra=(-bound - 1, bound - 1, bound)),
                                    st.integers(-(1 << 70), 1 << 70)))
    new = bounded_update(cfg, weight, decrement)
    assert cfg.weight_min <= new <= cfg.weight_max
    assert -bound < new - weight <= bound  # the decrement is saturated to [-B_step, B_step - 1]
    if -bound <= decrement < bound and cfg.weight_min <= weight - decrement <= cfg.weight_max:
        assert new == weight - decrement  # neither clipped nor saturated
    w = torch.tensor([weight], dtype=torch.int64)
    if -(1 << 62) < decrement < 1 << 62:
        got = TorchFixedPointTrainer(cfg)._bounded(w, torch.tensor([decrement], dtype=torch.int64))
        assert got.tolist() == [new]


def test_bounded_update_examples() -> None:
    """B_step = 16, lane [-128, 127]: the decrement is saturated to [-16, 15], then the weight."""
    cfg = ModelConfig(name="hyp", d_in=1, d_out=1, batch=1, frac_bits=4, lr_shift=0, weight_bits=8, data_bits=8)
    assert cfg.step_change_bound == 16
    cases = [
        (0, 5, -5),  # neither
        (0, 15, -15), (0, 16, -15), (0, 24066, -15),  # a large decrement: the weight falls by 15
        (0, -16, 16), (0, -17, 16), (0, -(1 << 40), 16),  # rises by at most 16
        (120, -16, 127), (-120, 15, -128),  # saturated into the lane
        (127, -1, 127), (-128, 1, -128),  # at the bound, pushed further: stays
    ]
    for weight, decrement, expected in cases:
        assert bounded_update(cfg, weight, decrement) == expected, (weight, decrement)


@PROPS
@given(problems(), st.sampled_from(["weights", "X", "Y"]), st.data())
def test_out_of_range_inputs_refused_like_reference(
    problem: tuple[ModelConfig, Weights, Matrix, Matrix], which: str, data: st.DataObject
) -> None:
    cfg, weights, x, y = problem
    low, high = {
        "weights": (cfg.weight_min, cfg.weight_max),
        "X": (cfg.data_min, cfg.data_max),
        "Y": (0, cfg.target_max),
    }[which]
    bad = data.draw(st.sampled_from([low - 1, high + 1, low - 12345, high + (1 << 70), -(1 << 80)]))
    if which == "weights":
        flat = weights.flat()
        flat[data.draw(st.integers(0, len(flat) - 1))] = bad
        weights = Weights.from_flat(cfg, flat)
    else:
        target = x if which == "X" else y
        target[data.draw(st.integers(0, len(target) - 1))][data.draw(st.integers(0, len(target[0]) - 1))] = bad
    expected = outcome(train_step, cfg, weights, x, y)
    assert isinstance(expected, str) and "outside" in expected
    trainer = TorchFixedPointTrainer(cfg)
    assert outcome(trainer.step, weights, x, y) == expected
    if which != "weights" and -(1 << 63) <= bad < (1 << 63):
        assert outcome(trainer.step, weights, torch.tensor(x), torch.tensor(y)) == expected


def test_a_step_that_would_leave_the_lanes_is_clipped_in_both() -> None:
    """B_step = 16 (the default 2^F). err = (2 * 127 * 127 >> 4, (127 * 127 + 127) >> 4) = (2016,
    1016); the decrements 24066, 16065 (W) and 3032 (b) would take every weight far out of its
    lane [-128, 127] (the step was unprovable before the bound); each is clipped to 15."""
    cfg = ModelConfig(name="hyp", d_in=2, d_out=1, batch=2, frac_bits=4, lr_shift=0, weight_bits=8, data_bits=8)
    weights = Weights(w=[[cfg.weight_max, cfg.weight_max]], b=[0])
    x = [[cfg.data_max, cfg.data_max], [cfg.data_max, 1]]
    y = [[0], [0]]
    expected = Weights(w=[[112, 112]], b=[-15])
    assert train_step(cfg, weights, x, y) == expected
    assert TorchFixedPointTrainer(cfg).step(weights, x, y) == expected


def test_hand_computed_step_floors_negatives() -> None:
    """One step by hand (F = 2, s = 1): x = 5 (1.25), y = 1, w = 0, b = 1 (0.25).

    err = (5 * 0 >> 2) + 1 - (1 << 2) = -3; W' = 0 - (-15 >> 3) = 0 - floor(-1.875) = 2 and
    b' = 1 - (-3 >> 1) = 1 - floor(-1.5) = 3 (truncation towards zero would give 1 and 2).
    """
    cfg = ModelConfig(name="hyp", d_in=1, d_out=1, batch=1, frac_bits=2, lr_shift=1, weight_bits=8, data_bits=5)
    weights, x, y = Weights(w=[[0]], b=[1]), [[5]], [[1]]
    expected = Weights(w=[[2]], b=[3])
    assert train_step(cfg, weights, x, y) == expected
    assert TorchFixedPointTrainer(cfg).step(weights, x, y) == expected


def test_every_local_step_is_bounded() -> None:
    """F = 2, s = 0, x = 8 (2.0), y = 1, lanes [-16, 15], B = 32. One step (B_step = 32): W = 8,
    b = 4. Two steps (B_step = 16): step 1 as before; the learning rate overshoots, step 2 has
    err = (64 >> 2) + 4 - 4 = 16 and decrements 32 (W) and 16 (b), clipped to 15: W = -7, b = -11
    (unbounded, W would be -24, outside its lane, and the step unprovable)."""
    base: dict[str, Any] = dict(
        name="hyp", d_in=1, d_out=1, batch=1, frac_bits=2, lr_shift=0, weight_bits=5, data_bits=5,
        max_weight_change=32,
    )
    one, two = ModelConfig(**base, local_steps=1), ModelConfig(**base, local_steps=2)
    assert (one.step_change_bound, two.step_change_bound) == (32, 16)
    weights, x, y = Weights(w=[[0]], b=[0]), [[8]], [[1]]
    for cfg, expected in ((one, Weights(w=[[8]], b=[4])), (two, Weights(w=[[-7]], b=[-11]))):
        assert train_step(cfg, weights, x, y) == expected
        assert TorchFixedPointTrainer(cfg).step(weights, x, y) == expected
    assert unbounded_steps(two, weights, x, y) == [[8, 4], [-24, -12]]


def test_a_step_is_saturated_into_its_lane() -> None:
    """x = 8, y = 0, W = -14, B = 32: err = -112 >> 2 = -28, decrements -56 (clipped to -32) and
    -28; W = -14 + 32 = 18 and b = 28 are saturated to 15."""
    cfg = ModelConfig(name="hyp", d_in=1, d_out=1, batch=1, frac_bits=2, lr_shift=0, weight_bits=5, data_bits=5,
                      max_weight_change=32)
    weights, x, y = Weights(w=[[-14]], b=[0]), [[8]], [[0]]
    assert train_step(cfg, weights, x, y) == Weights(w=[[15]], b=[15])
    assert TorchFixedPointTrainer(cfg).step(weights, x, y) == Weights(w=[[15]], b=[15])


def widest_config(d_in: int, batch: int) -> ModelConfig:
    """The accepted configuration with the widest weights at data_bits 20: its intermediates
    come closest to the int64 limit, so a wrap in the torch arithmetic would show."""
    best = None
    for weight_bits in range(2, 63):
        try:
            best = ModelConfig(
                name="hyp",
                d_in=d_in,
                d_out=2,
                batch=batch,
                frac_bits=4,
                lr_shift=48,
                weight_bits=weight_bits,
                data_bits=20,
            )
        except ValueError:
            break
    assert best is not None
    return best


@pytest.mark.parametrize(("d_in", "batch"), [(1, 1), (3, 7), (8, 2)])
def test_extreme_inputs_at_the_int64_limit(d_in: int, batch: int) -> None:
    cfg = widest_config(d_in, batch)
    assert cfg.gradient_bound.bit_length() >= 58  # really near the limit
    for w_val, x_val, b_val, y_val in [
        (cfg.weight_min, cfg.data_min, cfg.weight_max, 0),
        (cfg.weight_min, cfg.data_max, cfg.weight_min, cfg.target_max),
        (cfg.weight_max, cfg.data_min, cfg.weight_min, cfg.target_max),
    ]:
        weights = Weights(w=[[w_val] * cfg.d_in for _ in range(cfg.d_out)], b=[b_val] * cfg.d_out)
        x = [[x_val] * cfg.d_in for _ in range(cfg.batch)]
        y = [[y_val] * cfg.d_out for _ in range(cfg.batch)]
        expected = train_step(cfg, weights, x, y)
        check_bounded(cfg, weights, x, y, expected)
        assert TorchFixedPointTrainer(cfg).step(weights, x, y) == expected


def test_shape_errors_match_reference() -> None:
    cfg = load_config("ref-9x6-b10")
    trainer = TorchFixedPointTrainer(cfg)
    good = Weights.zeros(cfg)
    x = [[0] * cfg.d_in for _ in range(cfg.batch)]
    y = [[0] * cfg.d_out for _ in range(cfg.batch)]
    cases = [
        (Weights(w=good.w[:-1], b=good.b), x, y),
        (Weights(w=good.w, b=good.b[:-1]), x, y),
        (good, x[:-1], y),
        (good, [[*r, 0] for r in x], y),
        (good, x, [r[:-1] for r in y]),
    ]
    for weights, xx, yy in cases:
        with pytest.raises(ValueError) as ref:
            train_step(cfg, weights, xx, yy)
        with pytest.raises(ValueError) as got:
            trainer.step(weights, xx, yy)
        assert str(got.value) == str(ref.value)
    with pytest.raises(ValueError, match="X must be"):
        trainer.step(good, torch.zeros(cfg.batch, cfg.d_in + 1, dtype=torch.int64), y)
    with pytest.raises(TypeError):
        trainer.step(good, torch.zeros(cfg.batch, cfg.d_in), y)  # float features are refused


# ---- float data to fixed point -------------------------------------------------------------
@PROPS
@given(
    configs,
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, width=64),
            st.floats(-100, 100),
            st.integers(-64, 64).map(lambda k: k / 8 + 1 / 64),  # halves at F = 5 and below
        ),
        min_size=1,
        max_size=30,
    ),
)
def test_quantize_features(cfg: ModelConfig, values: list[float]) -> None:
    # cfg.to_fixed is the definition of the rounding; beyond float range, only the sign matters.
    rounded = [
        cfg.to_fixed(v) if math.isfinite(v * (1 << cfg.frac_bits)) else int(math.copysign(1 << 80, v)) for v in values
    ]
    expected = [min(max(r, cfg.data_min), cfg.data_max) for r in rounded]
    clipped = sum(not cfg.data_min <= r <= cfg.data_max for r in rounded)
    for source in (torch.tensor(values, dtype=torch.float64), np.array(values, dtype=np.float64)):
        q = quantize_features(source, cfg)
        assert q.values.dtype == torch.int64
        assert q.values.tolist() == expected
        assert q.clipped == clipped


def test_quantize_features_examples() -> None:
    cfg = load_config("ref-9x6-b10")  # F = 10, data in [-8192, 8191] (reals in [-8, 8))
    q = quantize_features(np.array([[0.5, -0.5, 7.999], [8.0, -8.0, -9.5], [1e30, -np.inf, 2**-12]]), cfg)
    assert q.values.tolist() == [[512, -512, 8191], [8191, -8192, -8192], [8191, -8192, 0]]
    # 7.999 -> 8190.976 rounds to 8191 (in range); -8.0 is exactly data_min; 8.0, -9.5, 1e30 and
    # -inf are clipped.
    assert q.clipped == 4
    # Python's round (cfg.to_fixed) rounds half to even; so must the trainer's quantization.
    halves = quantize_features(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5]) / 1024, cfg)
    assert halves.values.tolist() == [0, 2, 2, 0, -2] and halves.clipped == 0
    with pytest.raises(ValueError, match="NaN"):
        quantize_features(torch.tensor([0.0, float("nan")]), cfg)


@PROPS
@given(configs, st.data())
def test_one_hot(cfg: ModelConfig, data: st.DataObject) -> None:
    labels = data.draw(st.lists(st.integers(0, cfg.d_out - 1), min_size=1, max_size=20))
    for source in (labels, torch.tensor(labels), np.array(labels, dtype=np.int32)):
        y = one_hot(source, cfg)
        assert y.dtype == torch.int64 and tuple(y.shape) == (len(labels), cfg.d_out)
        assert y.tolist() == [[int(k == label) for k in range(cfg.d_out)] for label in labels]
    with pytest.raises(ValueError, match=r"labels\[0\]"):
        one_hot([cfg.d_out, *labels], cfg)
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        one_hot([0, -1], cfg)


# ---- packing ---------------------------------------------------------------------------------
@st.composite
def packable(draw: st.DrawFn) -> tuple[ModelConfig, list[int]]:
    cfg = draw(st.one_of(random_configs(small=False), st.sampled_from(BUNDLED)))
    return cfg, matrix(draw, 1, cfg.n_weights, cfg.weight_min, cfg.weight_max)[0]


@PROPS
@given(packable())
def test_pack_unpack_round_trip(problem: tuple[ModelConfig, list[int]]) -> None:
    cfg, values = problem
    words = pack(cfg, values)
    assert len(words) == cfg.n_words
    assert all(0 <= word < 1 << FIELD_SAFE_BITS for word in words)
    assert unpack(cfg, words) == values


@pytest.mark.parametrize("cfg", BUNDLED, ids=lambda c: c.name)
def test_pack_boundaries(cfg: ModelConfig) -> None:
    for value in (cfg.weight_min, cfg.weight_max, 0, -1):
        assert unpack(cfg, pack(cfg, [value] * cfg.n_weights)) == [value] * cfg.n_weights
    # Offset binary: weight_min is the all-zero lane.
    assert pack(cfg, [cfg.weight_min] * cfg.n_weights) == [0] * cfg.n_words
    # Zero is 2^(L-1) in every slot, lane i at bit (i mod lanes) * slot_bits of word i // lanes.
    words = pack(cfg, [0] * cfg.n_weights)
    full = sum(1 << (cfg.weight_bits - 1 + k * cfg.slot_bits) for k in range(cfg.lanes_per_word))
    assert words[:-1] == [full] * (cfg.n_words - 1)
    last_lanes = cfg.n_weights - (cfg.n_words - 1) * cfg.lanes_per_word
    assert words[-1] == sum(1 << (cfg.weight_bits - 1 + k * cfg.slot_bits) for k in range(last_lanes))


@PROPS
@given(packable(), st.data())
def test_pack_refuses_out_of_range(problem: tuple[ModelConfig, list[int]], data: st.DataObject) -> None:
    cfg, values = problem
    index = data.draw(st.integers(0, cfg.n_weights - 1))
    values[index] = data.draw(
        st.sampled_from([cfg.weight_min - 1, cfg.weight_max + 1, cfg.weight_max + (1 << 200), -(1 << 90)])
    )
    with pytest.raises(LaneOutOfRangeError, match=rf"lane\[{index}\]"):
        pack(cfg, values)


@PROPS
@given(packable(), st.data())
def test_unpack_refuses_bits_outside_the_lanes(problem: tuple[ModelConfig, list[int]], data: st.DataObject) -> None:
    cfg, values = problem
    words = pack(cfg, values)
    lane = data.draw(st.integers(0, cfg.n_weights - 1))
    word, slot = divmod(lane, cfg.lanes_per_word)
    lanes_in_word = min(cfg.lanes_per_word, cfg.n_weights - word * cfg.lanes_per_word)
    candidates = [cfg.lanes_per_word * cfg.slot_bits + data.draw(st.integers(0, 300))]  # above all slots
    if cfg.headroom_bits:
        headroom = data.draw(st.integers(0, cfg.headroom_bits - 1))
        candidates.append(slot * cfg.slot_bits + cfg.weight_bits + headroom)
    if lanes_in_word < cfg.lanes_per_word:  # unused slots of the last word
        candidates.append(lanes_in_word * cfg.slot_bits + data.draw(st.integers(0, cfg.slot_bits - 1)))
    bit = data.draw(st.sampled_from(candidates))
    tampered = list(words)
    tampered[word] |= 1 << bit
    with pytest.raises(LaneOutOfRangeError, match=rf"packed word {word}\b"):
        unpack(cfg, tampered)
    tampered[word] = -1
    with pytest.raises(LaneOutOfRangeError):
        unpack(cfg, tampered)


def test_unpack_refuses_headroom_bit_of_bundled_config() -> None:
    cfg = load_config("ref-9x6-b10")
    assert cfg.headroom_bits == 3
    words = pack(cfg, [0] * cfg.n_weights)
    with pytest.raises(LaneOutOfRangeError, match="packed word 0"):
        unpack(cfg, [words[0] | 1 << cfg.weight_bits, *words[1:]])  # lowest headroom bit of lane 0
    with pytest.raises(ValueError, match="packed words"):
        unpack(cfg, words[:-1])
    with pytest.raises(ValueError, match="values to pack"):
        pack(cfg, [0] * (cfg.n_weights + 1))


# ---- FedAvg and the packed sum the contract computes -----------------------------------------
@st.composite
def update_sets(draw: st.DrawFn) -> tuple[ModelConfig, list[Weights]]:
    cfg = draw(st.one_of(random_configs(small=True), st.sampled_from(BUNDLED)))
    n = draw(st.integers(1, min(cfg.max_participants, 12)))
    flats = matrix(draw, n, cfg.n_weights, cfg.weight_min, cfg.weight_max)
    return cfg, [Weights.from_flat(cfg, f) for f in flats]


@PROPS
@given(update_sets())
def test_fedavg_is_the_floor_of_the_mean(problem: tuple[ModelConfig, list[Weights]]) -> None:
    cfg, updates = problem
    n = len(updates)
    avg = fedavg(cfg, updates).flat()
    columns = list(zip(*(u.flat() for u in updates), strict=True))
    for a, col in zip(avg, columns, strict=True):
        total = sum(col)
        assert n * a <= total < n * (a + 1)  # floor, towards -inf for negative sums too
        assert min(col) <= a <= max(col)
        if total % n == 0:
            assert a * n == total
    # The average of in-range weights is in range, so it packs as the next global model.
    assert unpack(cfg, pack(cfg, avg)) == avg


def test_fedavg_examples() -> None:
    cfg = ModelConfig(name="hyp", d_in=1, d_out=1, batch=1, frac_bits=1, lr_shift=0, weight_bits=8, data_bits=4)

    def w(v: int) -> Weights:
        return Weights(w=[[v]], b=[v])

    assert fedavg(cfg, [w(-1), w(0)]).flat() == [-1, -1]  # floor(-0.5), not truncation to 0
    assert fedavg(cfg, [w(1), w(0)]).flat() == [0, 0]
    assert fedavg(cfg, [w(-3), w(-4), w(-4)]).flat() == [-4, -4]  # floor(-11/3)
    assert fedavg(cfg, [w(-128), w(127)]).flat() == [-1, -1]
    assert fedavg(cfg, [w(6), w(-2), w(2)]).flat() == [2, 2]
    with pytest.raises(ValueError, match="no updates"):
        fedavg(cfg, [])
    with pytest.raises(ValueError, match="headroom"):
        fedavg(cfg, [w(0)] * (cfg.max_participants + 1))


@PROPS
@given(update_sets())
def test_sum_of_packed_words_is_the_lanewise_sum(problem: tuple[ModelConfig, list[Weights]]) -> None:
    """What the contract relies on: adding packed words of up to max_participants updates adds
    the lanes without carries (headroom), so the average can be taken lane by lane."""
    cfg, updates = problem
    n = len(updates)
    summed = [sum(words) for words in zip(*(pack(cfg, u.flat()) for u in updates), strict=True)]
    assert all(0 <= word < 1 << FIELD_SAFE_BITS for word in summed)
    slot_mask = (1 << cfg.slot_bits) - 1
    lanes = [
        (summed[i // cfg.lanes_per_word] >> ((i % cfg.lanes_per_word) * cfg.slot_bits)) & slot_mask
        for i in range(cfg.n_weights)
    ]
    sums = [lane - n * lane_offset(cfg) for lane in lanes]
    assert sums == [sum(col) for col in zip(*(u.flat() for u in updates), strict=True)]
    assert [s // n for s in sums] == fedavg(cfg, updates).flat()


def test_packed_sum_with_max_participants_at_the_extremes() -> None:
    for cfg in BUNDLED:
        n = cfg.max_participants
        for value in (cfg.weight_max, cfg.weight_min):
            words = pack(cfg, [value] * cfg.n_weights)
            summed = [word * n for word in words]
            lane0 = summed[0] & ((1 << cfg.slot_bits) - 1)
            assert lane0 - n * lane_offset(cfg) == n * value
