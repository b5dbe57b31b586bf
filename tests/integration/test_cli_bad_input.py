"""The `wafl` command line against a real chain, broker and build: a model configuration given by
path works end to end (build, deploy, a service, simulate), and bad input that only a server or a
running command can reveal is one line, exit status 2, with nothing left running.

Cases that need no server: tests/unit/test_cli_bad_input.py (its helpers are shared here).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from eth_account import Account
from web3 import Web3

from tests.conftest import new_account
from tests.support.brokers import AMQP_URL, REDIS_URL
from tests.unit.test_cli_bad_input import command_env, one_line_exit_2, processes_with
from wafl.chain.anvil import Anvil
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.core.config import CONFIG_DIR, load_config

# A configuration that is no bundled name, in a file of its own: the smallest circuit (iris's).
BY_PATH_NAME = "by-path-iris-4x3-b3"
WRONG_PASSWORD = "not-the-Password-4711"


def wafl(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run `wafl argv`; its result and the processes it left running."""
    marker = uuid.uuid4().hex
    proc = subprocess.run([sys.executable, "-m", "tools.cli", *argv], capture_output=True, text=True, timeout=timeout,
                          env=command_env(marker, env), cwd=cwd, stdin=subprocess.DEVNULL)
    return proc, processes_with(marker)


def by_path_config(directory: Path) -> Path:
    path = directory / "my-model.yaml"
    text = (CONFIG_DIR / "iris-4x3-b3.yaml").read_text()
    path.write_text(text.replace("name: iris-4x3-b3", f"name: {BY_PATH_NAME}"))
    assert BY_PATH_NAME in path.read_text()
    return path


