"""The service images, checked without a Docker engine. chain_watcher, trainer, submitter and
metrics share deploy/docker/service.Dockerfile, each with the build arguments docker-compose.yml
passes it (SERVICE, WITHOUT); the prover has deploy/docker/prover.Dockerfile. Every image is small
(it installs only the dependencies its service imports: torch only in trainer and metrics, from the
CPU index), non-root, with a health check, and runs `wafl run <service>`; the prover's carries
Node, exactly the lock file's zokrates-js and snarkjs with their dependencies, groth16py and the
compiled circuits, but no keys. Each Dockerfile is read with its build arguments substituted as
Docker scopes them, and its torch step, its build-time checks and its entrypoint run here with
stand-ins for pip and wafl. Each service (and the commands its image runs as a job: `wafl attest`,
`wafl ceremony`) is imported with its image's left-out packages blocked, so a service that starts
importing one fails here rather than in a container. The chain image of docker-compose
(deploy/docker/chain.Dockerfile) is checked too."""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deploy_helpers import DEPLOY, ROOT, SERVICES, Image, image

# Distribution -> top-level modules it provides (for blocking them in the import check).
MODULES = {
    "torch": ["torch"],
    "numpy": ["numpy"],
    "scikit-learn": ["sklearn", "scipy", "joblib", "threadpoolctl"],
    "rich": ["rich"],
}
WITH_TORCH = {"trainer", "metrics"}
# Library modules an image runs besides its service: the prover image runs the Kubernetes Jobs
# `wafl ceremony contribute` and `wafl attest`; compose's attest jobs run in the submitter image.
EXTRA_MODULES = {
    "prover": ["wafl.zk.native_prover", "wafl.zk.ceremony", "wafl.chain.attest", "wafl.zk.keys"],
    "submitter": ["wafl.chain.attest", "wafl.zk.keys"],
}
SHARED_DOCKERFILE = DEPLOY / "docker" / "service.Dockerfile"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"
# Docker substitutes build arguments in these instructions' text; a RUN sees them in its environment
# (the same here). ENTRYPOINT, CMD and HEALTHCHECK run in the container, which has no build arguments.
SUBSTITUTED = {"ADD", "COPY", "ENV", "EXPOSE", "LABEL", "RUN", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}


@dataclasses.dataclass(frozen=True)
class Instruction:
    stage: str  # the stage's name; "runtime" for the unnamed last one, "" before the first FROM
    keyword: str
    raw: str  # as written, continuation lines joined
    text: str  # with the build arguments substituted


