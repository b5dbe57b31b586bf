"""Bad input to the real `wafl` command, the cases that need no server and no build: each ends with
exit status 2 and one line on stderr that says what is wrong, with no traceback, no secret, and no
process left behind. (Cases against a chain, a broker or a build: tests/integration/test_cli_bad_input.py.)

The commands run concurrently (each is a fresh interpreter); every case then checks its own result.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.processes import processes_with
from tools.cli import LOADED_BAD_INPUT
from wafl.core.config import CONFIG_DIR

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-Sekret-4711"
# A well-formed private key: it must never be echoed, whatever else fails.
KEY = "0x" + "4d" * 32
TOKEN = "glsa_token-Sekret-4711"
# Variables the machinery keeps; every other WAFL_* is removed so that each case sees only its own.
KEPT = ("WAFL_HOME", "WAFL_BUILD_DIR", "WAFL_NODE")
MARKER = "WAFL_BAD_INPUT_TEST"


@dataclass(frozen=True)
class Case:
    name: str
    argv: list[str]
    expected: list[str]  # words the line must hold ({tmp} and {port} are filled in)
    env: dict[str, str] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)


def refused_url(scheme: str, path: str = "/") -> str:
    return f"{scheme}://user:{PASSWORD}@127.0.0.1:1{path}"


CASES = [
    # --- model configurations (through build: the configurations load before anything is built) ---
    Case("config-missing-file", ["build", "--config", "{tmp}/absent.yaml"], ["absent.yaml does not exist"]),
    Case("config-unknown-name", ["build", "--config", "no-such"],
         ["unknown configuration 'no-such'", "ref-9x6-b10", "YAML file"]),
    Case("config-invalid-yaml", ["build", "--config", "{tmp}/bad.yaml"], ["bad.yaml is not valid YAML", "line 2"]),
    Case("config-directory", ["build", "--config", "{tmp}/dir.yaml"], ["dir.yaml is a directory"]),
    Case("config-not-a-mapping", ["build", "--config", "{tmp}/list.yaml"], ["must hold a mapping"]),
    Case("config-binary", ["build", "--config", "{tmp}/binary.yaml"], ["binary.yaml is not UTF-8 text"]),
    Case("config-invalid-schema", ["build", "--config", "{tmp}/schema.yaml"],
         ["invalid configuration in", "d_in: Field required"]),
    Case("config-negative-number", ["build", "--config", "{tmp}/negative.yaml"], ["batch", "greater than or equal"]),
    Case("unknown-flag", ["build", "--colour"], ["wafl: unrecognized arguments: --colour", "--help"]),
    Case("unknown-command", ["deplyo"], ["invalid choice: 'deplyo'"]),
    Case("not-a-number", ["deploy", "--config", "ref-9x6-b10", "--rpc-url", "x", "--quorum", "two", "--out", "x"],
         ["wafl deploy: argument --quorum: invalid int value: 'two'"]),
    # --- deploy: everything is checked before the node is asked anything ---
    Case("deploy-quorum-zero", ["deploy", "--config", "{tmp}/my.yaml", "--quorum", "0"],
         ["quorum 0 must be between 1 and 8"], env={"WAFL_DEPLOYER_KEY": KEY}, secrets=[KEY]),
    Case("deploy-key-file-directory", ["deploy", "--config", "ref-9x6-b10", "--quorum", "1", "--key-file", "{tmp}"],
         ["cannot read the deployer key file", "Is a directory"]),
    Case("deploy-out-directory", ["deploy", "--config", "ref-9x6-b10", "--quorum", "1", "--out", "{tmp}"],
         ["--out", "is a directory"], env={"WAFL_DEPLOYER_KEY": KEY}, secrets=[KEY]),
    Case("deploy-rpc-refused", ["deploy", "--config", "{tmp}/my.yaml", "--quorum", "1",
                                "--rpc-url", refused_url("http")],
         ["no Ethereum node answers at http://user:***@127.0.0.1:1", "--rpc-url"],
         env={"WAFL_DEPLOYER_KEY": KEY}, secrets=[KEY, PASSWORD]),
    Case("deploy-rpc-not-http", ["deploy", "--config", "ref-9x6-b10", "--quorum", "1", "--rpc-url", "127.0.0.1:8545"],
         ["--rpc-url 127.0.0.1:8545 is not an http(s) URL"], env={"WAFL_DEPLOYER_KEY": KEY}),
    Case("deploy-rpc-not-a-node", ["deploy", "--config", "ref-9x6-b10", "--quorum", "1",
                                   "--rpc-url", "http://127.0.0.1:{port}"],
         ["no Ethereum node answers at http://127.0.0.1:"], env={"WAFL_DEPLOYER_KEY": KEY}),
    # --- attest ---
    Case("attest-artifact-directory", ["attest", "--deployment", "{tmp}"],
         ["cannot read the deployment artifact", "Is a directory"]),
    Case("attest-artifact-other-json", ["attest", "--deployment", "{tmp}/list.json"],
         ["list.json is not a deployment artifact"]),
    # --- simulate: refused before a circuit is built or anvil started ---
    Case("simulate-rpc-refused", ["simulate", "--rounds", "1", "--orgs", "2", "--rpc-url", refused_url("http")],
         ["wafl simulate: no Ethereum node answers at http://user:***@127.0.0.1:1"], secrets=[PASSWORD]),
    Case("simulate-redis-refused", ["simulate", "--orgs", "2", "--redis-url", refused_url("redis", "/0")],
         ["cannot reach Redis at redis://user:***@127.0.0.1:1/0", "--redis-url"], secrets=[PASSWORD]),
    Case("simulate-out-is-a-file", ["simulate", "--out", "{tmp}/my.yaml"], ["--out", "my.yaml is a file"]),
    # --- tail ---
    Case("tail-no-org", ["tail"], ["wafl tail:", "pass --org or set WAFL_ORG"]),
    Case("tail-bad-org", ["tail", "--org", "Org A"], ["'Org A' is not an organisation id"]),
    Case("tail-count-zero", ["tail", "--org", "a", "--count", "0"], ["--count: must be at least 1"]),
    Case("tail-not-amqp", ["tail", "--org", "a", "--amqp-url", "http://127.0.0.1:5672/"], ["is not an AMQP URL"]),
    Case("tail-refused", ["tail", "--org", "a"], ["cannot reach RabbitMQ at amqp://user:***@127.0.0.1:1/",
                                                  "WAFL_AMQP_URL"],
         env={"WAFL_AMQP_URL": refused_url("amqp")}, secrets=[PASSWORD]),
    # --- run: the service's settings ---
    Case("run-unknown-service", ["run", "nosuch"], ["invalid choice: 'nosuch'"]),
    Case("run-settings-invalid-yaml", ["run", "prover", "--settings", "{tmp}/bad.yaml"], ["is not valid YAML"]),
    Case("run-settings-binary", ["run", "prover", "--settings", "{tmp}/binary.yaml"], ["wafl prover:", "UTF-8"]),
    Case("run-deployment-directory", ["run", "metrics"], ["Is a directory"],
         env={"WAFL_ORG": "a", "WAFL_DEPLOYMENT": "{tmp}"}),
    # --- ceremony ---
    Case("ceremony-config-directory", ["ceremony", "init", "--config", "{tmp}/dir.yaml", "--ptau", "{tmp}/p.ptau",
                                       "--out", "{tmp}/step0"], ["wafl ceremony init:", "dir.yaml is a directory"]),
    Case("ceremony-phase1-out-directory", ["ceremony", "phase1", "--power", "4", "--out", "{tmp}"],
         ["wafl ceremony phase1: --out", "is a directory"]),
    Case("ceremony-contribute-missing", ["ceremony", "contribute", "--in", "{tmp}/absent", "--out", "{tmp}/step1",
                                         "--name", "org-a"], ["absent does not exist"]),
    # --- bench ---
    Case("bench-unknown-config", ["bench", "gas", "--config", "ref-9x6-b10", "--config", "no-such"],
         ["unknown configuration 'no-such'"]),
    Case("bench-too-many-participants", ["bench", "gas", "--config", "ref-9x6-b10", "--participants", "9"],
         ["--participants 9 exceeds the 8 organisations"]),
    Case("bench-zero-runs", ["bench", "prove", "--runs", "0"], ["argument --runs: must be at least 1, not 0"]),
    Case("bench-no-dataset", ["bench", "pipeline", "--config", "ref-9x6-b10"], ["names no dataset"]),
    # --- grafana ---
    Case("grafana-no-token", ["grafana", "push", "--url", "http://127.0.0.1:1"], ["set GRAFANA_TOKEN"]),
    Case("grafana-refused", ["grafana", "push", "--url", "http://127.0.0.1:1"],
         ["wafl grafana push: no answer from http://127.0.0.1:1"], env={"GRAFANA_TOKEN": TOKEN}, secrets=[TOKEN]),
]
# Required flags a command's cases share, unless the case gives them (argparse: the last one wins).
DEFAULTS = {
    "deploy": ["--rpc-url", "http://127.0.0.1:1", "--out", "{tmp}/deployment.json"],
    "attest": ["--rpc-url", "http://127.0.0.1:1", "--key-file", "{tmp}/empty"],
}


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    left: list[str]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("bad-input")
    shutil.copy(CONFIG_DIR / "ref-9x6-b10.yaml", tmp / "my.yaml")
    (tmp / "bad.yaml").write_text("d_in: [1,\n")
    (tmp / "dir.yaml").mkdir()
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "binary.yaml").write_bytes(b"\xff\xfe\x00binary")
    (tmp / "schema.yaml").write_text("name: only-a-name\n")
    (tmp / "negative.yaml").write_text((CONFIG_DIR / "ref-9x6-b10.yaml").read_text().replace("batch: 10", "batch: -1"))
    (tmp / "empty").write_text("")
    (tmp / "empty.csv").write_text("")
    (tmp / "list.json").write_text("[1, 2]")
    return tmp


@pytest.fixture(scope="module")
def not_a_node() -> Iterator[int]:
    """A port that accepts connections and answers something that is not HTTP."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.sendall(b"SSH-2.0-not-http\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    done.set()
    thread.join(5)
    server.close()


