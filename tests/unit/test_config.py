"""The model configuration: bundled configurations, derived layout, and refused configurations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from wafl.core.config import (
    FIELD_SAFE_BITS,
    INT64_SAFE_BITS,
    ConfigError,
    ModelConfig,
    load_config,
    named_configs,
    parse_config,
)

REF: dict[str, Any] = {
    "name": "custom",
    "d_in": 9,
    "d_out": 6,
    "batch": 10,
    "frac_bits": 10,
    "lr_shift": 6,
    "weight_bits": 16,
    "data_bits": 14,
}

# Worked out by hand: slot = 16 + headroom 3 (8 participants) = 19 bits, 253 // 19 = 13 lanes.
BUNDLED = {
    # name: (d_in, d_out, batch, n_weights, n_words, public_inputs)
    "ref-9x6-b10": (9, 6, 10, 60, 5, 12),
    "wine-13x3-b16": (13, 3, 16, 42, 4, 10),
    "digits-64x10-b16": (64, 10, 16, 650, 50, 102),
    "breast-cancer-30x2-b16": (30, 2, 16, 62, 5, 12),
    "iris-4x3-b3": (4, 3, 3, 15, 2, 6),
    # secure aggregation: headroom 2 (3 or 4 participants), 18-bit slots, 14 lanes; public inputs
    # 2 words + round + 2 per slot of the set + the member's slot
    "iris-4x3-b3-secagg": (4, 3, 3, 15, 2, 2 * 2 + 2 + 2 * 3),
    "wine-13x3-b16-secagg": (13, 3, 16, 42, 3, 2 * 3 + 2 + 2 * 4),
}


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_named_configs_are_the_bundled_ones() -> None:
    assert named_configs() == sorted(BUNDLED)


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_bundled_configs_load_with_their_layout(name: str) -> None:
    d_in, d_out, batch, n_weights, n_words, public_inputs = BUNDLED[name]
    cfg = load_config(name)
    assert (cfg.name, cfg.d_in, cfg.d_out, cfg.batch) == (name, d_in, d_out, batch)
    # Breast cancer features reach 12 standard deviations: one more data bit holds them.
    data_bits = 15 if name.startswith("breast-cancer") else 14
    # The secure-aggregation twins' sets have 3 (iris) and 4 (wine) slots: 2 headroom bits.
    participants = {"iris-4x3-b3-secagg": 3, "wine-13x3-b16-secagg": 4}.get(name, 8)
    assert (cfg.frac_bits, cfg.weight_bits, cfg.data_bits, cfg.max_participants) == (10, 16, data_bits, participants)
    headroom = (participants - 1).bit_length()
    assert (cfg.headroom_bits, cfg.slot_bits, cfg.lanes_per_word) == (headroom, 16 + headroom, 253 // (16 + headroom))
    assert cfg.n_weights == n_weights
    assert cfg.n_words == n_words
    assert cfg.public_inputs == public_inputs
    assert (cfg.weight_min, cfg.weight_max) == (-32768, 32767)
    # No weight moves by more than 1.0 (2^10) in a round; E = 1, so that is each step's bound.
    assert (cfg.max_weight_change, cfg.step_change_bound, cfg.clip_bits) == (1024, 1024, 10)
    half = 1 << (data_bits - 1)
    assert (cfg.data_min, cfg.data_max, cfg.target_max) == (-half, half - 1, 1)
    # Every bound the int64 trainer relies on holds with room to spare.
    assert cfg.gradient_bound.bit_length() <= INT64_SAFE_BITS
    # Loading the same file by path gives the same configuration (and digest).
    path = Path(__file__).parents[2] / "wafl" / "core" / "configs" / f"{name}.yaml"
    assert load_config(path) == cfg
    assert load_config(path).digest == cfg.digest


def test_ref_config_bounds() -> None:
    cfg = load_config("ref-9x6-b10")
    assert cfg.forward_bound == 9 * 2**13 * 2**15
    assert cfg.error_bound == -(-cfg.forward_bound // 2**10) + 2**15 + 2**10
    assert cfg.gradient_bound == 10 * cfg.error_bound * 2**13
    assert cfg.truncation_bits == {
        "forward": cfg.forward_bound.bit_length() + 1,
        "gradient": cfg.gradient_bound.bit_length() + 1,
        "bias": (10 * cfg.error_bound).bit_length() + 1,
    }


def test_custom_yaml_and_json_files(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, yaml.safe_dump(REF)))
    assert cfg == ModelConfig(**REF)
    assert cfg.local_steps == 1 and cfg.target_bits == 1 and cfg.max_participants == 8  # defaults
    assert cfg.max_weight_change == 1 << cfg.frac_bits  # default: 1.0
    assert load_config(write(tmp_path, json.dumps(REF), "cfg.json")) == cfg


def test_digest_depends_on_every_setting() -> None:
    base = ModelConfig(**REF)
    assert base.digest == ModelConfig(**REF).digest
    assert base.digest != ModelConfig(**{**REF, "lr_shift": 7}).digest
    assert base.digest != ModelConfig(**{**REF, "name": "other"}).digest
    assert base.digest != ModelConfig(**{**REF, "max_weight_change": 512}).digest
    # The default is written into the configuration: stating it changes nothing.
    assert base.digest == ModelConfig(**{**REF, "max_weight_change": 1024}).digest
    assert '"max_weight_change":1024' in base.canonical_json()


def test_config_is_frozen() -> None:
    cfg = ModelConfig(**REF)
    with pytest.raises(ValueError, match="frozen"):
        cfg.d_in = 10


# ---- refused configurations ---------------------------------------------------------------
def refusal(tmp_path: Path, **changes: Any) -> str:
    path = write(tmp_path, yaml.safe_dump({**REF, **changes}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message  # names the source
    return message


def test_int64_overflow_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, weight_bits=40, data_bits=30)
    assert "int64" in message
    assert "forward accumulator" in message and "gradient" in message


def test_gradient_overflow_alone_is_refused(tmp_path: Path) -> None:
    # The forward accumulator fits (2^48) but a large batch pushes the gradient beyond 2^62.
    message = refusal(tmp_path, weight_bits=24, data_bits=24, frac_bits=4, d_in=1, batch=4096)
    assert "gradient |Er^T X|" in message and "int64" in message
    assert "forward accumulator" not in message


def test_config_at_the_int64_limit_is_accepted_and_one_more_bit_refused() -> None:
    """The validator's limit is exact: the widest accepted weights, then one bit more."""
    widest = None
    for weight_bits in range(2, 63):
        try:
            widest = ModelConfig(**{**REF, "weight_bits": weight_bits})
        except ValueError:
            break
    assert widest is not None
    assert max(widest.forward_bound, widest.error_bound, widest.gradient_bound).bit_length() <= INT64_SAFE_BITS
    with pytest.raises(ValueError, match="int64"):
        ModelConfig(**{**REF, "weight_bits": widest.weight_bits + 1})


