"""The Groth16 setup ceremony: phase 1 (powers of tau) and the BGM17 phase 2 run by snarkjs.

All curve arithmetic is snarkjs' (``circuits/ceremony.mjs`` drives its JS API); this module
sequences the steps, keeps the transcript and checks it against the keys.

Phase 1 is circuit independent. A federation uses a public Perpetual Powers of Tau file
(``powersOfTau28_hez_final_NN.ptau``) that the operator downloads and `check_public_ptau`
compares with its published blake2b hash. `local_phase1` makes a one-party file for tests and
development.

Phase 2 passes one directory from organisation to organisation, by any channel::

    <dir>/circuit.zkey      the snarkjs key with every contribution so far
    <dir>/transcript.json   r1cs sha256, ptau blake2b, snarkjs' circuit hash, the ordered
                            contributions {index, name, hash}, the beacon once finalised

`init` starts it, each organisation runs `verify` on what it received and then `contribute`
(which prints the hash it must keep), and `finalize` applies a public random beacon, checks the
whole chain and writes a key set (`wafl.zk.keys`). Every organisation can then run `verify` with
``mine=`` its hash on the final directory: its contribution is in the keys, so as long as one
contributor discarded its randomness (they all do: it never leaves ceremony.mjs), nobody knows
the trapdoor and nobody can forge a proof.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from wafl.core.paths import BUILD_DIR, CIRCUIT_DIR, NODE
from wafl.zk.keys import META, VERIFICATION_KEY, ZKEY, KeyKind, KeySet, KeySetError, load_keys, vk_hash, write_meta

CEREMONY_SCRIPT = CIRCUIT_DIR / "ceremony.mjs"
TRANSCRIPT = "transcript.json"
TRANSCRIPT_FORMAT = 1
VERIFIER_SOL = "Verifier.sol"
BEACON_NAME = "beacon"
BEACON_ITERATIONS_EXP = 10  # what ceremony.mjs passes to snarkjs: 2^10 hash iterations
MIN_BEACON_BYTES = 32
MAX_BEACON_BYTES = 255  # snarkjs stores the beacon's length in one byte
MAX_NAME_BYTES = 64  # snarkjs keeps the first 64 characters of a name
MAX_POWER = 28

# Published blake2b-512 hashes of the Hermez prepared phase 1 files (Perpetual Powers of Tau with
# 54 contributions and a beacon), from the "Download a ptau" table of snarkjs' README (the copy in
# node_modules/snarkjs/README.md of the pinned snarkjs 0.7.6). Power 28 is the untruncated file,
# powersOfTau28_hez_final.ptau; the others are powersOfTau28_hez_final_NN.ptau.
KNOWN_PTAU_BLAKE2B: dict[int, str] = {
    8: (
        "d6a8fb3a04feb600096c3b791f936a578c4e664d262e4aa24beed1b7a9a96aa5"
        "eb72864d628db247e9293384b74b36ffb52ca8d148d6e1b8b51e279fdf57b583"
    ),
    9: (
        "94f108a80e81b5d932d8e8c9e8fd7f46cf32457e31462deeeef37af1b71c2c1b"
        "3c71fb0d9b59c654ec266b042735f50311f9fd1d4cadce47ab234ad163157cb5"
    ),
    10: (
        "6cfeb8cda92453099d20120bdd0e8a5c4e7706c2da9a8f09ccc157ed2464d921"
        "fd0437fb70db42104769efd7d6f3c1f964bcf448c455eab6f6c7d863e88a5849"
    ),
    11: (
        "47c282116b892e5ac92ca238578006e31a47e7c7e70f0baa8b687f0a5203e28e"
        "a07bbbec765a98dcd654bad618475d4661bfaec3bd9ad2ed12e7abc251d94d33"
    ),
    12: (
        "ded2694169b7b08e898f736d5de95af87c3f1a64594013351b1a796dbee393bd"
        "825f88f9468c84505ddd11eb0b1465ac9b43b9064aa8ec97f2b73e04758b8a4a"
    ),
    13: (
        "58efc8bf2834d04768a3d7ffcd8e1e23d461561729beaac4e3e7a47829a1c906"
        "6d5320241e124a1a8e8aa6c75be0ba66f65bc8239a0542ed38e11276f6fdb4d9"
    ),
    14: (
        "eeefbcf7c3803b523c94112023c7ff89558f9b8e0cf5d6cdcba3ade60f168af4"
        "a181c9c21774b94fbae6c90411995f7d854d02ebd93fb66043dbb06f17a831c1"
    ),
    15: (
        "982372c867d229c236091f767e703253249a9b432c1710b4f326306bfa2428a1"
        "7b06240359606cfe4d580b10a5a1f63fbed499527069c18ae17060472969ae6e"
    ),
    16: (
        "6a6277a2f74e1073601b4f9fed6e1e55226917efb0f0db8a07d98ab01df1ccf4"
        "3eb0e8c3159432acd4960e2f29fe84a4198501fa54c8dad9e43297453efec125"
    ),
    17: (
        "6247a3433948b35fbfae414fa5a9355bfb45f56efa7ab4929e669264a0258976"
        "741dfbe3288bfb49828e5df02c2e633df38d2245e30162ae7e3bcca5b8b49345"
    ),
    18: (
        "7e6a9c2e5f05179ddfc923f38f917c9e6831d16922a902b0b4758b8e79c2ab8a"
        "81bb5f29952e16ee6c5067ed044d7857b5de120a90704c1d3b637fd94b95b13e"
    ),
    19: (
        "bca9d8b04242f175189872c42ceaa21e2951e0f0f272a0cc54fc37193ff66486"
        "00eaf1c555c70cdedfaf9fb74927de7aa1d33dc1e2a7f1a50619484989da0887"
    ),
    20: (
        "89a66eb5590a1c94e3f1ee0e72acf49b1669e050bb5f93c73b066b564dca4e0c"
        "7556a52b323178269d64af325d8fdddb33da3a27c34409b821de82aa2bf1a27b"
    ),
    21: (
        "9aef0573cef4ded9c4a75f148709056bf989f80dad96876aadeb6f1c6d062391"
        "f07a394a9e756d16f7eb233198d5b69407cca44594c763ab4a5b67ae73254678"
    ),
    22: (
        "0d64f63dba1a6f11139df765cb690da69d9b2f469a1ddd0de5e4aa628abb28f7"
        "87f04c6a5fb84a235ec5ea7f41d0548746653ecab0559add658a83502d1cb21b"
    ),
    23: (
        "3063a0bd81d68711197c8820a92466d51aeac93e915f5136d74f63c394ee6d88"
        "c5e8016231ea6580bec02e25d491f319d92e77f5c7f46a9caa8f3b53c0ea544f"
    ),
    24: (
        "fa404d140d5819d39984833ca5ec3632cd4995f81e82db402371a4de7c2eae86"
        "87c62bc632a95b0c6aadba3fb02680a94e09174b7233ccd26d78baca2647c733"
    ),
    25: (
        "0377d860cdb09a8a31ea1b0b8c04335614c8206357181573bf294c25d5ca7dff"
        "72387224fbd868897e6769f7805b3dab02854aec6d69d7492883b5e4e5f35eeb"
    ),
    26: (
        "418dee4a74b9592198bd8fd02ad1aea76f9cf3085f206dfd7d594c9e264ae919"
        "611b1459a1cc920c2f143417744ba9edd7b8d51e44be9452344a225ff7eead19"
    ),
    27: (
        "10ffd99837c512ef99752436a54b9810d1ac8878d368fb4b806267bdd664b4ab"
        "f276c9cd3c4b9039a1fa4315a0c326c0e8e9e8fe0eb588ffd4f9021bf7eae1a1"
    ),
    28: (
        "55c77ce8562366c91e7cda394cf7b7c15a06c12d8c905e8b36ba9cf5e13eb37d"
        "1a429c589e8eaba4c591bc4b88a0e2828745a53e170eac300236f5c1a326f41a"
    ),
}

_HASH = re.compile(r"[0-9a-f]{128}")


class CeremonyError(ValueError):
    """A ceremony step that cannot go on, with the reason in one line."""


class Contribution(NamedTuple):
    name: str
    hash: str


@dataclass(frozen=True)
class Transcript:
    """What transcript.json records: the inputs and the ordered contributions (and beacon)."""

    config: str
    r1cs_sha256: str
    ptau_blake2b: str
    circuit_hash: str  # snarkjs' hash of the circuit's initial key: binds r1cs and ptau together
    contributions: tuple[Contribution, ...] = ()
    beacon: str | None = None  # hex, once finalised
    beacon_hash: str | None = None

    @property
    def finalised(self) -> bool:
        return self.beacon is not None

    def entries(self) -> list[Contribution]:
        """Every contribution in the key's order, the beacon last."""
        tail = [Contribution(BEACON_NAME, self.beacon_hash)] if self.beacon_hash else []
        return [*self.contributions, *tail]

    def to_json(self) -> dict[str, Any]:
        beacon = None
        if self.beacon is not None:
            beacon = {
                "index": len(self.contributions) + 1,
                "hex": self.beacon,
                "iterations_exp": BEACON_ITERATIONS_EXP,
                "hash": self.beacon_hash,
            }
        return {
            "format": TRANSCRIPT_FORMAT,
            "protocol": "groth16 phase 2 (BGM17, snarkjs)",
            "config": self.config,
            "r1cs_sha256": self.r1cs_sha256,
            "ptau_blake2b": self.ptau_blake2b,
            "circuit_hash": self.circuit_hash,
            "contributions": [
                {"index": i, "name": c.name, "hash": c.hash} for i, c in enumerate(self.contributions, start=1)
            ],
            "beacon": beacon,
        }

    @classmethod
    def from_json(cls, raw: Any, source: Path) -> Transcript:
        try:
            if not isinstance(raw, dict) or raw.get("format") != TRANSCRIPT_FORMAT:
                raise CeremonyError(f"{source} is not a ceremony transcript of format {TRANSCRIPT_FORMAT}")
            contributions = []
            for i, entry in enumerate(raw["contributions"], start=1):
                if entry["index"] != i or not _HASH.fullmatch(entry["hash"]):
                    raise CeremonyError(f"{source}: contribution #{i} is malformed")
                contributions.append(Contribution(str(entry["name"]), entry["hash"]))
            beacon = raw.get("beacon")
            for key in ("r1cs_sha256", "ptau_blake2b", "circuit_hash", "config"):
                if not isinstance(raw[key], str):
                    raise CeremonyError(f"{source}: {key} is not a string")
            return cls(
                config=raw["config"],
                r1cs_sha256=raw["r1cs_sha256"],
                ptau_blake2b=raw["ptau_blake2b"],
                circuit_hash=raw["circuit_hash"],
                contributions=tuple(contributions),
                beacon=None if beacon is None else str(beacon["hex"]),
                beacon_hash=None if beacon is None else str(beacon["hash"]),
            )
        except (KeyError, TypeError) as exc:
            raise CeremonyError(f"{source} is not a valid ceremony transcript (bad or missing {exc})") from None