def command_env(marker: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without WAFL_* and GRAFANA_* (but the toolchain's), plus `extra` and a marker
    that every process the command starts inherits."""
    env = {k: v for k, v in os.environ.items() if k in KEPT or not k.startswith(("WAFL_", "GRAFANA_"))}
    return {**env, **(extra or {}), MARKER: marker}


def fill(text: str, tmp: Path, port: int) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{port}", str(port))


def run_case(case: Case, tmp: Path, port: int) -> Outcome:
    command, *rest = case.argv
    argv = [command, *DEFAULTS.get(command, []), *rest]
    marker = uuid.uuid4().hex
    env = command_env(marker, {k: fill(v, tmp, port) for k, v in case.env.items()})
    proc = subprocess.run([sys.executable, "-m", "tools.cli", *(fill(a, tmp, port) for a in argv)], cwd=tmp,
                          env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    return Outcome(proc.returncode, proc.stdout, proc.stderr, processes_with(marker))


@pytest.fixture(scope="module")
def outcomes(files: Path, not_a_node: int) -> dict[str, Outcome]:
    with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
        futures = {case.name: pool.submit(run_case, case, files, not_a_node) for case in CASES}
        return {name: future.result() for name, future in futures.items()}


def test_case_names_are_unique() -> None:
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_and_exit_2(case: Case, outcomes: dict[str, Outcome], files: Path,
                                          not_a_node: int) -> None:
    outcome = outcomes[case.name]
    line = one_line_exit_2(outcome.returncode, outcome.stdout, outcome.stderr)
    for word in case.expected:
        assert fill(word, files, not_a_node) in line, line
    for secret in case.secrets:
        assert secret.removeprefix("0x").lower() not in (outcome.stdout + outcome.stderr).lower(), secret
    assert outcome.left == [], f"left running: {outcome.left}"


def one_line_exit_2(returncode: int, stdout: str, stderr: str) -> str:
    """The one line a command refused its input with (exit status 2, no traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == 2, stderr[-3000:]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr + stdout
    assert lines[0].startswith("wafl"), lines[0]
    return lines[0]


def test_no_command_writes_its_output_on_bad_input(outcomes: dict[str, Outcome], files: Path) -> None:
    assert not (files / "deployment.json").exists()
    assert not (files / "step0").exists() and not (files / "step1").exists()
    assert not (files / "wafl-simulation").exists()


def test_the_parser_names_its_errors_in_one_line() -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.cli"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "wafl: the following arguments are required: command (see `wafl --help`)"


@pytest.mark.parametrize(("module", "name"), LOADED_BAD_INPUT)
def test_every_exception_the_handler_names_exists(module: str, name: str) -> None:
    """The handler finds these by name in loaded modules: a renamed class would be missed silently."""
    kind = getattr(pytest.importorskip(module), name)
    assert isinstance(kind, type) and issubclass(kind, Exception)
