"""Masking keys of secure aggregation (docs/design.md section 12).

Each participant holds a Baby Jubjub secret in a file (its provers read it; it never travels in a
message or a log line) and registers the public key `secret * G` with the aggregator. The curve
arithmetic and Poseidon are ZoKrates' stdlib, run by circuits/masking.mjs: the keys and masks
computed here are the circuit's own, not a second implementation.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

from wafl.core.paths import BUILD_DIR, CIRCUIT_DIR, NODE

SECRET_ENV = "WAFL_MASKING_KEY_FILE"
"""The setting naming the masking secret's file (provers, `wafl attest`)."""

SUBGROUP_ORDER = 2736030358979909402780800718157159386076813972158567259200215660948447373041
"""Order of Baby Jubjub's prime subgroup, which ZoKrates' generator spans: a secret is below it."""

IDENTITY = (0, 1)
"""The key of an absent slot in a round's set: it contributes no mask."""


class MaskingKeyError(ValueError):
    """A masking secret that cannot be read or used; the message never holds the secret."""


def generate_secret() -> int:
    """A uniformly random secret in [1, order), from the operating system's entropy."""
    return secrets.randbelow(SUBGROUP_ORDER - 1) + 1


def write_secret(path: Path, secret: int) -> None:
    """Write the secret to a new file only its owner can read (mode 600); never overwrites."""
    _check(secret)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{secret}\n")


def read_secret(path: Path | str) -> int:
    """The secret in `path` (one decimal integer)."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise MaskingKeyError(f"cannot read the masking key file {path}: {exc.strerror or exc}") from None
    if not text.isdigit():
        raise MaskingKeyError(f"the masking key file {path} does not hold one decimal integer")
    secret = int(text)
    try:
        _check(secret)
    except MaskingKeyError as exc:
        raise MaskingKeyError(f"the masking key file {path}: {exc}") from None
    return secret


def _check(secret: int) -> None:
    if not 0 < secret < SUBGROUP_ORDER:
        raise MaskingKeyError("a masking secret lies between 1 and Baby Jubjub's subgroup order")


def public_key(secret: int) -> tuple[int, int]:
    """secret * G on Baby Jubjub, as the circuit computes it."""
    _check(secret)
    out = _run(["public-key"], {"secret": str(secret)})
    return int(str(out["x"])), int(str(out["y"]))


def pair_masks(secret: int, peer: tuple[int, int], round_id: int, words: int) -> list[int]:
    """Poseidon(shared x, round, w) for w < words: the masks between this secret's holder and
    `peer` in a round (the lower slot adds them, the higher subtracts them). For checks and tests;
    the provers compute masks inside the circuit."""
    _check(secret)
    request: dict[str, object] = {"secret": str(secret), "peer": [str(peer[0]), str(peer[1])], "round": str(round_id)}
    masks = _run(["masks", str(words)], request)["masks"]
    assert isinstance(masks, list)
    return [int(v) for v in masks]


def _run(args: list[str], request: dict[str, object]) -> dict[str, object]:
    proc = subprocess.run(
        [NODE, str(CIRCUIT_DIR / "masking.mjs"), str(BUILD_DIR / "masking"), *args],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise MaskingKeyError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "masking.mjs failed")
    result: dict[str, object] = json.loads(proc.stdout)
    return result
