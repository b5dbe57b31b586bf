"""WaFL as a user installs it: a non-editable wheel in a fresh virtual environment, run from a
directory outside the checkout. `wafl configs` lists the bundled configurations, `wafl build`
renders and compiles a circuit with WAFL_HOME at the checkout's Node toolchain and the build in
WAFL_BUILD_DIR, `wafl deploy` deploys it, and `wafl run prover` starts as in its image (WAFL_HOME,
WAFL_BUILD_DIR with compiled circuits only, WAFL_KEYS elsewhere). Without WAFL_HOME, a command
that needs the toolchain says in one line what to set.

Nothing is downloaded: the wheel is built with the project's own setuptools, and the fresh
environment reaches the third-party packages through a path file naming this environment's
site-packages (a plain path line: the .pth files there, among them the editable install of the
checkout, are not run). The tests check that wafl, services and tools are the installed copies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from tests.support.brokers import AMQP_URL, REDIS_URL
from wafl.chain.anvil import Anvil, fund

pytestmark = pytest.mark.slow

CHECKOUT = Path(__file__).resolve().parents[2]
# What the Docker images copy before `pip install --no-deps .`: enough to build the package.
SOURCES = ("pyproject.toml", "wafl", "services", "tools")
CONFIG = "iris-4x3-b3"

# Where the fresh interpreter finds wafl, services and tools, its meta path, its site-packages.
PROBE = """
import json, sys, sysconfig
import services, tools, wafl, wafl.core.paths as paths
print(json.dumps({
    "files": [wafl.__file__, services.__file__, tools.__file__],
    "finders": [repr(finder) for finder in sys.meta_path],
    "site": sysconfig.get_path("purelib"),
    "home": None if paths.WAFL_HOME is None else str(paths.WAFL_HOME),
}))
"""


@dataclass(frozen=True)
class Installed:
    venv: Path
    cwd: Path  # outside the checkout

    def env(self, **wafl: str | Path) -> dict[str, str]:
        """This process's environment without WAFL_* or Python path settings, plus ``wafl``."""
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("WAFL_") and k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
        return {**base, **{k: str(v) for k, v in wafl.items()}}

    def run(self, program: str, *args: str, env: dict[str, str],
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.venv / "bin" / program), *args], cwd=self.cwd, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def wafl(self, *args: str, **wafl: str | Path) -> subprocess.CompletedProcess[str]:
        return self.run("wafl", *args, env=self.env(**wafl))


def checked(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def one_line_error(proc: subprocess.CompletedProcess[str], prefix: str) -> str:
    """The single stderr line of a refused command (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
    return lines[0]


def files_under(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the sources (setuptools writes build/ and *.egg-info into the
    tree it builds, and the checkout's build/ is the toolchain's)."""
    root = tmp_path_factory.mktemp("wheel")
    (root / "src").mkdir()
    for name in SOURCES:
        source = CHECKOUT / name
        if source.is_dir():
            shutil.copytree(source, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, root / "src" / name)
    checked(subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-w", str(root / "dist"), str(root / "src")],
        capture_output=True, text=True, timeout=300,
    ))
    (built,) = (root / "dist").glob("wafl-*.whl")
    return built


def test_the_wheel_holds_every_module_and_the_package_data(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "wafl = tools.cli:main" in archive.read(entry_points).decode()
    sources = {str(p.relative_to(CHECKOUT)) for layer in ("wafl", "services", "tools")
               for p in (CHECKOUT / layer).rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    data = {f"wafl/core/configs/{p.name}" for p in (CHECKOUT / "wafl/core/configs").glob("*.yaml")}
    assert data and data <= names, sorted(data - names)
    assert {"wafl/py.typed", "services/py.typed", "tools/py.typed"} <= names


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("installed")
    venv, cwd = root / "venv", root / "work"
    cwd.mkdir()
    assert not cwd.is_relative_to(CHECKOUT)
    checked(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)],
                           capture_output=True, text=True, timeout=120))
    # Installed before the path file exists: this pip must not see the checkout's editable wafl
    # in the fresh environment (it would try to uninstall it there).
    checked(subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
         "--no-index", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=300,
    ))
    here = Installed(venv, cwd)
    site = Path(json.loads(checked(here.run("python", "-c", PROBE, env=here.env())).stdout)["site"])
    ours = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "wafl-test-dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return here


def test_the_installed_copies_are_imported_not_the_checkout(installed: Installed) -> None:
    probe = json.loads(checked(installed.run("python", "-c", PROBE, env=installed.env())).stdout)
    for file in probe["files"]:
        assert Path(file).is_relative_to(installed.venv), probe["files"]
    assert not any("editable" in finder for finder in probe["finders"]), probe["finders"]
    # No checkout around the installed package and WAFL_HOME unset: no toolchain home.
    assert probe["home"] is None