def test_lane_wider_than_a_field_element_is_refused(tmp_path: Path) -> None:
    # The field bounds already stop a lane this wide (weight_bits <= 64, headroom <= 16 bits)...
    message = refusal(tmp_path, weight_bits=FIELD_SAFE_BITS + 1)
    assert "weight_bits" in message
    # ...and the layout check names the field limit when it is reached.
    too_wide = ModelConfig.model_construct(
        **{**REF, "weight_bits": 250, "max_participants": 64, "max_weight_change": 1024}
    )
    assert too_wide.slot_bits > FIELD_SAFE_BITS and too_wide.lanes_per_word == 0
    with pytest.raises(ValueError, match=r"wider than a field element \(253 bits\)"):
        too_wide._check_bounds()  # type: ignore[operator]  # the validator, called directly


def test_widest_lane_the_fields_allow_still_fits_a_word() -> None:
    cfg = ModelConfig.model_construct(**{**REF, "weight_bits": 64, "max_participants": 1 << 16})
    assert cfg.slot_bits == 64 + 16
    assert cfg.lanes_per_word == FIELD_SAFE_BITS // 80 >= 1


# ---- the bound of a round's change (docs/design.md section 2) ---------------------------------
@pytest.mark.parametrize(
    ("changes", "default"),
    [
        ({}, 1024),  # 2^F
        ({"frac_bits": 4}, 16),
        ({"weight_bits": 8}, 256),  # capped at 2^weight_bits: a lane spans less than 1.0
        ({"local_steps": 3}, 1024),
        ({"frac_bits": 1, "local_steps": 5}, 8),  # at least one unit per step: 2^ceil(log2 5)
    ],
)
def test_default_max_weight_change(changes: dict[str, Any], default: int) -> None:
    assert ModelConfig(**{**REF, **changes}).max_weight_change == default


