"""The setup ceremony end to end on a tiny circuit: real snarkjs and zokrates-js, no mocks.

One session-scoped ceremony (local phase 1 of power 4, three contributions and a beacon) is
checked, tampered with in copies, and used to prove; a second, independent ceremony on the
same circuit shows that another setup's proving key cannot make proofs this key accepts.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tools.ceremony_cli import main as cli_main
from wafl.core.paths import NODE, NODE_MODULES, PROJECT_ROOT
from wafl.zk.ceremony import (
    BEACON_NAME,
    CEREMONY_SCRIPT,
    KNOWN_PTAU_BLAKE2B,
    TRANSCRIPT,
    VERIFIER_SOL,
    CeremonyError,
    Contribution,
    bin_sections,
    blake2b_file,
    check_public_ptau,
    contribute,
    finalize,
    format_hash,
    init,
    local_phase1,
    make_local_ptau,
    ptau_power,
    required_power,
    verify,
)
from wafl.zk.keys import VERIFICATION_KEY, ZKEY, KeyKind, load_keys, vk_hash, write_meta

pytestmark = pytest.mark.timeout(600)

HERE = Path(__file__).parent
CIRCUIT = HERE / "ceremony_circuit.zok"
HELPER = HERE / "ceremony_helper.mjs"
POWER = 4  # the circuit: 6 constraints + 2 public inputs + 1 <= 2^4
ARGS = ["3", "5", "15", "34"]  # a, b, c = a*b, d = a^2 + b^2
# Another constraint system of the same size class: a zkey for it must not pass for CIRCUIT.
OTHER_SOURCE = """
def main(private field a, private field b, public field c, public field d) {
    assert(a * b == c);
    assert(a * a + b * b == d);
    return;
}
"""


def helper(*args: str | Path) -> dict[str, Any]:
    proc = subprocess.run([NODE, str(HELPER), *map(str, args)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


@dataclass(frozen=True)
class Setup:
    root: Path
    r1cs: Path
    ptau: Path


@dataclass(frozen=True)
class Ceremony:
    steps: list[Path]  # after init, orgA, orgB, orgC
    final: Path
    hashes: list[str]  # orgA, orgB, orgC
    beacon: str


@pytest.fixture(scope="session")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    root = tmp_path_factory.mktemp("ceremony")
    r1cs = root / "circuit.r1cs"
    helper("compile", CIRCUIT, r1cs)
    return Setup(root, r1cs, local_phase1(POWER, build_root=root))


def run_ceremony(setup: Setup, where: Path, names: list[str]) -> Ceremony:
    steps = [where / "step0"]
    init(setup.r1cs, setup.ptau, steps[0], "ceremony-test")
    hashes = []
    for i, name in enumerate(names, start=1):
        steps.append(where / f"step{i}")
        hashes.append(contribute(steps[-2], steps[-1], name))
    beacon = secrets.token_hex(32)
    finalize(steps[-1], where / "final", beacon, setup.r1cs, setup.ptau)
    return Ceremony(steps, where / "final", hashes, beacon)


@pytest.fixture(scope="session")
def ceremony(setup: Setup) -> Ceremony:
    return run_ceremony(setup, setup.root / "main", ["orgA", "orgB", "orgC"])


@pytest.fixture(scope="session")
def other_ceremony(setup: Setup) -> Ceremony:
    """An independent ceremony on the same circuit and phase 1: a different trapdoor."""
    return run_ceremony(setup, setup.root / "other", ["orgX"])


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_transcript(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = directory / TRANSCRIPT
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw, indent=1) + "\n")


def contribution_fields(zkey: Path) -> list[dict[str, tuple[int, int]]]:
    """Byte ranges of each contribution's fields in the zkey's MPC section (snarkjs' layout)."""
    ((offset, _size),) = bin_sections(zkey, b"zkey")[10]
    data = zkey.read_bytes()
    pos = offset + 64  # the circuit hash
    (count,) = struct.unpack_from("<I", data, pos)
    pos += 4
    fields = []
    for _ in range(count):
        entry: dict[str, tuple[int, int]] = {}
        for name, size in (("deltaAfter", 64), ("g1_s", 64), ("g1_sx", 64), ("g2_spx", 128), ("transcript", 64)):
            entry[name] = (pos, size)
            pos += size
        pos += 4  # type
        (params,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if params and data[pos] == 1:  # name: tag, length, bytes
            entry["name"] = (pos + 2, data[pos + 1])
        pos += params
        fields.append(entry)
    return fields


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# --- phase 1 ------------------------------------------------------------------------------------


def test_power_and_local_phase1_cache(setup: Setup) -> None:
    assert required_power(setup.r1cs) == POWER
    assert ptau_power(setup.ptau) == POWER
    assert setup.ptau == setup.root / "ptau" / f"local_{POWER:02d}.ptau"
    before = setup.ptau.stat().st_mtime_ns
    assert local_phase1(POWER, build_root=setup.root) == setup.ptau
    assert setup.ptau.stat().st_mtime_ns == before  # cached, not remade
    proc = subprocess.run(
        [NODE, str(CEREMONY_SCRIPT), "phase1-verify", "--ptau", str(setup.ptau)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"ok": True}, proc.stderr


def test_init_refuses_a_phase1_too_small(setup: Setup, tmp_path: Path) -> None:
    small = make_local_ptau(POWER - 1, tmp_path / "small.ptau")
    with pytest.raises(CeremonyError, match=f"needs a phase 1 of power {POWER}"):
        init(setup.r1cs, small, tmp_path / "out", "x")
    assert not (tmp_path / "out").exists()


def test_public_ptau_table_is_snarkjs_published_table() -> None:
    readme = (NODE_MODULES / "snarkjs" / "README.md").read_text()
    rows = re.findall(
        r"^\|\s*(\d+)\s*\|.*?powersOfTau28_hez_final(?:_\d+)?\.ptau\].*\|\s*([0-9a-f]{128})\s*\|", readme, re.M
    )
    assert {int(power): digest for power, digest in rows} == KNOWN_PTAU_BLAKE2B
    assert set(range(8, 29)) <= set(KNOWN_PTAU_BLAKE2B)


def test_public_ptau_check(setup: Setup, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert blake2b_file(empty) == (
        "786a02f742015903c6c6fd852552d272912f4740e15847618a86e217f71f5419"
        "d25e1031afee585313896444934eb04b903a685b1448b755d56f701afe9be2ce"
    )
    actual = hashlib.blake2b(setup.ptau.read_bytes(), digest_size=64).hexdigest()
    assert blake2b_file(setup.ptau) == actual
    # A table entry of our own stands in for a published file we cannot download here.
    assert check_public_ptau(setup.ptau, POWER, known={POWER: actual}) == actual
    wrong = "ab" * 64
    with pytest.raises(CeremonyError) as refused:
        check_public_ptau(setup.ptau, POWER, known={POWER: wrong})
    message = str(refused.value)
    assert f"not the published powersOfTau28_hez_final_{POWER:02d}.ptau" in message
    assert actual[:32] in message and wrong[:32] in message and "\n" not in message
    with pytest.raises(CeremonyError, match="no published hash for a power 5"):
        check_public_ptau(setup.ptau, 5)
    with pytest.raises(CeremonyError, match=f"holds a power {POWER} phase 1, not power 12"):
        check_public_ptau(setup.ptau, 12)


# --- phase 2 ------------------------------------------------------------------------------------


def test_ceremony_lists_every_contribution_in_order(setup: Setup, ceremony: Ceremony) -> None:
    final = json.loads((ceremony.final / TRANSCRIPT).read_text())
    beacon_hash = final["beacon"]["hash"]
    assert final["beacon"]["hex"] == ceremony.beacon
    expected = [
        Contribution("orgA", ceremony.hashes[0]),
        Contribution("orgB", ceremony.hashes[1]),
        Contribution("orgC", ceremony.hashes[2]),
        Contribution(BEACON_NAME, beacon_hash),
    ]
    assert verify(ceremony.final, setup.r1cs, setup.ptau) == expected
    assert len({*ceremony.hashes, beacon_hash}) == 4
    # An intermediate directory verifies as far as it goes.
    assert verify(ceremony.steps[2], setup.r1cs, setup.ptau) == expected[:2]


def test_mine_finds_each_contribution(setup: Setup, ceremony: Ceremony) -> None:
    for digest in (ceremony.hashes[0], ceremony.hashes[2]):
        verify(ceremony.final, setup.r1cs, setup.ptau, mine=digest)
    # snarkjs' printed form (groups and line breaks) is accepted too.
    verify(ceremony.final, setup.r1cs, setup.ptau, mine=format_hash(ceremony.hashes[1]))
    with pytest.raises(CeremonyError, match="is NOT in the ceremony"):
        verify(ceremony.final, setup.r1cs, setup.ptau, mine=secrets.token_hex(64))


def test_key_set(setup: Setup, ceremony: Ceremony) -> None:
    keys = load_keys(ceremony.final)
    vk = json.loads((ceremony.final / VERIFICATION_KEY).read_text())
    assert keys.kind is KeyKind.CEREMONY and not keys.is_development
    assert keys.vk_hash == vk_hash(vk)
    assert keys.config_name == "ceremony-test"
    assert keys.circuit_sha256 == hashlib.sha256(setup.r1cs.read_bytes()).hexdigest()
    assert keys.transcript_sha256 == hashlib.sha256((ceremony.final / TRANSCRIPT).read_bytes()).hexdigest()
    assert keys.meta["contributions"] == [
        {"name": n, "hash": h} for n, h in zip(["orgA", "orgB", "orgC"], ceremony.hashes, strict=True)
    ]
    assert keys.meta["beacon"] == ceremony.beacon
    assert keys.meta["phase1"]["public_file"] is None and "warning" in keys.meta
    assert keys.zkey == ceremony.final / ZKEY
    assert "contract Groth16Verifier" in (ceremony.final / VERIFIER_SOL).read_text()


def test_swapped_verification_key_fails(
    setup: Setup, ceremony: Ceremony, other_ceremony: Ceremony, tmp_path: Path
) -> None:
    # Another ceremony's verification key with a consistent keys.json: load_keys accepts it, verify must not.
    forged = copy_dir(ceremony.final, tmp_path / "forged")
    shutil.copy(other_ceremony.final / VERIFICATION_KEY, forged / VERIFICATION_KEY)
    meta = json.loads((forged / "keys.json").read_text())
    meta.pop("format")
    meta["vk_hash"] = vk_hash(json.loads((forged / VERIFICATION_KEY).read_text()))
    write_meta(forged, meta)
    load_keys(forged)
    with pytest.raises(CeremonyError, match="is not the verification key of its zkey"):
        verify(forged, setup.r1cs, setup.ptau)


@pytest.mark.parametrize(
    ("step", "contribution", "field"),
    [
        (2, 0, "g1_sx"),  # orgA's key, seen in orgB's output
        (2, 1, "transcript"),
        (2, 1, "name"),  # not in snarkjs' hashes: caught by the transcript comparison
        ("final", 0, "g2_spx"),
        ("final", 2, "deltaAfter"),
        ("final", 3, "g1_s"),  # the beacon's
    ],
)
def test_changed_byte_in_a_contribution_fails(
    setup: Setup, ceremony: Ceremony, tmp_path: Path, step: int | str, contribution: int, field: str
) -> None:
    source = ceremony.final if step == "final" else ceremony.steps[int(step)]
    tampered = copy_dir(source, tmp_path / "tampered")
    offset, size = contribution_fields(tampered / ZKEY)[contribution][field]
    flip(tampered / ZKEY, offset + size // 2)
    with pytest.raises(
        CeremonyError, match=f"does not verify: contribution #{contribution + 1}|is not the transcript's"
    ):
        verify(tampered, setup.r1cs, setup.ptau)


@pytest.mark.parametrize("section", [8, 9])  # the L and H points every contribution rescales
def test_changed_byte_in_the_key_fails(setup: Setup, ceremony: Ceremony, tmp_path: Path, section: int) -> None:
    tampered = copy_dir(ceremony.steps[3], tmp_path / "tampered")
    ((offset, size),) = bin_sections(tampered / ZKEY, b"zkey")[section]
    flip(tampered / ZKEY, offset + size // 2)
    with pytest.raises(CeremonyError, match="does not verify"):
        verify(tampered, setup.r1cs, setup.ptau)


def test_skipped_contribution_fails(setup: Setup, ceremony: Ceremony, tmp_path: Path) -> None:
    a, b, c = ceremony.hashes
    # orgB's directory reaches orgC with orgA's key in it: orgB's contribution would be lost.
    stale = copy_dir(ceremony.steps[2], tmp_path / "stale")
    shutil.copy(ceremony.steps[1] / ZKEY, stale / ZKEY)
    with pytest.raises(CeremonyError, match=r"lacks contribution #2 \(orgB"):
        verify(stale, setup.r1cs, setup.ptau)
    with pytest.raises(CeremonyError, match="skipped"):
        contribute(stale, tmp_path / "after-stale", "orgC")
    assert not (tmp_path / "after-stale").exists()

    # orgC contributes on top of orgA's output: the chain verifies, but orgB finds its hash missing...
    skipped = tmp_path / "skipped"
    contribute(ceremony.steps[1], skipped, "orgC")
    assert [n for n, _ in verify(skipped, setup.r1cs, setup.ptau)] == ["orgA", "orgC"]
    with pytest.raises(CeremonyError, match="is NOT in the ceremony"):
        verify(skipped, setup.r1cs, setup.ptau, mine=b)
    # ...and a transcript claiming orgB anyway does not match the key.
    c_skip = json.loads((skipped / TRANSCRIPT).read_text())["contributions"][1]["hash"]
    edit_transcript(
        skipped,
        lambda raw: raw.update(
            contributions=[
                {"index": 1, "name": "orgA", "hash": a},
                {"index": 2, "name": "orgB", "hash": b},
                {"index": 3, "name": "orgC", "hash": c_skip},
            ]
        ),
    )
    with pytest.raises(CeremonyError, match="skipped"):
        verify(skipped, setup.r1cs, setup.ptau)
    assert c != c_skip


def test_other_r1cs_or_ptau_fails(setup: Setup, ceremony: Ceremony, tmp_path: Path) -> None:
    other_zok = tmp_path / "other.zok"
    other_zok.write_text(OTHER_SOURCE)
    other_r1cs = tmp_path / "other.r1cs"
    helper("compile", other_zok, other_r1cs)
    other_ptau = make_local_ptau(POWER, tmp_path / "other.ptau")

    with pytest.raises(CeremonyError, match="is not the phase 1 file"):
        verify(ceremony.steps[1], setup.r1cs, other_ptau)
    with pytest.raises(CeremonyError, match="is not the constraint system"):
        verify(ceremony.steps[1], other_r1cs, setup.ptau)

    # Keys made from another phase 1 or circuit, with transcripts that lie about it: snarkjs refuses them.
    for r1cs, ptau, name in ((setup.r1cs, other_ptau, "ptau"), (other_r1cs, setup.ptau, "r1cs")):
        init(r1cs, ptau, tmp_path / f"{name}0", "x")
        contribute(tmp_path / f"{name}0", tmp_path / f"{name}1", "orgA")
        edit_transcript(
            tmp_path / f"{name}1",
            lambda raw: raw.update(
                r1cs_sha256=hashlib.sha256(setup.r1cs.read_bytes()).hexdigest(), ptau_blake2b=blake2b_file(setup.ptau)
            ),
        )
        with pytest.raises(CeremonyError, match="does not verify"):
            verify(tmp_path / f"{name}1", setup.r1cs, setup.ptau)
        # Put into this ceremony's directory, its circuit hash gives it away.
        transplanted = copy_dir(ceremony.steps[1], tmp_path / f"{name}-transplanted")
        shutil.copy(tmp_path / f"{name}1" / ZKEY, transplanted / ZKEY)
        with pytest.raises(CeremonyError):
            verify(transplanted, setup.r1cs, setup.ptau)


def test_proofs_only_from_this_setup_verify(ceremony: Ceremony, other_ceremony: Ceremony, tmp_path: Path) -> None:
    args = tmp_path / "args.json"
    args.write_text(json.dumps(ARGS))
    vk = ceremony.final / VERIFICATION_KEY
    ours, theirs = tmp_path / "ours.json", tmp_path / "theirs.json"
    assert helper("prove", CIRCUIT, ceremony.final / ZKEY, args, ours)["publicSignals"] == ["15", "34"]
    helper("prove", CIRCUIT, other_ceremony.final / ZKEY, args, theirs)
    assert helper("verify", vk, ours) == {"ok": True}
    assert helper("verify", other_ceremony.final / VERIFICATION_KEY, theirs) == {"ok": True}
    # The other setup's trapdoor is not this one's: its proofs do not verify under this key.
    assert helper("verify", vk, theirs) == {"ok": False}


def test_contributions_use_fresh_randomness(ceremony: Ceremony, tmp_path: Path) -> None:
    first = contribute(ceremony.steps[0], tmp_path / "one", "orgA")
    second = contribute(ceremony.steps[0], tmp_path / "two", "orgA")
    assert first != second
    assert (tmp_path / "one" / ZKEY).read_bytes() != (tmp_path / "two" / ZKEY).read_bytes()
    # No way in for chosen entropy: not an option, not an environment variable.
    proc = subprocess.run(
        [
            NODE,
            str(CEREMONY_SCRIPT),
            "contribute",
            "--in",
            str(ceremony.steps[0] / ZKEY),
            "--out",
            str(tmp_path / "x.zkey"),
            "--name",
            "orgA",
            "--entropy",
            "00",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown option --entropy" in proc.stderr
    assert not (tmp_path / "x.zkey").exists()
    script = CEREMONY_SCRIPT.read_text()
    assert set(re.findall(r"process\.env\.(\w+)", script)) == {"WAFL_CEREMONY_VERBOSE"}
    assert "process.env[" not in script and "randomBytes(64)" in script


def test_refusals(setup: Setup, ceremony: Ceremony, tmp_path: Path) -> None:
    with pytest.raises(CeremonyError, match=r"32\.\.255 bytes"):
        finalize(ceremony.steps[3], tmp_path / "f", "ab" * 16, setup.r1cs, setup.ptau)
    with pytest.raises(CeremonyError, match="must be hex"):
        finalize(ceremony.steps[3], tmp_path / "f", "zz" * 32, setup.r1cs, setup.ptau)
    with pytest.raises(CeremonyError, match="already finalised"):
        finalize(ceremony.final, tmp_path / "f", "ab" * 32, setup.r1cs, setup.ptau)
    with pytest.raises(CeremonyError, match="no organisation has contributed"):
        finalize(ceremony.steps[0], tmp_path / "f", "ab" * 32, setup.r1cs, setup.ptau)
    with pytest.raises(CeremonyError, match="is finalised"):
        contribute(ceremony.final, tmp_path / "f", "orgD")
    with pytest.raises(CeremonyError, match="already contributed"):
        contribute(ceremony.steps[3], tmp_path / "f", "orgB")
    with pytest.raises(CeremonyError, match="reserved"):
        contribute(ceremony.steps[3], tmp_path / "f", "Beacon")
    with pytest.raises(CeremonyError, match="not empty"):
        contribute(ceremony.steps[3], ceremony.steps[2], "orgD")
    with pytest.raises(CeremonyError, match="does not exist"):
        verify(tmp_path / "missing", setup.r1cs, setup.ptau)
    assert not (tmp_path / "f").exists()


# --- command line -------------------------------------------------------------------------------


def test_cli_contribute_then_verify_mine(
    setup: Setup, ceremony: Ceremony, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "orgD"
    assert (
        cli_main(["ceremony", "contribute", "--in", str(ceremony.steps[3]), "--out", str(out), "--name", "orgD"]) == 0
    )
    printed = capsys.readouterr().out
    digest = json.loads((out / TRANSCRIPT).read_text())["contributions"][3]["hash"]
    assert digest in printed and "keep it" in printed
    grouped = format_hash(digest)
    common = ["--r1cs", str(setup.r1cs), "--ptau", str(setup.ptau)]
    assert cli_main(["ceremony", "verify", "--dir", str(out), *common, "--mine", grouped]) == 0
    listing = capsys.readouterr().out
    for i, name in enumerate(["orgA", "orgB", "orgC", "orgD"], start=1):
        assert f"#{i} {name}" in listing
    assert "your contribution is included" in listing


@pytest.mark.parametrize(
    "args",
    [
        ["verify", "--dir", "{tmp}/missing", "--r1cs", "{r1cs}", "--ptau", "{ptau}"],
        ["contribute", "--in", "{tmp}/missing", "--out", "{tmp}/out", "--name", "orgA"],
        [
            "finalize",
            "--in",
            "{tmp}/missing",
            "--out",
            "{tmp}/out",
            "--beacon",
            "00",
            "--r1cs",
            "{r1cs}",
            "--ptau",
            "{ptau}",
        ],
        ["phase1", "--power", "10", "--ptau", "{ptau}"],
    ],
)
def test_cli_bad_input_is_one_line_exit_2(setup: Setup, tmp_path: Path, args: list[str]) -> None:
    argv = [a.format(tmp=tmp_path, r1cs=setup.r1cs, ptau=setup.ptau) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "tools.ceremony_cli", "ceremony", *argv],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"wafl ceremony {args[0]}: "), proc.stderr
    assert "Traceback" not in proc.stderr