def test_configs_lists_the_bundled_configurations(installed: Installed) -> None:
    out = checked(installed.wafl("configs")).stdout
    listed = [line.split(":")[0] for line in out.splitlines()]
    assert listed == sorted(p.stem for p in (CHECKOUT / "wafl/core/configs").glob("*.yaml"))
    assert {"iris-4x3-b3", "ref-9x6-b10"} <= set(listed)
    assert f"{CONFIG}: 4x3, batch 3" in out


@pytest.fixture(scope="module")
def build_dir(installed: Installed) -> Path:
    """`wafl build` of the smallest configuration: circuit, development keys, contracts."""
    build = installed.cwd / "build"
    proc = checked(installed.wafl("build", "--config", CONFIG, WAFL_HOME=CHECKOUT, WAFL_BUILD_DIR=build))
    line = json.loads(proc.stdout)
    assert line["config"] == CONFIG and line["constraints"] > 0, line
    assert line["bytes"]["WaflAggregator"] > 0 and line["bytes"]["WaflVerifier"] > 0, line
    (circuit,) = (build / "circuits" / f"{CONFIG}-packed").iterdir()
    assert {"program.bin", "abi.json", "circuit.r1cs", "build.json"} <= {p.name for p in circuit.iterdir()}
    assert list((build / "contracts").glob("*.json"))
    return build


@pytest.fixture(scope="module")
def deployment(installed: Installed, build_dir: Path, anvil: Anvil, w3: Web3) -> Path:
    """`wafl deploy` with the build's development keys; then the keys leave the build directory,
    which keeps compiled circuits only, as in the prover image (the keys are mounted elsewhere)."""
    deployer, member = Account.create(), Account.create()
    fund(w3, deployer.address)
    key_file = installed.cwd / "deployer.key"
    key_file.write_text(deployer.key.hex())
    out = installed.cwd / "deployment.json"
    proc = checked(installed.wafl(
        "deploy", "--config", CONFIG, "--rpc-url", anvil.url, "--key-file", str(key_file),
        "--participants", member.address, "--quorum", "1", "--out", str(out),
        WAFL_HOME=CHECKOUT, WAFL_BUILD_DIR=build_dir,
    ))
    assert json.loads(proc.stdout)["keys"] == "development"
    (keys,) = (build_dir / "keys" / f"{CONFIG}-packed").iterdir()
    shutil.move(keys, installed.cwd / "keys")
    shutil.rmtree(build_dir / "keys")
    return out


def test_the_prover_starts_as_in_its_image(
    installed: Installed, build_dir: Path, deployment: Path, org: str,
) -> None:
    before = files_under(build_dir)
    env = installed.env(
        WAFL_HOME=CHECKOUT, WAFL_BUILD_DIR=build_dir, WAFL_KEYS=installed.cwd / "keys", WAFL_ORG=org,
        WAFL_DEPLOYMENT=deployment, WAFL_AMQP_URL=AMQP_URL, WAFL_REDIS_URL=REDIS_URL, WAFL_METRICS_PORT="0",
    )
    log_path = installed.cwd / "prover.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(installed.venv / "bin" / "wafl"), "run", "prover"], cwd=installed.cwd,
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while '"service_started"' not in log_path.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log_path.read_text()[-4000:]
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    output = log_path.read_text()
    assert code == 0, output[-4000:]
    (started,) = [json.loads(line) for line in output.splitlines() if '"service_started"' in line]
    assert started["config"] == CONFIG and started["org"] == org, started
    # The compiled circuit was found, not rebuilt, and no keys were made beside it.
    assert files_under(build_dir) == before


@pytest.fixture()
def no_writes(installed: Installed) -> Iterator[None]:
    """Nothing may be written into the environment or the working directory meanwhile."""
    before = files_under(installed.venv), files_under(installed.cwd)
    yield
    assert (files_under(installed.venv), files_under(installed.cwd)) == before


@pytest.mark.usefixtures("no_writes")
def test_without_wafl_home_a_toolchain_command_says_what_to_set(installed: Installed) -> None:
    line = one_line_error(installed.wafl("build", "--config", CONFIG), "wafl: ")
    assert "set WAFL_HOME to the directory holding package.json, node_modules/" in line, line


def test_without_wafl_home_the_prover_says_what_to_set(
    installed: Installed, build_dir: Path, deployment: Path, org: str,
) -> None:
    """Its checks pass (a settings file this time), then it needs zokrates-js for the circuit."""
    settings = installed.cwd / "prover.yaml"
    settings.write_text(json.dumps({  # JSON is YAML
        "org": org, "deployment": str(deployment), "keys": str(installed.cwd / "keys"), "amqp_url": AMQP_URL,
        "redis_url": REDIS_URL, "metrics_port": 0,
    }))
    proc = installed.wafl("run", "prover", "--settings", str(settings), WAFL_BUILD_DIR=build_dir)
    line = one_line_error(proc, "wafl prover: ")
    assert f"cannot build the circuit of {CONFIG}" in line and "set WAFL_HOME to" in line, line
