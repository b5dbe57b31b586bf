"""The layers only point down: the library (wafl) below the services below the tools, and inside
the library core below data, zk, chain and bus (docs/design.md, "Layout")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What each package may import of the project, besides itself.
ALLOWED: dict[str, set[str]] = {
    "wafl": set(),  # wafl/__init__.py: the version only
    "wafl.core": set(),
    "wafl.data": {"wafl.core"},
    "wafl.zk": {"wafl.core"},
    "wafl.chain": {"wafl.core", "wafl.zk"},
    # The service skeleton loads the deployment artifact, and nothing else of the chain package.
    "wafl.bus": {"wafl.core", "wafl.chain.artifact"},
    "services": {"wafl"},
    "tools": {"wafl", "services"},
}
PROJECT = ("wafl", "services", "tools")


def package_of(module: str) -> str:
    return next(p for p in sorted(ALLOWED, key=len, reverse=True) if module == p or module.startswith(p + "."))


def project_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m.split(".")[0] in PROJECT}


def modules() -> list[tuple[str, Path]]:
    out = []
    for top in PROJECT:
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            out.append((name, path))
    return out


def allowed(importer: str, imported: str) -> bool:
    own = package_of(importer)
    if imported == own or imported.startswith(own + "."):
        return True
    # services.<a> never imports services.<b>: only the registry (services/__init__.py) names them all.
    return any(imported == a or imported.startswith(a + ".") for a in ALLOWED[own])


def test_every_module_belongs_to_a_layer() -> None:
    assert len(modules()) > 60
    for name, _ in modules():
        assert package_of(name), name


@pytest.mark.parametrize(("name", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_point_down(name: str, path: Path) -> None:
    upward = sorted(m for m in project_imports(path) if not allowed(name, m))
    assert not upward, f"{name} imports {upward}, above or beside its layer"


def test_a_service_imports_no_other_service() -> None:
    for name, path in modules():
        if name.startswith("services.") and name.count(".") >= 1:
            own = ".".join(name.split(".")[:2])
            others = {m for m in project_imports(path) if m.startswith("services.") and not m.startswith(own)}
            assert not others, f"{name} imports {sorted(others)}"


def test_the_check_catches_an_upward_import() -> None:
    assert not allowed("wafl.zk.prover", "services.prover.app")
    assert not allowed("wafl.core.config", "wafl.zk.keys")
    assert not allowed("wafl.bus.service", "wafl.chain.deploy")
    assert not allowed("services.trainer.core", "tools.localnet")
    assert allowed("tools.cli", "services")
