"""Where the project's Node toolchain and build outputs live (overridable for deployments).

WAFL_HOME is the toolchain home: the directory holding package.json, node_modules/ (npm ci),
circuits/ and contracts/. Run from a source checkout it defaults to the checkout; an installed
wheel has no checkout around it, so there it must be set (the service images set /app).

Importing this module never fails: the paths below are computed eagerly so that modules can name
them at import time. Whatever needs the toolchain asks :func:`toolchain_home`, :func:`npm_version`
or :func:`anvil_binary` first, which raise :class:`ToolchainError` saying what to set or install.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Where a source checkout would be: wafl/core/paths.py is two levels below it.
_CHECKOUT = Path(__file__).resolve().parents[2]


class ToolchainError(RuntimeError):
    """The Node toolchain is not where WaFL looks for it; the message says what to set or run."""


def _is_checkout(path: Path) -> bool:
    return (path / "package.json").is_file() and (path / "circuits").is_dir()


def _home() -> Path | None:
    if os.environ.get("WAFL_HOME"):
        return Path(os.environ["WAFL_HOME"])
    return _CHECKOUT if _is_checkout(_CHECKOUT) else None


# The toolchain home, or None: WAFL_HOME is unset and this wafl is installed outside a checkout.
WAFL_HOME = _home()
# Without a home these point into the site-packages holding wafl, where nothing is: rely on them
# only after toolchain_home() (or a function that calls it) has passed.
PROJECT_ROOT = WAFL_HOME or _CHECKOUT
BUILD_DIR = Path(os.environ.get("WAFL_BUILD_DIR") or PROJECT_ROOT / "build")
NODE_MODULES = PROJECT_ROOT / "node_modules"
CIRCUIT_DIR = PROJECT_ROOT / "circuits"
CONTRACT_DIR = PROJECT_ROOT / "contracts"
NODE = os.environ.get("WAFL_NODE", "node")


def toolchain_home() -> Path:
    """WAFL_HOME, or the source checkout this wafl runs from; ToolchainError when it has neither."""
    if WAFL_HOME is None:
        raise ToolchainError(
            f"WAFL_HOME is not set and wafl is installed outside a source checkout (in {_CHECKOUT}): set WAFL_HOME "
            "to the directory holding package.json, node_modules/ (after `npm ci`), circuits/ and contracts/, "
            "e.g. a checkout of the WaFL repository"
        )
    return WAFL_HOME


def _not_installed(what: str) -> ToolchainError:
    home = toolchain_home()  # no home at all: that error says more than "not installed"
    return ToolchainError(f"{what} is not installed under {NODE_MODULES}: run `npm ci` in WAFL_HOME ({home})")


def npm_version(package: str) -> str:
    """The installed version of a toolchain npm package (build caches are keyed by it)."""
    manifest = NODE_MODULES / package / "package.json"
    if not manifest.is_file():
        raise _not_installed(package)
    return str(json.loads(manifest.read_text())["version"])


def anvil_binary() -> Path:
    """The anvil executable from the pinned @foundry-rs/anvil npm package."""
    for candidate in (NODE_MODULES / "@foundry-rs").glob("anvil-*/bin/anvil"):
        return candidate
    raise _not_installed("anvil")