def _logical_lines(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: comments dropped, continuation lines joined."""
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not (pending or line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        pending = ""
        yield keyword.upper(), arguments.strip()


def instructions(built: Image) -> list[Instruction]:
    """The image's instructions with its build arguments substituted as Docker scopes them: an ARG
    is seen from its declaration in the stage on, valued as compose passes it, else by its default;
    a build argument the stage does not declare is empty there."""
    passed = dict(built.args)
    found: list[Instruction] = []
    stage, scope = "", dict[str, str]()

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return scope.get(name, "" if name in passed else match.group(0))

    for keyword, raw in _logical_lines(built.text):
        if keyword == "FROM":
            named = re.search(r"\sAS\s+(\S+)$", raw, re.I)
            stage, scope = (named.group(1) if named else "runtime"), {}
        elif keyword == "ARG":
            name, _, default = raw.partition("=")
            scope[name] = passed.get(name, default)
        text = re.sub(r"\$\{(\w+)\}|\$(\w+)", substitute, raw) if keyword in SUBSTITUTED else raw
        found.append(Instruction(stage, keyword, raw, text))
    return found


def runs(built: Image) -> list[str]:
    return [i.text for i in instructions(built) if i.keyword == "RUN"]


def runtime_env(built: Image) -> dict[str, str]:
    """The environment the image's containers start with (its last stage's ENV)."""
    env = {}
    for instruction in instructions(built):
        if instruction.stage == "runtime" and instruction.keyword == "ENV":
            for word in shlex.split(instruction.text):
                name, equals, value = word.partition("=")
                assert equals, f"ENV {instruction.raw}: write NAME=value"
                env[name] = value
    return env


def left_out(service: str) -> set[str]:
    """The distributions an image leaves out (the --without list of its requirements.py calls)."""
    found = [m for run in runs(image(service)) for m in re.findall(r'requirements\.py .*?--without "?([^"\s]*)', run)]
    assert found, "the Dockerfile must install its requirements with deploy/docker/requirements.py --without"
    assert all(found), "an empty --without list: is the build argument declared in its stage?"
    return {name for group in found for name in group.split(",")}


def stand_ins(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment whose PATH has stand-ins for wafl and pip, which log their argv to the file
    returned, and this interpreter as python."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir(exist_ok=True)
    for name in ("wafl", "pip"):
        (bin_dir / name).write_text(f"#!{sys.executable}\nimport json, sys\n"
                                    f"open({str(log)!r}, 'a').write(json.dumps([{name!r}, *sys.argv[1:]]) + '\\n')\n")
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    for stand_in in bin_dir.iterdir():
        stand_in.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)}, log


def calls(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A RUN instruction's command, from the repository root (the build stage's /src holds the same files)."""
    return subprocess.run(["/bin/sh", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("service", SERVICES)
def test_compose_passes_the_build_arguments_its_dockerfile_declares(service: str) -> None:
    built = image(service)
    declared: dict[str, bool] = {}  # name -> has a default
    for instruction in instructions(built):
        if instruction.keyword == "ARG":
            name, equals, _ = instruction.raw.partition("=")
            declared[name] = declared.get(name, False) or bool(equals)
    passed = set(dict(built.args))
    assert passed <= set(declared), f"{service}: {sorted(passed - set(declared))} are not build arguments"
    assert {name for name, default in declared.items() if not default} <= passed, f"{service}: an argument is missing"


@pytest.mark.parametrize("service", SERVICES)
def test_image_is_non_root_with_a_health_check(service: str) -> None:
    text = image(service).text
    runtime = text.split("\nFROM ")[-1]  # the final stage
    assert re.search(r"^USER 10001(:10001)?$", runtime, re.M), "the runtime stage must run as a non-root user"
    assert "HEALTHCHECK" in runtime and "/metrics" in runtime
    env = runtime_env(image(service))
    assert env["WAFL_METRICS_PORT"] == "9100" and env["WAFL_HOME"] == "/app"
    assert re.search(r"^FROM \$\{PYTHON_IMAGE\}", runtime, re.M) or runtime.startswith("${PYTHON_IMAGE}")
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text


@pytest.mark.parametrize("service", SERVICES)
def test_image_runs_its_service(service: str, tmp_path: Path) -> None:
    built = image(service)
    entrypoints = [i for i in instructions(built) if i.stage == "runtime" and i.keyword == "ENTRYPOINT"]
    assert entrypoints, "the runtime stage needs an ENTRYPOINT"
    env, log = stand_ins(tmp_path)
    container_env = {**runtime_env(built), "PATH": env["PATH"]}  # no build argument reaches a container
    for extra in ([], ["--settings", "/etc/wafl/settings.yml"]):
        subprocess.run([*json.loads(entrypoints[-1].text), *extra], env=container_env, check=True, timeout=60)
    assert calls(log) == [["wafl", "run", service], ["wafl", "run", service, "--settings", "/etc/wafl/settings.yml"]]


@pytest.mark.parametrize("service", SERVICES)
def test_torch_only_where_it_is_needed_and_cpu_only(service: str, tmp_path: Path) -> None:
    excluded = left_out(service)
    env, log = stand_ins(tmp_path)
    for run in runs(image(service)):
        if "--only torch" in run:
            proc = sh(run, env)
            assert proc.returncode == 0, proc.stderr
    installs = calls(log)
    if service in WITH_TORCH:
        assert "torch" not in excluded
        pin = subprocess.run([sys.executable, str(DEPLOY / "docker" / "requirements.py"), "--only", "torch"],
                             capture_output=True, text=True, check=True).stdout.strip()
        # pyproject's pin, from the CPU index, before the other requirements
        assert installs == [["pip", "install", pin, *CPU_INDEX.split()]]
    else:
        assert {"torch", "scikit-learn", "numpy"} <= excluded
        assert installs == []


def test_the_shared_image_builds_only_the_python_service_it_is_given(tmp_path: Path) -> None:
    """service.Dockerfile's build-time checks: SERVICE names a service of the registry the image
    can import (not the prover, which has its own image); without it the build fails."""
    users = [s for s in SERVICES if image(s).dockerfile == SHARED_DOCKERFILE]
    assert set(users) == set(SERVICES) - {"prover"}
    env, _ = stand_ins(tmp_path)

    def build_checks(built: Image) -> int:
        for instruction in instructions(built):
            if instruction.keyword == "RUN" and "SERVICE" in instruction.raw:
                proc = sh(instruction.text, env)
                if proc.returncode:
                    return proc.returncode
        return 0

    for service in users:
        assert build_checks(image(service)) == 0, service
    submitter = image("submitter")
    for wrong in ("prover", "trainr", None):
        args = tuple((k, v) for k, v in submitter.args if k != "SERVICE") + ((("SERVICE", wrong),) if wrong else ())
        assert build_checks(dataclasses.replace(submitter, args=args)) != 0, f"SERVICE={wrong} builds"


@pytest.mark.parametrize("service", SERVICES)
def test_service_imports_nothing_its_image_leaves_out(service: str) -> None:
    blocked = sorted(m for dist in left_out(service) for m in MODULES.get(dist, [dist]))
    script = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {blocked!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is not installed in the {service} image")
                return None
        sys.meta_path.insert(0, Block())
        import importlib, tools.cli, services.{service}.app
        for module in {EXTRA_MODULES.get(service, [])!r}:
            importlib.import_module(module)
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
    assert run("--only", "torch", "--without", "rich").stdout.strip().startswith("torch==")
    left = run("--only", "torch", "--without", "torch,numpy")
    assert left.returncode == 0 and left.stdout == "", "--only prints nothing --without leaves out"
    bad = run("--without", "tensorflow")
    assert bad.returncode != 0 and "tensorflow" in bad.stderr


def _resolve(lock: dict[str, dict[str, object]], origin: str, name: str) -> str | None:
    """Node's resolution of ``name`` required from the package at lock path ``origin``: the nearest
    node_modules/<name> walking up from it."""
    base = origin
    while True:
        candidate = f"{base}/node_modules/{name}" if base else f"node_modules/{name}"
        if candidate in lock:
            return candidate
        if not base:
            return None
        cut = base.rfind("/node_modules/")
        base = base[:cut] if cut >= 0 else ""


def _lock_closure(*packages: str) -> set[str]:
    """The top-level node_modules directories holding ``packages`` and everything they need at run
    time per package-lock.json (dependencies and installed optional ones; a nested package, e.g.
    node_modules/r1csfile/node_modules/ffjavascript, lives in its top-level parent)."""
    lock = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    todo = [f"node_modules/{p}" for p in packages]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        entry = lock[path]
        assert not entry.get("dev"), f"{path} is a dev dependency"
        for field, required in (("dependencies", True), ("optionalDependencies", False)):
            for name in entry.get(field) or {}:
                resolved = _resolve(lock, path, name)
                assert resolved is not None or not required, f"{path} needs {name}, which the lock does not hold"
                if resolved is not None:
                    todo.append(resolved)
    return {path.removeprefix("node_modules/").split("/node_modules/")[0] for path in seen}


def _prover_node_packages() -> list[str]:
    """The node_modules directories the prover image's node-deps stage copies (its cp list)."""
    match = re.search(r"cp -a --parents((?:\s|\\)+(?:[@\w./-]+(?:\s|\\)+)+)/prover/node_modules/",
                      image("prover").text)
    assert match, "the node-deps stage must copy its packages with `cp -a --parents ... /prover/node_modules/`"
    return match.group(1).replace("\\", " ").split()


def _stages(text: str) -> dict[str, str]:
    """Dockerfile stages by name (the unnamed last one is "runtime")."""
    stages = {}
    for chunk in text.split("\nFROM ")[1:]:
        header = chunk.splitlines()[0]
        named = re.search(r" AS (\S+)$", header)
        stages[named.group(1) if named else "runtime"] = chunk
    return stages


def test_prover_image_carries_node_20_and_the_locked_zokrates_js_and_snarkjs_only() -> None:
    text = image("prover").text
    assert "ARG NODE_IMAGE=node:20-" in text
    assert "COPY package.json package-lock.json ./" in text and "npm ci --omit=dev" in text
    packages = _prover_node_packages()
    assert len(packages) == len(set(packages)), "a package is copied twice"
    assert set(packages) == _lock_closure("zokrates-js", "snarkjs"), \
        "copy zokrates-js and snarkjs with exactly their locked dependencies"
    assert not set(packages) & {"solc", "@foundry-rs", "@openzeppelin"}
    runtime = _stages(text)["runtime"]
    assert "COPY --from=node-deps /prover/node_modules /app/node_modules" in runtime
    assert not re.search(r"COPY --from=node-deps /app/node_modules", text), "copy the pruned node_modules only"
    assert "/usr/local/bin/node" in runtime


def test_circuit_scripts_import_only_what_the_prover_image_carries() -> None:
    # circuits/*.mjs run in the image: the worker (witness: zokrates-js; verify: snarkjs), the
    # build and the ceremony (`wafl ceremony`, `wafl attest`).
    copied = set(_prover_node_packages())
    imported = set()
    for script in (ROOT / "circuits").glob("*.mjs"):
        for spec in re.findall(r"""^\s*import\s[^;]*?from\s+["']([^"']+)["']""", script.read_text(), re.M):
            if spec.startswith((".", "/", "node:")):
                continue
            parts = spec.split("/")
            imported.add("/".join(parts[:2]) if spec.startswith("@") else parts[0])
    assert {"zokrates-js", "snarkjs"} <= imported
    assert imported <= copied, f"circuits/*.mjs import {sorted(imported - copied)}, which the image lacks"


def test_prover_image_carries_compiled_circuits_but_no_keys() -> None:
    text = image("prover").text
    stages = _stages(text)
    circuits, runtime = stages["circuits"], stages["runtime"]
    # Compiled circuits only (program, abi, r1cs): no setup at image build time.
    assert "build_circuit(" in circuits
    assert not re.search(r"development_keys|make_development_keys|wafl build|groth16py\.setup", text)
    assert "test ! -e /app/build/keys" in circuits, "the image build must fail if keys were made"
    assert "COPY --from=circuits /app/build /app/build" in runtime
    for stage in (circuits, runtime):
        assert "WAFL_HOME=/app" in stage and "WAFL_BUILD_DIR=/app/build" in stage
        assert "COPY circuits /app/circuits" in stage
    # The keys come from a mounted key set, the federation's: WAFL_KEYS (services/prover/settings.py).
    assert "WAFL_KEYS=/keys" in runtime
    assert re.search(r"mkdir /keys && chown 10001:10001 /keys", runtime)


def test_prover_image_installs_groth16py() -> None:
    script = DEPLOY / "docker" / "requirements.py"
    excluded = ",".join(sorted(left_out("prover")))
    out = subprocess.run([sys.executable, str(script), "--without", excluded], capture_output=True, text=True,
                         check=True).stdout.split()
    assert any(line.startswith("groth16py==") for line in out), "the prover proves with groth16py"


def test_the_library_finds_its_circuits_under_wafl_home(tmp_path: Path) -> None:
    """In an image the package is installed into the venv while circuits/ lives in $WAFL_HOME
    (/app): every path the library derives for circuits/ must follow WAFL_HOME, not the package's
    own location (wafl/core/paths.py)."""
    site, home = tmp_path / "site", tmp_path / "app"
    shutil.copytree(ROOT / "wafl", site / "wafl", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "circuits", home / "circuits")
    script = textwrap.dedent("""
        import importlib, pathlib, sys
        home = pathlib.Path(sys.argv[1]).resolve()
        wrong = []
        for name in ("wafl.core.paths", "wafl.zk.circuit", "wafl.zk.build", "wafl.zk.prover", "wafl.zk.ceremony"):
            module = importlib.import_module(name)
            for attribute, value in vars(module).items():
                if isinstance(value, pathlib.Path) and "circuits" in value.parts:
                    if not value.resolve().is_relative_to(home):
                        wrong.append(f"{name}.{attribute} = {value}")
        print("\\n".join(wrong))
        sys.exit(1 if wrong else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(home)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "WAFL_HOME": str(home)})
    assert proc.returncode == 0, f"paths outside WAFL_HOME (the image would not find them):\n{proc.stdout}{proc.stderr}"


# ---- the chain image of docker-compose ------------------------------------------------------------


def test_chain_image_runs_the_deploy_job_that_makes_and_shares_the_keys() -> None:
    text = (DEPLOY / "docker" / "chain.Dockerfile").read_text()
    runtime = _stages(text)["runtime"]
    assert "COPY deploy/compose/bootstrap.py /app/bootstrap.py" in runtime
    assert "generated_verifier_path" not in text, "the verifier takes its key at deployment: no generated verifiers"
    assert "compile_contracts()" in runtime
    # The job (uid 10001) builds the circuit and its development keys under build/ at run time,
    # and fills the keys volume (mount point owned by it, so a new volume is too).
    assert "chown -R 10001:10001 /app/build" in runtime
    assert re.search(r"mkdir -p /deployments /keys && chown 10001:10001 /deployments /keys", runtime)
    assert re.search(r"^USER 10001:10001$", runtime, re.M)


def test_dockerignore_keeps_builds_and_secrets_out_of_the_context() -> None:
    patterns = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "node_modules", "build", ".env", "**/*.key"} <= patterns
    # what the Dockerfiles copy must stay in the context
    assert not patterns & {"wafl", "services", "circuits", "contracts", "deploy", "deploy/docker", "pyproject.toml",
                           "package.json", "package-lock.json"}
