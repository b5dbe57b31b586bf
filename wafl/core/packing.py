"""Weight lanes packed into field elements (docs/design.md section 4).

Each weight w becomes an offset-binary lane u = w + 2^(L-1) in [0, 2^L), placed in a slot of
L + H bits (H zero headroom bits) so that the contract can add packed words of up to 2^H
participants without carries between lanes. The circuit's packing is the lanes' range check.
"""

from __future__ import annotations

from collections.abc import Sequence

from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import FixedPointRangeError, check_range


class LaneOutOfRangeError(ValueError):
    """A packed word has a lane (or headroom) bit set outside the admitted layout."""


def lane_offset(cfg: ModelConfig) -> int:
    return 1 << (cfg.weight_bits - 1)


def lane_shift(cfg: ModelConfig, index: int) -> int:
    """Bit position of lane ``index`` inside its word."""
    return (index % cfg.lanes_per_word) * cfg.slot_bits


def payload_mask(cfg: ModelConfig, word_index: int) -> int:
    """Bits a valid packed word may have set: the L payload bits of each of its lanes."""
    first = word_index * cfg.lanes_per_word
    lanes = min(cfg.lanes_per_word, cfg.n_weights - first)
    lane = (1 << cfg.weight_bits) - 1
    return sum(lane << (k * cfg.slot_bits) for k in range(lanes))


def pack(cfg: ModelConfig, values: Sequence[int]) -> list[int]:
    """Pack n_weights signed values into n_words field elements."""
    if len(values) != cfg.n_weights:
        raise ValueError(f"expected {cfg.n_weights} values to pack, got {len(values)}")
    try:
        check_range("lane", values, cfg.weight_min, cfg.weight_max)
    except FixedPointRangeError as exc:
        raise LaneOutOfRangeError(str(exc)) from exc
    words = [0] * cfg.n_words
    offset = lane_offset(cfg)
    for index, value in enumerate(values):
        words[index // cfg.lanes_per_word] |= (value + offset) << lane_shift(cfg, index)
    return words


def unpack(cfg: ModelConfig, words: Sequence[int]) -> list[int]:
    """Inverse of ``pack``; refuses words with bits outside the lane payloads."""
    if len(words) != cfg.n_words:
        raise ValueError(f"expected {cfg.n_words} packed words, got {len(words)}")
    for word_index, word in enumerate(words):
        if word < 0 or word & ~payload_mask(cfg, word_index):
            raise LaneOutOfRangeError(f"packed word {word_index} has bits outside its lanes")
    lane = (1 << cfg.weight_bits) - 1
    offset = lane_offset(cfg)
    return [
        ((words[i // cfg.lanes_per_word] >> lane_shift(cfg, i)) & lane) - offset
        for i in range(cfg.n_weights)
    ]