# --- the node script --------------------------------------------------------------------------


def _node(command: str, **options: str | Path | int) -> dict[str, Any]:
    """Run one ceremony.mjs command; its JSON answer, or CeremonyError with its one-line reason."""
    argv = [NODE, str(CEREMONY_SCRIPT), command]
    for key, value in options.items():
        # in_ stands for --in (a Python keyword)
        argv += [f"--{key.rstrip('_').replace('_', '-')}", str(value)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise CeremonyError(f"cannot run node ({NODE}): {exc.strerror}; install Node.js 20+ and `npm ci`") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        reason = lines[-1].strip() if lines else f"exit status {proc.returncode}"
        raise CeremonyError(reason)
    try:
        answer: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise CeremonyError(f"ceremony.mjs {command} gave no JSON answer") from None
    return answer


# --- files ------------------------------------------------------------------------------------


def bin_sections(path: Path, magic: bytes) -> dict[int, list[tuple[int, int]]]:
    """The sections of an iden3 binary file (r1cs, ptau, zkey): type -> [(offset, size)]."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != magic:
                raise CeremonyError(f"{path} is not a {magic.decode()} file")
            (count,) = struct.unpack_from("<I", head, 8)
            sections: dict[int, list[tuple[int, int]]] = {}
            for _ in range(count):
                raw = f.read(12)
                if len(raw) < 12:
                    raise CeremonyError(f"{path} is truncated")
                kind, size = struct.unpack("<IQ", raw)
                sections.setdefault(kind, []).append((f.tell(), size))
                f.seek(size, os.SEEK_CUR)
    except FileNotFoundError:
        raise CeremonyError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise CeremonyError(f"{path} is a directory, not a {magic.decode()} file") from None
    return sections


def _read_at(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)


def _header(path: Path, magic: bytes) -> tuple[bytes, int, dict[int, list[tuple[int, int]]]]:
    """An iden3 binary file's header section, the field size n8 it starts with, and all sections."""
    sections = bin_sections(path, magic)
    if 1 not in sections:
        raise CeremonyError(f"{path} has no header")
    offset, size = sections[1][0]
    header = _read_at(path, offset, size)
    (n8,) = struct.unpack_from("<I", header, 0)
    return header, n8, sections


def required_power(r1cs: Path) -> int:
    """The smallest phase 1 power for a circuit: 2^power >= constraints + public values + 1.

    The same domain snarkjs' newZKey sizes (public values: inputs and outputs).
    """
    r1cs = Path(r1cs)
    header, n8, _ = _header(r1cs, b"r1cs")
    try:
        _vars, outputs, public_inputs, _private, _labels, constraints = struct.unpack_from("<IIIIQI", header, 4 + n8)
    except struct.error:
        raise CeremonyError(f"{r1cs} has a truncated header") from None
    domain = int(constraints) + int(outputs) + int(public_inputs) + 1
    return max(1, (domain - 1).bit_length())


def ptau_power(ptau: Path) -> int:
    """The power of a ptau file; refuses one not prepared for phase 2."""
    ptau = Path(ptau)
    header, n8, sections = _header(ptau, b"ptau")
    (power,) = struct.unpack_from("<I", header, 4 + n8)
    if 12 not in sections:
        raise CeremonyError(f"{ptau} is not prepared for phase 2 (use a *_final ptau, after preparePhase2)")
    return int(power)


def sha256_file(path: Path) -> str:
    return _hash_file(path, hashlib.sha256())


def blake2b_file(path: Path) -> str:
    """blake2b-512 of a whole file, as the published ptau hashes are (b2sum)."""
    return _hash_file(path, hashlib.blake2b(digest_size=64))


def _hash_file(path: Path, hasher: Any) -> str:
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
    except FileNotFoundError:
        raise CeremonyError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise CeremonyError(f"{path} is a directory, not a file") from None
    return str(hasher.hexdigest())


def normalise_hash(text: str) -> str:
    """A contribution hash as hex: accepts snarkjs' printed form (groups, spaces, newlines) and 0x."""
    value = re.sub(r"\s+", "", text).lower().removeprefix("0x")
    if not _HASH.fullmatch(value):
        raise CeremonyError("a contribution hash is 64 bytes of hex (128 hex digits, as contribute printed it)")
    return value


def format_hash(value: str) -> str:
    """snarkjs' way of printing a 64-byte hash: four lines of four 8-digit groups."""
    groups = [value[i : i + 8] for i in range(0, len(value), 8)]
    return "\n".join(" ".join(groups[row * 4 : row * 4 + 4]) for row in range(len(groups) // 4))


def _require_new(out_dir: Path) -> None:
    # Never overwrite an earlier step's output: it may be the only copy of a contribution.
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise CeremonyError(f"{out_dir} already exists and is not empty: give a new output directory")


def _stage(out_dir: Path) -> Path:
    """A fresh staging directory next to out_dir."""
    out_dir = Path(out_dir)
    _require_new(out_dir)
    staging = out_dir.with_name(out_dir.name + f".partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _publish(staging: Path, out_dir: Path) -> None:
    # Renamed whole, so a crashed step never leaves a directory that looks complete.
    if out_dir.is_dir():
        out_dir.rmdir()
    staging.rename(out_dir)


class _Staged:
    """Context manager for a staging directory, removed unless published."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = _stage(self.out_dir)

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _write_transcript(directory: Path, transcript: Transcript) -> None:
    (directory / TRANSCRIPT).write_text(json.dumps(transcript.to_json(), indent=1) + "\n")


def read_transcript(directory: Path) -> Transcript:
    path = Path(directory) / TRANSCRIPT
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise CeremonyError(f"{directory} has no {TRANSCRIPT}: not a ceremony directory") from None
    except json.JSONDecodeError as exc:
        raise CeremonyError(f"{path} is not valid JSON ({exc.msg})") from None
    return Transcript.from_json(raw, path)


def _open_step(directory: Path) -> tuple[Path, Transcript]:
    directory = Path(directory)
    if not directory.is_dir():
        raise CeremonyError(f"ceremony directory {directory} does not exist")
    zkey = directory / ZKEY
    if not zkey.is_file():
        raise CeremonyError(f"{directory} has no {ZKEY}: not a ceremony directory")
    return zkey, read_transcript(directory)


def _short(c: Contribution) -> str:
    return f"{c.name} {c.hash[:16]}…"


def _match_zkey(directory: Path, answer: Mapping[str, Any], transcript: Transcript) -> None:
    """The zkey's own contribution list (and circuit) must be exactly the transcript's.

    This is what catches a skipped contribution: a zkey built on an earlier step's output lacks
    the contributions the transcript lists after it.
    """
    if answer["circuit_hash"] != transcript.circuit_hash:
        raise CeremonyError(f"the zkey in {directory} is for another circuit or phase 1 than its transcript")
    in_zkey = [Contribution(c["name"], c["hash"]) for c in answer["contributions"]]
    beacons = [c for c in answer["contributions"] if c["type"] == "beacon"]
    listed = transcript.entries()
    for i, (have, want) in enumerate(zip(in_zkey, listed, strict=False), start=1):
        if have != want:
            raise CeremonyError(
                f"contribution #{i} of the zkey in {directory} ({_short(have)}) is not the transcript's "
                f"#{i} ({_short(want)}): a contribution was skipped or replaced"
            )
    if len(in_zkey) < len(listed):
        missing = listed[len(in_zkey)]
        raise CeremonyError(
            f"the zkey in {directory} lacks contribution #{len(in_zkey) + 1} ({_short(missing)}) that its "
            f"transcript lists: a contribution was skipped"
        )
    if len(in_zkey) > len(listed):
        extra = in_zkey[len(listed)]
        raise CeremonyError(
            f"the zkey in {directory} holds contribution #{len(listed) + 1} ({_short(extra)}) that its "
            f"transcript does not list"
        )
    if transcript.finalised:
        if len(beacons) != 1 or beacons[0]["index"] != len(in_zkey) or beacons[0]["beacon"] != transcript.beacon:
            raise CeremonyError(f"the zkey in {directory} does not end with the transcript's beacon")
    elif beacons:
        raise CeremonyError(f"the zkey in {directory} holds a beacon its transcript does not list")


# --- phase 1 ----------------------------------------------------------------------------------


def _check_power(power: int) -> None:
    if not 1 <= power <= MAX_POWER:
        raise CeremonyError(f"the phase 1 power must be 1..{MAX_POWER}, not {power}")


def make_local_ptau(power: int, out: Path) -> Path:
    """A one-party phase 1 of this power at out (new accumulator, one OS-entropy contribution)."""
    _check_power(power)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(out.name + f".partial-{os.getpid()}")
    try:
        _node("phase1-local", power=power, out=staging)
        staging.rename(out)
    finally:
        staging.unlink(missing_ok=True)
    return out


def local_phase1(power: int, build_root: Path = BUILD_DIR) -> Path:
    """This machine's development phase 1 of a power, made once and cached.

    One party's contribution: fine for tests and development, but a federation must not trust one
    organisation's phase 1; it uses a public file checked by `check_public_ptau`.
    """
    _check_power(power)
    path = Path(build_root) / "ptau" / f"local_{power:02d}.ptau"
    if path.exists():
        return path
    return make_local_ptau(power, path)


def public_ptau_name(power: int) -> str:
    return "powersOfTau28_hez_final.ptau" if power == MAX_POWER else f"powersOfTau28_hez_final_{power:02d}.ptau"


def check_public_ptau(path: Path, power: int, known: Mapping[int, str] = KNOWN_PTAU_BLAKE2B) -> str:
    """Check a downloaded public phase 1 file against its published blake2b-512; returns the hash."""
    path = Path(path)
    expected = known.get(power)
    if expected is None:
        raise CeremonyError(
            f"no published hash for a power {power} phase 1 file; known powers: {min(known)}..{max(known)}"
        )
    header_power = ptau_power(path)
    if header_power != power:
        raise CeremonyError(f"{path} holds a power {header_power} phase 1, not power {power}")
    actual = blake2b_file(path)
    if actual != expected:
        raise CeremonyError(
            f"{path} is not the published {public_ptau_name(power)}: blake2b {actual[:32]}… "
            f"but the published hash is {expected[:32]}…"
        )
    return actual


def public_ptau_power(ptau_blake2b: str) -> int | None:
    """The power of the public phase 1 file with this hash, or None for any other file."""
    return next((power for power, known in KNOWN_PTAU_BLAKE2B.items() if known == ptau_blake2b), None)


# --- phase 2 ----------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    if not name or name != name.strip() or re.search(r"[\x00-\x1f\x7f]", name):
        raise CeremonyError("a contribution name is a non-empty line without leading or trailing spaces")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise CeremonyError(f"a contribution name is at most {MAX_NAME_BYTES} bytes (UTF-8)")
    if name.lower() == BEACON_NAME:
        raise CeremonyError(f"{name!r} is reserved for the final beacon")
    return name


def init(r1cs: Path, ptau: Path, out_dir: Path, config_name: str) -> Transcript:
    """Start phase 2 for a circuit: the initial zkey (no contributions) in out_dir."""
    r1cs, ptau, out_dir = Path(r1cs), Path(ptau), Path(out_dir)
    _require_new(out_dir)
    needed, have = required_power(r1cs), ptau_power(ptau)
    if have < needed:
        raise CeremonyError(f"the circuit needs a phase 1 of power {needed} or more; {ptau} has power {have}")
    with _Staged(out_dir) as staging:
        answer = _node("init", r1cs=r1cs, ptau=ptau, out=staging / ZKEY)
        transcript = Transcript(
            config=config_name,
            r1cs_sha256=sha256_file(r1cs),
            ptau_blake2b=blake2b_file(ptau),
            circuit_hash=str(answer["circuit_hash"]),
        )
        _write_transcript(staging, transcript)
        _publish(staging, out_dir)
    return transcript


def contribute(in_dir: Path, out_dir: Path, name: str) -> str:
    """Add this organisation's contribution to in_dir's key, into out_dir; returns its hash.

    The randomness is drawn inside ceremony.mjs and never leaves it. Checks first that the key
    received holds exactly the contributions its transcript lists (nobody was skipped); the full
    cryptographic check of what was received is `verify`, which organisations run before this.
    """
    _check_name(name)
    _require_new(Path(out_dir))
    zkey, transcript = _open_step(in_dir)
    if transcript.finalised:
        raise CeremonyError(f"the ceremony in {in_dir} is finalised: no more contributions")
    if any(c.name == name for c in transcript.contributions):
        raise CeremonyError(f"{name!r} has already contributed to this ceremony; names must be unique")
    with _Staged(out_dir) as staging:
        answer = _node("contribute", in_=zkey, out=staging / ZKEY, name=name)
        # Checked on what the contribution was made on; on a mismatch the new key is discarded unseen.
        _match_zkey(Path(in_dir), answer["previous"], transcript)
        digest = str(answer["hash"])
        new = Transcript(
            config=transcript.config,
            r1cs_sha256=transcript.r1cs_sha256,
            ptau_blake2b=transcript.ptau_blake2b,
            circuit_hash=transcript.circuit_hash,
            contributions=(*transcript.contributions, Contribution(name, digest)),
        )
        _write_transcript(staging, new)
        _publish(staging, Path(out_dir))
    return digest


def check(directory: Path, r1cs: Path, ptau: Path, mine: str | None = None) -> Transcript:
    """Verify a ceremony directory in full; returns its transcript.

    snarkjs verifies every contribution of the zkey from the r1cs and ptau (any changed byte
    fails), the zkey's own contribution list must equal the transcript's (no skipped
    contribution), the r1cs and ptau must be those the transcript names, a key set's
    verification key and verifier must be the zkey's, and with ``mine`` that hash must be one of
    the contributions.
    """
    return _check(Path(directory), Path(r1cs), Path(ptau), mine)


def _check(directory: Path, r1cs: Path, ptau: Path, mine: str | None, export_to: Path | None = None) -> Transcript:
    wanted = None if mine is None else normalise_hash(mine)
    zkey, transcript = _open_step(directory)
    if sha256_file(r1cs) != transcript.r1cs_sha256:
        raise CeremonyError(f"{r1cs} is not the constraint system of the ceremony in {directory}")
    if blake2b_file(ptau) != transcript.ptau_blake2b:
        raise CeremonyError(f"{ptau} is not the phase 1 file of the ceremony in {directory}")
    key_set = (directory / VERIFICATION_KEY).exists() or (directory / META).exists()
    with tempfile.TemporaryDirectory(prefix="wafl-ceremony-") as tmp:
        out = export_to or Path(tmp)
        exports = {"vk": out / VERIFICATION_KEY, "sol": out / VERIFIER_SOL} if key_set or export_to else {}
        answer = _node("verify", r1cs=r1cs, ptau=ptau, zkey=zkey, **exports)
        _match_zkey(directory, answer, transcript)
        if key_set:
            _match_key_set(directory, out, transcript)
    if wanted is not None and wanted not in {c.hash for c in transcript.entries()}:
        raise CeremonyError(f"contribution {wanted[:16]}… is NOT in the ceremony in {directory}")
    return transcript


def _match_key_set(directory: Path, exported: Path, transcript: Transcript) -> None:
    """A key set's files must be its zkey's (exported afresh into ``exported``) and transcript's."""
    try:
        keys = load_keys(directory)
    except KeySetError as exc:
        raise CeremonyError(str(exc)) from None
    if not transcript.finalised:
        raise CeremonyError(f"{directory} holds keys but its transcript has no beacon")
    # The verification key and verifier are what a chain uses: they must come from this zkey.
    if json.loads((exported / VERIFICATION_KEY).read_text()) != keys.verification_key:
        raise CeremonyError(f"{directory / VERIFICATION_KEY} is not the verification key of its zkey")
    sol = directory / VERIFIER_SOL
    if not sol.exists() or sol.read_text() != (exported / VERIFIER_SOL).read_text():
        raise CeremonyError(f"{sol} is missing or is not the verifier of its zkey")
    expected = {
        "circuit_sha256": transcript.r1cs_sha256,
        "transcript_sha256": sha256_file(directory / TRANSCRIPT),
        "contributions": [{"name": c.name, "hash": c.hash} for c in transcript.contributions],
        "beacon": transcript.beacon,
    }
    for key, value in expected.items():
        if keys.meta.get(key) != value:
            raise CeremonyError(f"{directory / META}: {key} does not match the ceremony transcript")


def verify(directory: Path, r1cs: Path, ptau: Path, mine: str | None = None) -> list[Contribution]:
    """`check`, returning every contribution (name, hash) in order, the beacon last once finalised."""
    return check(directory, r1cs, ptau, mine).entries()


def _beacon_hex(beacon_hex: str) -> str:
    value = beacon_hex.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"(?:[0-9a-f]{2})+", value):
        raise CeremonyError("the beacon must be hex (an even number of hex digits)")
    if not MIN_BEACON_BYTES <= len(value) // 2 <= MAX_BEACON_BYTES:
        raise CeremonyError(f"the beacon must be {MIN_BEACON_BYTES}..{MAX_BEACON_BYTES} bytes, not {len(value) // 2}")
    return value


def finalize(in_dir: Path, out_dir: Path, beacon_hex: str, r1cs: Path, ptau: Path) -> KeySet:
    """Apply the public beacon, verify the whole chain and write the federation's key set.

    The beacon must be public and fixed only after the last contribution (e.g. a future block
    hash), so no contributor could choose its contribution knowing it.
    """
    beacon = _beacon_hex(beacon_hex)
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    _require_new(out_dir)
    # Cheap refusals first; then the whole chain so far is verified before the beacon goes on it.
    _, received = _open_step(in_dir)
    if received.finalised:
        raise CeremonyError(f"the ceremony in {in_dir} is already finalised")
    if not received.contributions:
        raise CeremonyError("no organisation has contributed yet: a beacon alone is public, anyone could forge")
    transcript = check(in_dir, r1cs, ptau)
    with _Staged(out_dir) as staging:
        answer = _node("beacon", in_=in_dir / ZKEY, out=staging / ZKEY, beacon=beacon, name=BEACON_NAME)
        final = Transcript(
            config=transcript.config,
            r1cs_sha256=transcript.r1cs_sha256,
            ptau_blake2b=transcript.ptau_blake2b,
            circuit_hash=transcript.circuit_hash,
            contributions=transcript.contributions,
            beacon=beacon,
            beacon_hash=str(answer["hash"]),
        )
        _write_transcript(staging, final)
        _check(staging, Path(r1cs), Path(ptau), None, export_to=staging)
        vk = json.loads((staging / VERIFICATION_KEY).read_text())
        public_power = public_ptau_power(final.ptau_blake2b)
        meta: dict[str, Any] = {
            "kind": KeyKind.CEREMONY.value,
            "config": final.config,
            "circuit_sha256": final.r1cs_sha256,
            "vk_hash": vk_hash(vk),
            "transcript_sha256": sha256_file(staging / TRANSCRIPT),
            "contributions": [{"name": c.name, "hash": c.hash} for c in final.contributions],
            "beacon": beacon,
            "beacon_hash": final.beacon_hash,
            "phase1": {
                "ptau_blake2b": final.ptau_blake2b,
                "public_file": None if public_power is None else public_ptau_name(public_power),
            },
        }
        if public_power is None:
            meta["warning"] = "phase 1 is not a published powers-of-tau file: whoever made it could forge proofs"
        write_meta(staging, meta)
        _publish(staging, out_dir)
    try:
        return load_keys(out_dir)
    except KeySetError as exc:
        raise CeremonyError(f"the finalised keys do not load: {exc}") from None


def iter_entries(transcript: Transcript) -> Iterator[tuple[int, Contribution, bool]]:
    """(index, contribution, is_beacon) for printing."""
    for i, c in enumerate(transcript.entries(), start=1):
        yield i, c, transcript.finalised and i == len(transcript.contributions) + 1
