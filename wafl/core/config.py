"""The model configuration: one validated object shared by trainer, circuit and contract.

Every bound the circuit's range checks and the trainer's int64 arithmetic rely on is derived
here, once, so that a configuration that could overflow is refused before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

CONFIG_DIR = Path(__file__).parent / "configs"

# A packed word must stay below the BN254 scalar field (~2^253.6) to be one public input.
FIELD_SAFE_BITS = 253
# The trainer computes in int64; keep every intermediate magnitude below 2^62 (sign + slack).
INT64_SAFE_BITS = 62
# Senders are Ethereum addresses; rounds are uint64 on chain.
SENDER_BITS = 160
ROUND_BITS = 64
# The most masking-key slots a secure-aggregation circuit has (one scalar multiplication each).
MAX_SET_SIZE = 16


class ConfigError(ValueError):
    """A configuration that cannot be used, with the reason in the message."""


class ModelConfig(BaseModel):
    """Dimensions and fixed-point format of the proven training step (docs/design.md section 2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    d_in: int = Field(ge=1, le=4096)
    d_out: int = Field(ge=1, le=1024)
    batch: int = Field(ge=1, le=4096)
    local_steps: int = Field(default=1, ge=1, le=64)
    frac_bits: int = Field(ge=1, le=32, description="F: a real v is stored as round(v * 2^F)")
    lr_shift: int = Field(ge=0, le=48, description="s: learning rate 2^-s (batch scale folded in)")
    weight_bits: int = Field(ge=2, le=64, description="L: signed weight lane payload bits")
    data_bits: int = Field(ge=2, le=64, description="signed bits of a data entry (fixed point)")
    target_bits: int = Field(default=1, ge=1, le=32, description="unsigned bits of a target")
    max_participants: int = Field(default=8, ge=1, le=1 << 16)
    max_weight_change: int = Field(
        ge=1,
        le=1 << 64,
        description="B: the most any weight can move in one round, in fixed-point units (2^-F); a power "
        "of two. Omitted: 2^F (1.0), within [2^ceil(log2 E), 2^weight_bits]",
    )
    dataset: str | None = Field(default=None, description="bundled dataset this shape fits")
    secure_aggregation: bool = Field(
        default=False,
        description="pairwise-masked updates (docs/design.md section 12): the circuit also proves the "
        "masks towards every other member of the round's set, whose size is max_participants",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_max_weight_change(cls, data: Any) -> Any:
        """An omitted bound becomes 1.0 (2^F), so that the digest names the bound in force."""
        if isinstance(data, dict) and "max_weight_change" not in data:
            try:
                frac_bits, weight_bits = int(data["frac_bits"]), int(data["weight_bits"])
                steps = int(data.get("local_steps", 1))
            except (KeyError, TypeError, ValueError):
                return data  # the fields' own validation reports it
            if 1 <= frac_bits <= 64 and 1 <= weight_bits <= 64 and 1 <= steps <= 64:
                least = 1 << (steps - 1).bit_length()  # each local step may move a weight by 1
                data = {**data, "max_weight_change": min(1 << weight_bits, max(1 << frac_bits, least))}
        return data

    # ---- derived layout -------------------------------------------------------------
    @property
    def n_weights(self) -> int:
        """W (d_out x d_in, row-major) followed by b (d_out)."""
        return self.d_out * self.d_in + self.d_out

    @property
    def headroom_bits(self) -> int:
        """Zero bits above each lane so that up to max_participants lanes sum without carry."""
        return max(0, (self.max_participants - 1).bit_length())

    @property
    def slot_bits(self) -> int:
        return self.weight_bits + self.headroom_bits

    @property
    def lanes_per_word(self) -> int:
        return FIELD_SAFE_BITS // self.slot_bits

    @property
    def n_words(self) -> int:
        return -(-self.n_weights // self.lanes_per_word)

    @property
    def set_size(self) -> int:
        """Masking-key slots of a round's set in the circuit (0 without secure aggregation)."""
        return self.max_participants if self.secure_aggregation else 0

    @property
    def public_inputs(self) -> int:
        """global words + round + update words + sender; masked: + the set's keys, index for sender."""
        return 2 * self.n_words + 2 + 2 * self.set_size

    # ---- value ranges ---------------------------------------------------------------
    @property
    def weight_min(self) -> int:
        return -(1 << (self.weight_bits - 1))

    @property
    def weight_max(self) -> int:
        return (1 << (self.weight_bits - 1)) - 1

    @property
    def data_min(self) -> int:
        return -(1 << (self.data_bits - 1))

    @property
    def data_max(self) -> int:
        return (1 << (self.data_bits - 1)) - 1

    @property
    def target_max(self) -> int:
        return (1 << self.target_bits) - 1

    # ---- bounds of the truncated intermediates -------------------------------------------
    @property
    def forward_bound(self) -> int:
        """Largest |sum_j x_j w_j| for in-range x and w."""
        return self.d_in * (1 << (self.data_bits - 1)) * (1 << (self.weight_bits - 1))

    @property
    def error_bound(self) -> int:
        """Largest |Er| = |trunc_F(XW^T) + b - Y 2^F|."""
        forward_q = -(-self.forward_bound >> self.frac_bits)
        return forward_q + (1 << (self.weight_bits - 1)) + self.target_max * (1 << self.frac_bits)

    @property
    def gradient_bound(self) -> int:
        """Largest |sum_i Er_ik x_ij|."""
        return self.batch * self.error_bound * (1 << (self.data_bits - 1))

    @property
    def bias_gradient_bound(self) -> int:
        return self.batch * self.error_bound

    # ---- the bounded step (docs/design.md section 2) ------------------------------------
    @property
    def step_change_bound(self) -> int:
        """B_step: the power of two each local step clips a weight's change to; E * B_step <= B."""
        return 1 << ((self.max_weight_change // self.local_steps).bit_length() - 1)

    @property
    def clip_bits(self) -> int:
        """C = log2(B_step): a step's decrement is saturated to [-2^C, 2^C - 1]."""
        return self.step_change_bound.bit_length() - 1

    @cached_property
    def truncation_bits(self) -> dict[str, int]:
        """Bits K of each truncation's offset-binary decomposition (its range check).

        A signed v with |v| <= bound is decomposed as v + 2^(K-1) in K bits; the offset must be
        a multiple of 2^shift so the top K - shift bits are floor(v / 2^shift) + 2^(K-1-shift).
        """
        return {
            "forward": _signed_bits(self.forward_bound, self.frac_bits),
            "gradient": _signed_bits(self.gradient_bound, self.frac_bits + self.lr_shift),
            "bias": _signed_bits(self.bias_gradient_bound, self.lr_shift),
        }

    @model_validator(mode="after")
    def _check_bounds(self) -> Self:
        problems: list[str] = []
        if self.lanes_per_word < 1:
            problems.append(
                f"a lane of weight_bits {self.weight_bits} + headroom {self.headroom_bits} "
                f"(max_participants {self.max_participants}) is wider than a field element "
                f"({FIELD_SAFE_BITS} bits)"
            )
        limits = {
            "forward accumulator |X W^T|": (self.forward_bound, "data_bits, weight_bits or d_in"),
            "error |Z - Y 2^F|": (self.error_bound, "data_bits, weight_bits or target_bits"),
            "gradient |Er^T X|": (self.gradient_bound, "data_bits, weight_bits, target_bits or batch"),
            "bias gradient |sum Er|": (self.bias_gradient_bound, "batch or weight_bits"),
        }
        for what, (bound, knobs) in limits.items():
            if bound.bit_length() > INT64_SAFE_BITS:
                problems.append(
                    f"{what} can reach 2^{bound.bit_length()}, beyond the trainer's int64 "
                    f"limit 2^{INT64_SAFE_BITS}: lower {knobs}"
                )
        if self.weight_bits > INT64_SAFE_BITS:
            problems.append(f"weight_bits {self.weight_bits} exceeds int64 ({INT64_SAFE_BITS})")
        if self.data_bits > INT64_SAFE_BITS:
            problems.append(f"data_bits {self.data_bits} exceeds int64 ({INT64_SAFE_BITS})")
        bound = self.max_weight_change
        if bound & (bound - 1):
            problems.append(
                f"max_weight_change {bound} is not a power of two (the circuit clips with a bit window)"
            )
        if bound > 1 << self.weight_bits:
            problems.append(
                f"max_weight_change {bound} exceeds 2^weight_bits = {1 << self.weight_bits}, the span of a "
                f"lane: it would bound nothing (and the saturation's {self.weight_bits + 2}-bit check "
                "assumes it)"
            )
        if bound < self.local_steps:
            problems.append(
                f"max_weight_change {bound} < local_steps {self.local_steps}: a step could not move a weight"
            )
        if self.frac_bits >= self.data_bits:
            problems.append(
                f"frac_bits {self.frac_bits} leaves no integer part in data_bits {self.data_bits}"
            )
        if self.secure_aggregation and not 2 <= self.max_participants <= MAX_SET_SIZE:
            problems.append(
                f"secure_aggregation needs max_participants between 2 and {MAX_SET_SIZE} (the set's slots: "
                f"each costs the circuit a scalar multiplication), not {self.max_participants}"
            )
        if problems:
            raise ValueError(f"configuration {self.name!r} is unusable: " + "; ".join(problems))
        return self

    # ---- identity --------------------------------------------------------------------
    def canonical_json(self) -> str:
        # The flag is left out when off, so that plain circuits keep their sources and hashes.
        fields = self.model_dump(mode="json", exclude={"secure_aggregation"} if not self.secure_aggregation else None)
        return json.dumps(fields, sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    # ---- conversions -----------------------------------------------------------------
    def to_fixed(self, value: float) -> int:
        """round(v * 2^F): the fixed-point encoding of a real value."""
        return round(value * (1 << self.frac_bits))


def _signed_bits(bound: int, shift: int) -> int:
    """Bits K with bound < 2^(K-1) and K - 1 >= shift."""
    return max(bound.bit_length(), shift) + 1


def named_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def load_config(name_or_path: str | Path) -> ModelConfig:
    """Load a configuration by bundled name (e.g. ``ref-9x6-b10``) or from a YAML/JSON file.

    Every way this can fail is a ConfigError whose message is one line naming the file.
    """
    path = _config_file(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"configuration file {path} is not UTF-8 text: is it a YAML file?") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"configuration file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"configuration file {path} must hold a mapping of settings")
    return parse_config(raw, source=str(path))


def _config_file(name_or_path: str | Path) -> Path:
    """The file of a bundled name (a bare word such as ``ref-9x6-b10``) or of a path."""
    text = str(name_or_path)
    path = Path(text)
    bare = bool(text) and path.name == text and not path.suffix
    if bare and (CONFIG_DIR / f"{text}.yaml").is_file():
        return CONFIG_DIR / f"{text}.yaml"
    if path.is_file():
        return path
    if text and path.is_dir():
        raise ConfigError(f"configuration {path} is a directory: give a YAML file or a bundled name")
    if bare or not text:
        raise ConfigError(
            f"unknown configuration {text!r}; bundled: {', '.join(named_configs())} (or give a YAML file's path)"
        )
    raise ConfigError(f"configuration file {path} does not exist")


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (1-based line and column)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def parse_config(raw: dict[str, object], source: str = "<dict>") -> ModelConfig:
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration in {source}: {reasons}") from exc
