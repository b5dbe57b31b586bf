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
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.core.config import ModelConfig
from wafl.zk.build import CircuitBuild, development_keys


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_deploy_writes_one_artifact_the_services_can_use(
    anvil: Anvil, w3: Web3, ref_config: ModelConfig, ref_build: CircuitBuild, tmp_path: Path
) -> None:
    deployer = Account.create()
    fund(w3, deployer.address)
    key_file = tmp_path / "deployer.key"
    key_file.write_text(deployer.key.hex())
    members = [new_account(w3) for _ in range(2)]
    out = tmp_path / "deployment.json"
    record = {"mean": [0.5 * i for i in range(ref_config.d_in)], "std": [1.0 + i for i in range(ref_config.d_in)]}
    (tmp_path / "std.json").write_text(json.dumps(record))
    (tmp_path / "narrow.json").write_text(json.dumps({"mean": [0.0], "std": [1.0]}))
    narrow = run_cli("deploy", "--config", ref_config.name, "--rpc-url", anvil.url, "--key-file", str(key_file),
                     "--quorum", "2", "--out", str(out), "--standardisation", str(tmp_path / "narrow.json"))
    assert narrow.returncode == 2 and not out.exists()
    assert narrow.stderr.strip().endswith(f"the standardisation's 'mean' must be {ref_config.d_in} finite numbers")
    proc = run_cli(
        "deploy", "--config", ref_config.name, "--rpc-url", anvil.url, "--key-file", str(key_file),
        "--participants", ",".join(m.address for m in members), "--quorum", "2", "--out", str(out),
        "--standardisation", str(tmp_path / "std.json"),
    )
    assert proc.returncode == 0, proc.stderr
    assert deployer.key.hex() not in proc.stdout + proc.stderr
    assert "DEVELOPMENT keys" in proc.stderr
    deployment = Deployment.load(out)
    raw = json.loads(out.read_text())
    assert {"abi", "address", "start_block", "chain_id", "config", "vk_hash", "keys_kind"} <= raw.keys()
    assert deployment.chain_id == 31337
    assert deployment.model_config == ref_config
    assert deployment.standardisation == record  # for `wafl model evaluate` on raw data
    assert (deployment.keys_kind, deployment.vk_hash) == ("development", development_keys(ref_build).vk_hash)
    aggregator = AggregatorClient(w3, deployment)
    assert all(aggregator.contract.functions.hasRole(
        aggregator.contract.functions.PARTICIPANT_ROLE().call(), m.address).call() for m in members)
    # Round 1 opens with the last participant's attestation. The key file as for the submitter: the
    # flag, or the file $WAFL_KEY_FILE names.
    for index, member in enumerate(members):
        assert aggregator.current_round().round == 0
        member_key = tmp_path / f"member{index}.key"
        member_key.write_text(member.key.hex())
        by_flag = index == 0
        proc = run_cli("attest", "--deployment", str(out), "--rpc-url", anvil.url,
                       *(["--key-file", str(member_key)] if by_flag else []),
                       env={} if by_flag else {"WAFL_KEY_FILE": str(member_key)})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["already_attested"] is False
        assert member.key.hex() not in proc.stdout + proc.stderr
    again = run_cli("attest", "--deployment", str(out), "--rpc-url", anvil.url, "--key-file", str(member_key))
    assert json.loads(again.stdout)["already_attested"] is True
    assert aggregator.current_round().round == 1
    logs = aggregator.contract.events.RoundOpened().get_logs(from_block=deployment.start_block)
    assert [log["args"]["round"] for log in logs] == [1]


def test_attest_refuses_an_outsider_in_one_line(anvil: Anvil, w3: Web3, ref_config: ModelConfig,
                                                tmp_path: Path) -> None:
    deployment = deploy(w3, new_account(w3), ref_config, quorum=1, round_duration=60,
                        participants=[new_account(w3).address])
    out = tmp_path / "deployment.json"
    deployment.save(out)
    outsider = new_account(w3)
    key = tmp_path / "outsider.key"
    key.write_text(outsider.key.hex())
    proc = run_cli("attest", "--deployment", str(out), "--rpc-url", anvil.url, "--key-file", str(key))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"wafl: {outsider.address} is not a registered participant of {deployment.address}"


def test_development_keys_only_on_a_local_chain_unless_allowed(tmp_path: Path) -> None:
    with Anvil(chain_id=17000) as node:
        deployer = Account.create()
        fund(node.web3(), deployer.address)
        common = ["deploy", "--config", "ref-9x6-b10", "--rpc-url", node.url, "--quorum", "1",
                  "--out", str(tmp_path / "d.json")]
        env = {"WAFL_DEPLOYER_KEY": deployer.key.hex()}
        refused = run_cli(*common, env=env)
        assert refused.returncode == 2
        assert refused.stderr.strip().startswith("wafl: refusing development keys on chain 17000")
        assert len(refused.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "d.json").exists()
        allowed = run_cli(*common, "--allow-development-keys", env=env)
        assert allowed.returncode == 0, allowed.stderr
        assert Deployment.load(tmp_path / "d.json").keys_kind == "development"


def refused(proc: subprocess.CompletedProcess[str]) -> str:
    """The one line of a refusal: exit status 2, no traceback."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    return line


def test_deploy_refuses_missing_or_bad_keys_without_echoing_them(anvil: Anvil, tmp_path: Path) -> None:
    common = ["deploy", "--config", "ref-9x6-b10", "--rpc-url", anvil.url, "--quorum", "1",
              "--out", str(tmp_path / "d.json")]
    env = {k: v for k, v in os.environ.items() if k != "WAFL_DEPLOYER_KEY"}
    proc = subprocess.run([sys.executable, "-m", "tools.cli", *common], capture_output=True, text=True, env=env)
    assert "WAFL_DEPLOYER_KEY" in refused(proc)
    proc = run_cli(*common, "--key-file", str(tmp_path / "absent.key"))
    assert "cannot read the deployer key file" in refused(proc)
    secret = "0x" + "ab" * 31  # wrong length: not a key
    proc = run_cli(*common, env={"WAFL_DEPLOYER_KEY": secret})
    assert "not a valid private key" in refused(proc)
    assert secret[2:] not in proc.stdout + proc.stderr
    assert not (tmp_path / "d.json").exists()


def test_unknown_configuration_is_a_clear_error(anvil: Anvil) -> None:
    proc = run_cli("deploy", "--config", "no-such", "--rpc-url", anvil.url, "--quorum", "1", "--out", "x.json",
                   env={"WAFL_DEPLOYER_KEY": "0x" + "11" * 32})
    line = refused(proc)
    assert "unknown configuration 'no-such'" in line and "ref-9x6-b10" in line