@pytest.mark.parametrize(
    ("steps", "bound", "per_step"),
    [(1, 1024, 1024), (2, 1024, 512), (3, 1024, 256), (4, 1024, 256), (5, 1024, 128), (3, 4, 1), (64, 64, 1)],
)
def test_step_bound_keeps_the_round_bound(steps: int, bound: int, per_step: int) -> None:
    cfg = ModelConfig(**{**REF, "local_steps": steps, "max_weight_change": bound})
    assert cfg.step_change_bound == per_step == 1 << cfg.clip_bits
    assert steps * per_step <= bound < 2 * steps * per_step  # the largest power of two that keeps it


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"max_weight_change": 1000}, "max_weight_change 1000 is not a power of two"),
        ({"max_weight_change": 1 << 17}, "max_weight_change 131072 exceeds 2^weight_bits = 65536"),
        ({"max_weight_change": 2, "local_steps": 3}, "max_weight_change 2 < local_steps 3"),
        ({"max_weight_change": 0}, "max_weight_change: Input should be greater than or equal to 1"),
        ({"max_weight_change": -4}, "max_weight_change: Input should be greater than or equal to 1"),
        ({"max_weight_change": "big"}, "max_weight_change: Input should be a valid integer"),
    ],
)
def test_bad_max_weight_change_is_refused(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    assert expected in refusal(tmp_path, **changes)


def test_widest_bound_is_accepted() -> None:
    cfg = ModelConfig(**{**REF, "max_weight_change": 1 << 16})  # the lane's span: saturation only
    assert cfg.clip_bits == 16


def test_frac_bits_must_leave_an_integer_part(tmp_path: Path) -> None:
    message = refusal(tmp_path, frac_bits=14)
    assert "frac_bits 14" in message and "data_bits 14" in message


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"d_in": 0}, "d_in"),
        ({"batch": 5000}, "batch"),
        ({"lr_shift": -1}, "lr_shift"),
        ({"name": "Bad Name"}, "name"),
        ({"max_participants": 0}, "max_participants"),
        ({"d_out": "six"}, "d_out"),
    ],
)
def test_field_bounds_name_the_field(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    assert f"{field}:" in refusal(tmp_path, **changes)


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    message = refusal(tmp_path, learning_rate=0.1)
    assert "learning_rate" in message and "Extra inputs are not permitted" in message


def test_missing_key_is_refused(tmp_path: Path) -> None:
    raw = {k: v for k, v in REF.items() if k != "frac_bits"}
    with pytest.raises(ConfigError, match="frac_bits: Field required"):
        parse_config(raw)


def test_unknown_name_lists_bundled_names() -> None:
    with pytest.raises(ConfigError, match="unknown configuration 'nope'") as info:
        load_config("nope")
    for name in BUNDLED:
        assert name in str(info.value)


def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path) -> None:
    for text in ("- 1\n- 2\n", "just a string\n", ""):
        with pytest.raises(ConfigError, match="must hold a mapping"):
            load_config(write(tmp_path, text))


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "d_in: [1, 2\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_secure_aggregation_is_off_unless_asked_and_leaves_plain_identities_alone(tmp_path: Path) -> None:
    plain = load_config("iris-4x3-b3")
    assert not plain.secure_aggregation and plain.set_size == 0
    # The flag is not in a plain configuration's canonical form: its circuit and digest stay.
    assert "secure_aggregation" not in plain.canonical_json()
    masked = load_config("iris-4x3-b3-secagg")
    assert masked.set_size == masked.max_participants == 3
    assert '"secure_aggregation":true' in masked.canonical_json()
    raw = {**REF, "name": "lonely", "max_participants": 1, "secure_aggregation": True}
    with pytest.raises(ConfigError, match="secure_aggregation needs max_participants between 2 and 16"):
        parse_config(raw)
