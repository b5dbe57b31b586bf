"""The service images (services/<name>/Dockerfile), checked without a Docker engine: small (each
installs only the dependencies its service imports: torch only in trainer and metrics, from the
CPU index), non-root, with a health check; the prover's carries Node and exactly the lock file's
zokrates-js. Each service is imported with its image's left-out packages blocked, so a service that
starts importing one fails here rather than in a container."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import textwrap

import pytest

from tests.deploy_helpers import DEPLOY, ROOT, SERVICES

# Distribution -> top-level modules it provides (for blocking them in the import check).
MODULES = {
    "torch": ["torch"],
    "numpy": ["numpy"],
    "scikit-learn": ["sklearn", "scipy", "joblib", "threadpoolctl"],
    "rich": ["rich"],
}
WITH_TORCH = {"trainer", "metrics"}


def dockerfile(service: str) -> str:
    return (ROOT / "services" / service / "Dockerfile").read_text()


def left_out(text: str) -> set[str]:
    """The distributions a Dockerfile leaves out (its requirements.py --without list)."""
    found = re.findall(r"requirements\.py --without ([\w,.-]+)", text)
    assert found, "the Dockerfile must install its requirements with deploy/docker/requirements.py --without"
    return {name for group in found for name in group.split(",")}


@pytest.mark.parametrize("service", SERVICES)
def test_image_is_non_root_with_a_health_check_and_runs_its_service(service: str) -> None:
    text = dockerfile(service)
    runtime = text.split("\nFROM ")[-1]  # the final stage
    assert re.search(r"^USER 10001(:10001)?$", runtime, re.M), "the runtime stage must run as a non-root user"
    assert "HEALTHCHECK" in runtime and "/metrics" in runtime
    assert f'ENTRYPOINT ["wafl", "run", "{service}"]' in runtime
    assert "WAFL_METRICS_PORT=9100" in runtime
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", runtime, re.M) or runtime.startswith("${PYTHON_IMAGE}")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text


@pytest.mark.parametrize("service", SERVICES)
def test_torch_only_where_it_is_needed_and_cpu_only(service: str) -> None:
    text = dockerfile(service)
    excluded = left_out(text)
    if service in WITH_TORCH:
        assert "torch" not in excluded
        assert "--index-url https://download.pytorch.org/whl/cpu" in text
        assert 'requirements.py --only torch' in text  # the version is pyproject's pin
    else:
        assert {"torch", "scikit-learn", "numpy"} <= excluded
        assert "pytorch" not in text


@pytest.mark.parametrize("service", SERVICES)
def test_service_imports_nothing_its_image_leaves_out(service: str) -> None:
    if importlib.util.find_spec(f"wafl_{service}.app") is None:
        pytest.skip(f"wafl_{service}.app does not exist yet")
    blocked = sorted(m for dist in left_out(dockerfile(service)) for m in MODULES.get(dist, [dist]))
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed in the {service} image")
                return None
        sys.meta_path.insert(0, Block())
        import wafl.cli, wafl_{service}.app
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_requirements_script_leaves_out_and_refuses_unknown_names() -> None:
    script = DEPLOY / "docker" / "requirements.py"
    run = lambda *a: subprocess.run([sys.executable, str(script), *a], capture_output=True, text=True)  # noqa: E731
    out = run("--without", "torch,scikit-learn").stdout.split()
    assert not any(line.startswith(("torch", "scikit-learn")) for line in out)
    assert any(line.startswith("web3") for line in out)
    assert run("--only", "torch").stdout.strip().startswith("torch==")
    bad = run("--without", "tensorflow")
    assert bad.returncode != 0 and "tensorflow" in bad.stderr


def _lock_closure(package: str) -> set[str]:
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    todo, seen = [package], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += list((lock[f"node_modules/{name}"].get("dependencies") or {}).keys())
    return seen


def test_prover_image_carries_node_20_and_the_locked_zokrates_js_only() -> None:
    text = dockerfile("prover")
    assert "ARG NODE_IMAGE=node:20-" in text
    assert "COPY package.json package-lock.json ./" in text and "npm ci --omit=dev" in text
    runtime = text.split("\nFROM ")[-1]
    copied = set(re.findall(r"COPY --from=node-deps /app/node_modules/(\S+) ", runtime))
    assert copied == _lock_closure("zokrates-js"), "copy zokrates-js and exactly its locked dependencies"
    assert "/usr/local/bin/node" in runtime
    assert "COPY --from=circuits /app/build /app/build" in runtime  # the proving key is in the image
    assert "WAFL_HOME=/app" in runtime


def test_dockerignore_keeps_builds_and_secrets_out_of_the_context() -> None:
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "node_modules", "build", ".env", "**/*.key"} <= patterns
    # what the Dockerfiles copy must stay in the context
    assert not patterns & {"wafl", "services", "circuits", "contracts", "deploy", "deploy/docker", "pyproject.toml",
                           "package.json", "package-lock.json"}
