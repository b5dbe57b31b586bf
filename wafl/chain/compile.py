"""Solidity builds with the pinned solc from npm, cached by a hash of every source."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

from wafl.core.paths import BUILD_DIR, CONTRACT_DIR, NODE, npm_version


class ContractBuildError(RuntimeError):
    pass


def compile_contracts(naive_verifier: Path | None = None) -> dict[str, Any]:
    """Compile the aggregator and the verifier (one build for every configuration).

    With `naive_verifier`, compile only that plain exported verifier (the benchmark's baseline).
    Returns {"solc": version, "contracts": {name: {"abi", "bytecode", "deployed_size"}}}.
    """
    digest = hashlib.sha256()
    digest.update(npm_version("solc").encode())
    if naive_verifier is not None:
        if not naive_verifier.exists():
            raise ContractBuildError(f"verifier source {naive_verifier} does not exist")
        digest.update(b"verifier-only")
        digest.update(naive_verifier.read_bytes())
        sources = [CONTRACT_DIR / "build.mjs"]
    else:
        sources = [*sorted((CONTRACT_DIR / "src").glob("*.sol")), CONTRACT_DIR / "build.mjs"]
    for source in sources:
        digest.update(source.name.encode())
        digest.update(source.read_bytes())
    out = BUILD_DIR / "contracts" / f"{digest.hexdigest()[:20]}.json"
    if not out.exists():
        command = [NODE, str(CONTRACT_DIR / "build.mjs"), str(out)]
        if naive_verifier is not None:
            command += ["--verifier-only", str(naive_verifier)]
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ContractBuildError(f"solc failed:\n{proc.stderr[-4000:]}")
    compiled: dict[str, Any] = json.loads(out.read_text())
    return compiled
