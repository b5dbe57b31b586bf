"""`wafl deploy`: the production deploy path, with the key from a file or the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from eth_account import Account
from web3 import Web3

from tests.conftest import new_account
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil, fund
from wafl.chain.deploy import Deployment
from wafl.config import ModelConfig


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wafl.cli", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_deploy_writes_one_artifact_the_services_can_use(
    anvil: Anvil, w3: Web3, ref_config: ModelConfig, tmp_path: Path
) -> None:
    deployer = Account.create()
    fund(w3, deployer.address)
    key_file = tmp_path / "deployer.key"
    key_file.write_text(deployer.key.hex())
    members = [new_account(w3).address for _ in range(2)]
    out = tmp_path / "deployment.json"
    proc = run_cli(
        "deploy", "--config", ref_config.name, "--rpc-url", anvil.url, "--key-file", str(key_file),
        "--participants", ",".join(members), "--quorum", "2", "--out", str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert deployer.key.hex() not in proc.stdout + proc.stderr
    deployment = Deployment.load(out)
    raw = json.loads(out.read_text())
    assert {"abi", "address", "start_block", "chain_id", "config"} <= raw.keys()
    assert deployment.chain_id == 31337
    assert deployment.model_config == ref_config
    aggregator = AggregatorClient(w3, deployment)
    assert aggregator.current_round().round == 1
    assert all(aggregator.contract.functions.hasRole(
        aggregator.contract.functions.PARTICIPANT_ROLE().call(), m).call() for m in members)
    logs = aggregator.contract.events.RoundOpened().get_logs(from_block=deployment.start_block)
    assert [log["args"]["round"] for log in logs] == [1]


def test_deploy_refuses_missing_or_bad_keys_without_echoing_them(anvil: Anvil, tmp_path: Path) -> None:
    common = ["deploy", "--config", "ref-9x6-b10", "--rpc-url", anvil.url, "--quorum", "1",
              "--out", str(tmp_path / "d.json")]
    env = {k: v for k, v in os.environ.items() if k != "WAFL_DEPLOYER_KEY"}
    proc = subprocess.run([sys.executable, "-m", "wafl.cli", *common], capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "WAFL_DEPLOYER_KEY" in proc.stderr
    proc = run_cli(*common, "--key-file", str(tmp_path / "absent.key"))
    assert proc.returncode != 0 and "cannot read the deployer key file" in proc.stderr
    secret = "0x" + "ab" * 31  # wrong length: not a key
    proc = run_cli(*common, env={"WAFL_DEPLOYER_KEY": secret})
    assert proc.returncode != 0 and "not a valid private key" in proc.stderr
    assert secret not in proc.stdout + proc.stderr
    assert not (tmp_path / "d.json").exists()


def test_unknown_configuration_is_a_clear_error(anvil: Anvil) -> None:
    proc = run_cli("deploy", "--config", "no-such", "--rpc-url", anvil.url, "--quorum", "1", "--out", "x.json",
                   env={"WAFL_DEPLOYER_KEY": "0x" + "11" * 32})
    assert proc.returncode == 2
    assert "unknown configuration 'no-such'" in proc.stderr and "ref-9x6-b10" in proc.stderr
