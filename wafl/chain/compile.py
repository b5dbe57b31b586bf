"""Solidity builds with the pinned solc from npm, cached by a hash of every source."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from wafl.paths import BUILD_DIR, CONTRACT_DIR, NODE, NODE_MODULES


class ContractBuildError(RuntimeError):
    pass


def _solc_version() -> str:
    package = NODE_MODULES / "solc" / "package.json"
    if not package.exists():
        raise ContractBuildError("solc is not installed: run `npm ci` in the project root")
    return str(json.loads(package.read_text())["version"])


def compile_contracts(verifier_source: Path, *, verifier_only: bool = False) -> dict[str, Any]:
    """Compile the aggregator and split verifier over one generated ZoKrates verifier.

    Returns {"solc": version, "contracts": {name: {"abi", "bytecode", "deployed_size"}}}.
    """
    if not verifier_source.exists():
        raise ContractBuildError(f"verifier source {verifier_source} does not exist: run `wafl build`")
    digest = hashlib.sha256()
    digest.update(_solc_version().encode())
    digest.update(b"verifier-only" if verifier_only else b"full")
    digest.update(verifier_source.read_bytes())
    for source in [*sorted((CONTRACT_DIR / "src").glob("*.sol")), CONTRACT_DIR / "build.mjs"]:
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    out = BUILD_DIR / "contracts" / f"{digest.hexdigest()[:20]}.json"
    if not out.exists():
        command = [NODE, str(CONTRACT_DIR / "build.mjs"), str(verifier_source), str(out)]
        if verifier_only:
            command.append("--verifier-only")
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ContractBuildError(f"solc failed for {verifier_source}:\n{proc.stderr[-4000:]}")
    compiled: dict[str, Any] = json.loads(out.read_text())
    return compiled
