"""Where the project's Node toolchain and build outputs live (overridable for deployments).

WAFL_HOME is the toolchain home: the directory holding package.json, node_modules/ (npm ci),
circuits/ and contracts/. Run from a source checkout it defaults to the checkout; an installed
wheel has no checkout around it, so there it must be set (the service images set /app).
"""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[2]


def _home() -> Path:
    if "WAFL_HOME" in os.environ:
        return Path(os.environ["WAFL_HOME"])
    return _CHECKOUT


PROJECT_ROOT = _home()
BUILD_DIR = Path(os.environ.get("WAFL_BUILD_DIR", PROJECT_ROOT / "build"))
NODE_MODULES = PROJECT_ROOT / "node_modules"
CIRCUIT_DIR = PROJECT_ROOT / "circuits"
CONTRACT_DIR = PROJECT_ROOT / "contracts"
NODE = os.environ.get("WAFL_NODE", "node")


def anvil_binary() -> Path:
    """The anvil executable from the pinned @foundry-rs/anvil npm package."""
    for candidate in (NODE_MODULES / "@foundry-rs").glob("anvil-*/bin/anvil"):
        return candidate
    raise FileNotFoundError(
        f"anvil is not installed under {NODE_MODULES}: run `npm ci` in WAFL_HOME ({PROJECT_ROOT})"
    )
