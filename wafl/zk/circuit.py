"""Render the ZoKrates training-step circuit for a configuration, and its witness arguments.

``packed`` is WaFL's circuit: public inputs are the packed global model, the round, the packed
update and the sender. With secure aggregation (``cfg.secure_aggregation``) they are the packed
global model, the round, the round set's masking keys and the member's slot, and the circuit
returns the masked update words (ZoKrates puts return values last among the public inputs).
``naive`` is the same relation with one public input per weight value, kept only so the
benchmark can show what packing saves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from enum import StrEnum

from wafl.core.config import ROUND_BITS, SENDER_BITS, ModelConfig
from wafl.core.field import to_field
from wafl.core.fixedpoint import Matrix, Weights
from wafl.core.packing import pack
from wafl.core.paths import CIRCUIT_DIR

TEMPLATE = CIRCUIT_DIR / "wafl_step.zok.tmpl"


class CircuitKind(StrEnum):
    PACKED = "packed"
    NAIVE = "naive"


_PUBLIC_PARAMS = {
    CircuitKind.PACKED: (
        "public field[N_WORDS] global_words, public field round, "
        "public field[N_WORDS] update_words, public field sender"
    ),
    CircuitKind.NAIVE: (
        "public field[N_WEIGHTS] global_weights, public field round, "
        "public field[N_WEIGHTS] update_weights, public field sender"
    ),
}

_CHECKS = {
    CircuitKind.PACKED: (
        "    field[N_WORDS] packed_global = pack_lanes(flatten(w, b));\n"
        "    for u32 i in 0..N_WORDS {\n"
        "        assert(packed_global[i] == global_words[i]);\n"
        "    }",
        "    field[N_WORDS] packed_update = pack_words(flatten(wc, bc));\n"
        "    for u32 i in 0..N_WORDS {\n"
        "        assert(packed_update[i] == update_words[i]);\n"
        "    }",
    ),
    CircuitKind.NAIVE: (
        "    field[N_WEIGHTS] flat_global = flatten(w, b);\n"
        "    for u32 i in 0..N_WEIGHTS {\n"
        "        assert(check_bits::<WEIGHT_BITS>(flat_global[i] + WEIGHT_OFFSET));\n"
        "        assert(flat_global[i] == global_weights[i]);\n"
        "    }",
        "    field[N_WEIGHTS] flat_update = flatten(wc, bc);\n"
        "    for u32 i in 0..N_WEIGHTS {\n"
        "        assert(flat_update[i] == update_weights[i]);\n"
        "    }",
    ),
}


MASKING_TEMPLATE = CIRCUIT_DIR / "wafl_masking.zok.tmpl"


def render(cfg: ModelConfig, kind: CircuitKind = CircuitKind.PACKED) -> str:
    k = cfg.truncation_bits
    shifts = {
        "forward": cfg.frac_bits,
        "gradient": cfg.frac_bits + cfg.lr_shift,
        "bias": cfg.lr_shift,
    }
    values: dict[str, object] = {
        "D_IN": cfg.d_in,
        "D_OUT": cfg.d_out,
        "BATCH": cfg.batch,
        "STEPS": cfg.local_steps,
        "N_WEIGHTS": cfg.n_weights,
        "N_WORDS": cfg.n_words,
        "LANES": cfg.lanes_per_word,
        "WEIGHT_BITS": cfg.weight_bits,
        "DATA_BITS": cfg.data_bits,
        "TARGET_BITS": cfg.target_bits,
        "SENDER_BITS": SENDER_BITS,
        "ROUND_BITS": ROUND_BITS,
        "ONE_FIXED": 1 << cfg.frac_bits,
        "WEIGHT_OFFSET": 1 << (cfg.weight_bits - 1),
        "LANE_MAX": (1 << cfg.weight_bits) - 1,
        "SATURATE_OFFSET": (1 << (cfg.weight_bits - 1)) + (1 << cfg.weight_bits),
        "DATA_OFFSET": 1 << (cfg.data_bits - 1),
        "SLOT_SCALE": "[" + ", ".join(
            str(1 << (lane * cfg.slot_bits)) for lane in range(cfg.lanes_per_word)
        ) + "]",
        "PUBLIC_PARAMS": _PUBLIC_PARAMS[kind],
        "GLOBAL_CHECK": _CHECKS[kind][0],
        "UPDATE_CHECK": _CHECKS[kind][1] + "\n    return;",
        "BINDING_CHECK": f"    assert(check_bits::<{SENDER_BITS}>(sender));",
        "MASKING_DEFS": "",
        "PRIVATE_EXTRA": "",
        "RETURNS": "",
    }
    if cfg.secure_aggregation:
        if kind is not CircuitKind.PACKED:
            raise ValueError("secure aggregation has only the packed circuit")
        values.update({
            "PUBLIC_PARAMS": (
                "public field[N_WORDS] global_words, public field round, "
                "public field[SET_SIZE][2] keys, public field index"
            ),
            "UPDATE_CHECK": "    return mask_words(pack_words(flatten(wc, bc)), secret, keys, index, round);",
            "BINDING_CHECK": "",
            "MASKING_DEFS": MASKING_TEMPLATE.read_text().replace("{{SET_SIZE}}", str(cfg.set_size)),
            "PRIVATE_EXTRA": ", private field secret",
            "RETURNS": " -> field[N_WORDS]",
        })
    for name, bits in k.items():
        upper = name.upper()
        values[f"K_{upper}"] = bits
        values[f"SHIFT_{upper}"] = shifts[name]
        values[f"OFFSET_{upper}"] = 1 << (bits - 1)
        values[f"QOFFSET_{upper}"] = 1 << (bits - 1 - shifts[name])
        if name != "forward":
            # The window [-2^C, 2^C) of trunc_clip; at C = K - S - 1 it is the quotient's whole range.
            clip = min(cfg.clip_bits, bits - shifts[name] - 1)
            values[f"CLIP_{upper}"] = clip
            values[f"CLIP_VALUE_{upper}"] = 1 << clip
    source = TEMPLATE.read_text()
    for key, value in values.items():
        source = source.replace("{{" + key + "}}", str(value))
    if "{{" in source:
        raise RuntimeError("circuit template has an unfilled placeholder")
    header = f"// GENERATED by wafl.zk.circuit from {TEMPLATE.name} for {cfg.name} ({kind}).\n"
    return header + f"// config: {cfg.canonical_json()}\n" + source


def source_hash(cfg: ModelConfig, kind: CircuitKind, zokrates_version: str) -> str:
    """Cache key of a build: circuit source (which embeds the configuration) + compiler."""
    digest = hashlib.sha256()
    digest.update(render(cfg, kind).encode())
    digest.update(zokrates_version.encode())
    return digest.hexdigest()


def public_inputs(
    cfg: ModelConfig,
    kind: CircuitKind,
    global_model: Weights,
    update: Weights,
    sender: int,
    round_id: int,
) -> list[int]:
    """The public inputs in the circuit's (and verifier's) order."""
    if kind is CircuitKind.PACKED:
        g, u = pack(cfg, global_model.flat()), pack(cfg, update.flat())
    else:
        g = [to_field(v) for v in global_model.flat()]
        u = [to_field(v) for v in update.flat()]
    return [*g, round_id, *u, sender]


def witness_args(
    cfg: ModelConfig,
    kind: CircuitKind,
    global_model: Weights,
    update: Weights,
    x: Matrix,
    y: Matrix,
    sender: int,
    round_id: int,
) -> list[object]:
    """zokrates-js computeWitness arguments (decimal strings, nested as the ABI says)."""

    if cfg.secure_aggregation:
        raise ValueError(f"{cfg.name} masks its updates: use masked_witness_args")
    inputs = public_inputs(cfg, kind, global_model, update, sender, round_id)
    n = cfg.n_words if kind is CircuitKind.PACKED else cfg.n_weights
    return [
        [str(v) for v in inputs[:n]],
        str(inputs[n]),
        [str(v) for v in inputs[n + 1 : 2 * n + 1]],
        str(inputs[-1]),
        *_private_args(global_model, x, y),
    ]


def _private_args(global_model: Weights, x: Matrix, y: Matrix) -> list[object]:
    def enc(v: int) -> str:
        return str(to_field(v))

    def enc_matrix(m: Sequence[Sequence[int]]) -> list[list[str]]:
        return [[enc(v) for v in row] for row in m]

    return [enc_matrix(global_model.w), [enc(v) for v in global_model.b], enc_matrix(x), enc_matrix(y)]


def masked_witness_args(
    cfg: ModelConfig,
    global_model: Weights,
    x: Matrix,
    y: Matrix,
    round_id: int,
    member_keys: Sequence[int],
    slot: int,
    secret: int,
) -> list[object]:
    """computeWitness arguments of a secure-aggregation circuit: the round set's keys as the
    contract lays them out (x, y of each slot; (0, 1) for an absent one), the member's slot and
    its masking secret. The circuit computes the update itself and returns its masked words."""
    if not cfg.secure_aggregation:
        raise ValueError(f"{cfg.name} does not mask its updates: use witness_args")
    size = cfg.set_size
    if len(member_keys) != 2 * size:
        raise ValueError(f"{cfg.name}'s round set has {size} slots: {2 * size} key words, not {len(member_keys)}")
    if not 0 <= slot < size:
        raise ValueError(f"slot {slot} is outside the round set's {size} slots")
    return [
        [str(v) for v in pack(cfg, global_model.flat())],
        str(round_id),
        [[str(member_keys[2 * j]), str(member_keys[2 * j + 1])] for j in range(size)],
        str(slot),
        *_private_args(global_model, x, y),
        str(secret),
    ]