def test_a_configuration_given_by_path_works_end_to_end(anvil: Anvil, w3: Web3, org: str, tmp_path: Path) -> None:
    config = by_path_config(tmp_path)
    built, _ = wafl("build", "--config", str(config))
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["config"] == str(config)

    deployer, member = new_account(w3), new_account(w3)
    key = tmp_path / "deployer.key"
    key.write_text(deployer.key.hex())
    out = tmp_path / "deployment.json"
    deployed, _ = wafl("deploy", "--config", str(config), "--rpc-url", anvil.url, "--key-file", str(key),
                       "--participants", member.address, "--quorum", "1", "--out", str(out))
    assert deployed.returncode == 0, deployed.stderr
    assert Deployment.load(out).model_config.name == BY_PATH_NAME

    # A service runs from the artifact alone: the prover builds the circuit of the configuration it holds.
    marker = uuid.uuid4().hex
    env = command_env(marker, {"WAFL_ORG": org, "WAFL_DEPLOYMENT": str(out), "WAFL_RPC_URL": anvil.url,
                               "WAFL_AMQP_URL": AMQP_URL, "WAFL_REDIS_URL": REDIS_URL, "WAFL_METRICS_PORT": "0"})
    log = tmp_path / "prover.log"
    with log.open("wb") as handle:
        service = subprocess.Popen([sys.executable, "-m", "tools.cli", "run", "prover"], env=env, stdout=handle,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while '"service_started"' not in log.read_text() and service.poll() is None:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        service.send_signal(signal.SIGTERM)
        code = service.wait(timeout=60)
    assert code == 0 and '"service_started"' in log.read_text(), log.read_text()[-3000:]
    assert processes_with(marker) == []

    simulated, left = wafl("simulate", "--config", str(config), "--rounds", "1", "--orgs", "2", "--out", "sim",
                           cwd=tmp_path, timeout=600)
    assert simulated.returncode == 0, simulated.stdout[-3000:] + simulated.stderr[-3000:]
    result = json.loads((tmp_path / "sim" / "results.json").read_text())
    assert result["config"] == BY_PATH_NAME and [r["accepted"] for r in result["rounds"]] == [2]
    assert left == []


def test_an_unfunded_deployer_is_refused_before_anything_is_sent(anvil: Anvil, w3: Web3, tmp_path: Path) -> None:
    poor = Account.create()
    before = w3.eth.block_number
    proc, _ = wafl("deploy", "--config", "ref-9x6-b10", "--rpc-url", anvil.url, "--quorum", "1",
                   "--out", str(tmp_path / "d.json"), env={"WAFL_DEPLOYER_KEY": poor.key.hex()})
    line = one_line_exit_2(proc.returncode, proc.stdout, proc.stderr)
    assert f"the deployer {poor.address} has no ether on chain 31337: fund it first" in line
    assert poor.key.hex().removeprefix("0x") not in proc.stdout + proc.stderr
    assert w3.eth.block_number == before and not (tmp_path / "d.json").exists()


def test_a_service_whose_chain_is_unreachable_says_so(w3: Web3, tmp_path: Path) -> None:
    deployment = tmp_path / "deployment.json"
    deploy(w3, new_account(w3), load_config("ref-9x6-b10"), quorum=1, round_duration=60).save(deployment)
    proc, left = wafl("run", "chain_watcher", env={"WAFL_ORG": "unreachable", "WAFL_DEPLOYMENT": str(deployment),
                                                   "WAFL_RPC_URL": f"http://u:{WRONG_PASSWORD}@127.0.0.1:1"})
    line = one_line_exit_2(proc.returncode, proc.stdout, proc.stderr)
    assert line.startswith("wafl chain_watcher: no Ethereum node answers at http://u:***@127.0.0.1:1"), line
    assert WRONG_PASSWORD not in proc.stdout + proc.stderr and left == []


def test_a_metrics_port_in_use_is_one_line(w3: Web3, tmp_path: Path, org: str) -> None:
    deployment = tmp_path / "deployment.json"
    deploy(w3, new_account(w3), load_config("iris-4x3-b3"), quorum=1, round_duration=60).save(deployment)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc, left = wafl("run", "metrics", env={"WAFL_ORG": org, "WAFL_DEPLOYMENT": str(deployment),
                                                 "WAFL_AMQP_URL": AMQP_URL, "WAFL_REDIS_URL": REDIS_URL,
                                                 "WAFL_METRICS_PORT": str(port)})
    line = one_line_exit_2(proc.returncode, proc.stdout, proc.stderr)
    assert f"cannot serve /metrics on port {port} (WAFL_METRICS_PORT)" in line, line
    assert left == []


def test_a_broker_that_refuses_the_password(tmp_path: Path) -> None:
    url = AMQP_URL.replace("guest:guest@", f"guest:{WRONG_PASSWORD}@")
    assert WRONG_PASSWORD in url
    tail, _ = wafl("tail", "--org", "refused", "--amqp-url", url)
    assert "cannot reach RabbitMQ at amqp://guest:***@" in one_line_exit_2(tail.returncode, tail.stdout, tail.stderr)
    # Refused before a circuit is built or anvil started.
    simulate, left = wafl("simulate", "--rounds", "1", "--orgs", "2", "--amqp-url", url, cwd=tmp_path)
    line = one_line_exit_2(simulate.returncode, simulate.stdout, simulate.stderr)
    assert "ProbableAuthenticationError" in line and "--amqp-url" in line, line
    assert WRONG_PASSWORD not in tail.stderr + simulate.stdout + simulate.stderr
    assert left == [] and not (tmp_path / "wafl-simulation").exists()


def test_a_bad_data_file_stops_simulate_before_anything_starts(tmp_path: Path) -> None:
    """The data files are read after the simulation's imports: still one line, nothing started.
    (Each kind of bad file and its message: tests/integration/test_simulate.py.)"""
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    proc, left = wafl("simulate", "--data", str(empty), str(empty), cwd=tmp_path)
    assert "empty.csv: empty file" in one_line_exit_2(proc.returncode, proc.stdout, proc.stderr)
    assert left == [] and not (tmp_path / "wafl-simulation").exists()


def test_sigterm_stops_what_a_command_started() -> None:
    """A supervisor's SIGTERM unwinds the command like Ctrl-C: its anvil and prover stop with it."""
    marker = uuid.uuid4().hex
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "bench", "gas", "--config", "iris-4x3-b3",
                             "--participants", "2", "--rounds", "1"], env=command_env(marker),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        # Mid-run: the bench has deployed on its anvil, which it does once anvil and the prover are up.
        deadline = time.monotonic() + 180
        while not _deployed_on_its_anvil(marker):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.2)
        assert any("worker.mjs" in p for p in processes_with(marker))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert err.strip() == "wafl: interrupted", err[-3000:]
    time.sleep(0.5)
    assert processes_with(marker) == [], "left running"


def _deployed_on_its_anvil(marker: str) -> bool:
    for command in processes_with(marker):
        if "anvil" in command and "--port" in command:
            port = command.split("--port")[1].split()[0]
            node = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 2}))
            try:
                return node.eth.block_number > 0
            except Exception:  # not answering yet
                return False
    return False
