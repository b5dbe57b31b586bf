"""Groth16 key sets: the keys one circuit is proven and verified with, and what they are.

A key set is a directory:

- ``keys.json``: what the keys are (``kind``: ``development`` or ``ceremony``), the
  configuration and the hash of the constraint system they were made for, the verification
  key hash the aggregator records, and for a ceremony the transcript hash and contributions;
- ``verification_key.json``: the verification key in snarkjs' format;
- ``circuit.zkey``: a ceremony's final snarkjs key (what every backend proves from);
- ``proving_key.g16``: a development key made by groth16py's one-party setup.

Development keys come from one party's OS entropy (never from public data): they are for
tests and ``wafl simulate`` only and are labelled as such in every artifact. A federation's
keys come from ``wafl ceremony`` (docs in the README).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from eth_hash.auto import keccak

KEYS_FORMAT = 1
META = "keys.json"
VERIFICATION_KEY = "verification_key.json"
ZKEY = "circuit.zkey"
DEVELOPMENT_PROVING_KEY = "proving_key.g16"


class KeyKind(StrEnum):
    DEVELOPMENT = "development"
    CEREMONY = "ceremony"


class KeySetError(ValueError):
    """A key directory that cannot be used, with the reason in the message."""


def _g1(point: list[str]) -> list[int]:
    return [int(point[0]), int(point[1])]


def _g2(point: list[list[str]]) -> list[int]:
    # EIP-197 order: the imaginary part of each coordinate first.
    return [int(point[0][1]), int(point[0][0]), int(point[1][1]), int(point[1][0])]


def vk_words(vk: dict[str, Any]) -> list[int]:
    """The verification key as the verifier contract takes it: alpha, beta, gamma, delta, IC_i.

    G2 points are in the precompile's (EIP-197) coordinate order.
    """
    try:
        if vk.get("protocol") != "groth16" or vk.get("curve") != "bn128":
            raise KeySetError("the verification key is not a Groth16 key on bn128")
        words = [*_g1(vk["vk_alpha_1"]), *_g2(vk["vk_beta_2"]), *_g2(vk["vk_gamma_2"]), *_g2(vk["vk_delta_2"])]
        for point in vk["IC"]:
            words += _g1(point)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        if isinstance(exc, KeySetError):
            raise
        raise KeySetError(f"the verification key is malformed: {exc}") from None
    return words


def vk_hash(vk: dict[str, Any]) -> str:
    """keccak256 of the packed key words: the hash the verifier and aggregator record on chain."""
    blob = b"".join(word.to_bytes(32, "big") for word in vk_words(vk))
    return "0x" + keccak(blob).hex()


@dataclass(frozen=True)
class KeySet:
    directory: Path
    meta: dict[str, Any]

    @property
    def kind(self) -> KeyKind:
        return KeyKind(self.meta["kind"])

    @property
    def is_development(self) -> bool:
        return self.kind is KeyKind.DEVELOPMENT

    @property
    def config_name(self) -> str:
        return str(self.meta["config"])

    @property
    def circuit_sha256(self) -> str:
        return str(self.meta["circuit_sha256"])

    @property
    def vk_hash(self) -> str:
        return str(self.meta["vk_hash"])

    @property
    def transcript_sha256(self) -> str | None:
        value = self.meta.get("transcript_sha256")
        return None if value is None else str(value)

    @property
    def verification_key(self) -> dict[str, Any]:
        vk: dict[str, Any] = json.loads((self.directory / VERIFICATION_KEY).read_text())
        return vk

    @property
    def zkey(self) -> Path | None:
        path = self.directory / ZKEY
        return path if path.exists() else None

    @property
    def development_proving_key(self) -> Path | None:
        path = self.directory / DEVELOPMENT_PROVING_KEY
        return path if path.exists() else None

    def label(self) -> str:
        if self.is_development:
            return f"DEVELOPMENT keys (one party, not for a federation) {self.vk_hash[:18]}"
        return f"ceremony keys {self.vk_hash[:18]} ({len(self.meta.get('contributions', []))} contributions)"


def load_keys(directory: Path) -> KeySet:
    """Read and check a key directory: its files exist and its vk hash matches its key."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeySetError(f"key directory {directory} does not exist")
    try:
        meta = json.loads((directory / META).read_text())
        vk = json.loads((directory / VERIFICATION_KEY).read_text())
    except FileNotFoundError as exc:
        raise KeySetError(f"key directory {directory} has no {Path(str(exc.filename)).name}") from None
    except json.JSONDecodeError as exc:
        raise KeySetError(f"key directory {directory}: invalid JSON ({exc.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != KEYS_FORMAT:
        raise KeySetError(f"{directory / META} is not a WaFL key description of format {KEYS_FORMAT}")
    try:
        kind = KeyKind(str(meta.get("kind")))
    except ValueError:
        raise KeySetError(f"{directory / META}: unknown key kind {meta.get('kind')!r}") from None
    for field in ("config", "circuit_sha256", "vk_hash"):
        if not isinstance(meta.get(field), str):
            raise KeySetError(f"{directory / META} has no {field}")
    if vk_hash(vk) != meta["vk_hash"]:
        raise KeySetError(f"{directory}: verification_key.json does not match the vk_hash of keys.json")
    keys = KeySet(directory, meta)
    if kind is KeyKind.CEREMONY and keys.zkey is None:
        raise KeySetError(f"ceremony key directory {directory} has no {ZKEY}")
    if kind is KeyKind.DEVELOPMENT and keys.development_proving_key is None and keys.zkey is None:
        raise KeySetError(f"development key directory {directory} has no proving key")
    return keys


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    (directory / META).write_text(json.dumps({"format": KEYS_FORMAT, **meta}, indent=1) + "\n")


def make_development_keys(r1cs: Path, directory: Path, *, config: str, circuit_sha256: str) -> KeySet:
    """One-party Groth16 setup with OS entropy (groth16py, arkworks); the secret is never stored.

    Written to a staging directory and renamed, so a crash never leaves half a key set.
    """
    import groth16py

    staging = directory.with_name(directory.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    proving_key, verifying_key = groth16py.setup(str(r1cs))
    proving_key.save(str(staging / DEVELOPMENT_PROVING_KEY))
    vk = json.loads(verifying_key.to_json())
    (staging / VERIFICATION_KEY).write_text(json.dumps(vk, indent=1) + "\n")
    write_meta(
        staging,
        {
            "kind": KeyKind.DEVELOPMENT.value,
            "warning": "development keys: made by one party; whoever made them could forge proofs",
            "config": config,
            "circuit_sha256": circuit_sha256,
            "vk_hash": vk_hash(vk),
            "transcript_sha256": None,
            "contributions": [],
        },
    )
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return load_keys(directory)
