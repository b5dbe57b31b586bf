"""Circuit builds: render and compile, cached by a hash of source + compiler; development keys.

A build holds ZoKrates' program (witnesses are computed from it) and the same constraint system
as a snarkjs r1cs (what a setup ceremony and the provers work on). Keys are separate: a
federation's come from `wafl ceremony`; development keys from `development_keys`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from wafl.core.config import ModelConfig
from wafl.core.paths import BUILD_DIR, CIRCUIT_DIR, NODE, npm_version
from wafl.zk.circuit import CircuitKind, render, source_hash
from wafl.zk.keys import KeySet, KeySetError, load_keys, make_development_keys

ARTIFACTS = ("program.bin", "abi.json", "circuit.r1cs", "build.json")


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class CircuitBuild:
    config: ModelConfig
    kind: CircuitKind
    directory: Path

    @property
    def meta(self) -> dict[str, object]:
        meta: dict[str, object] = json.loads((self.directory / "build.json").read_text())
        return meta

    @property
    def constraints(self) -> int:
        return int(str(self.meta["constraints"]))

    @property
    def r1cs(self) -> Path:
        return self.directory / "circuit.r1cs"

    @cached_property
    def circuit_sha256(self) -> str:
        """The hash a key set names its circuit by (the r1cs bytes)."""
        return hashlib.sha256(self.r1cs.read_bytes()).hexdigest()


def zokrates_version() -> str:
    return npm_version("zokrates-js")


def build_circuit(
    cfg: ModelConfig, kind: CircuitKind = CircuitKind.PACKED, build_root: Path = BUILD_DIR
) -> CircuitBuild:
    key = source_hash(cfg, kind, zokrates_version())
    directory = build_root / "circuits" / f"{cfg.name}-{kind}" / key[:16]
    if all((directory / name).exists() for name in ARTIFACTS):
        return CircuitBuild(cfg, kind, directory)
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    source = staging / "main.zok"
    source.write_text(render(cfg, kind))
    proc = subprocess.run(
        [NODE, str(CIRCUIT_DIR / "build.mjs"), str(source), str(staging)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise BuildError(f"building the {kind} circuit for {cfg.name} failed:\n{proc.stderr[-4000:]}")
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return CircuitBuild(cfg, kind, directory)


def development_keys(build: CircuitBuild, build_root: Path = BUILD_DIR) -> KeySet:
    """This machine's development keys for a build: a one-party setup with OS entropy.

    Made once per machine and circuit and cached; never derived from public data, so nobody
    else can recompute their secret. Not for a federation: whoever ran the setup could forge.
    """
    directory = build_root / "keys" / f"{build.config.name}-{build.kind}" / build.circuit_sha256[:16]
    try:
        return load_keys(directory)
    except KeySetError:
        pass
    return make_development_keys(
        build.r1cs, directory, config=build.config.name, circuit_sha256=build.circuit_sha256
    )
