"""Where the project's tools and build outputs live (overridable for deployments)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(os.environ.get("WAFL_HOME", Path(__file__).resolve().parent.parent))
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
        "anvil is not installed: run `npm ci` in the project root (@foundry-rs/anvil)"
    )
