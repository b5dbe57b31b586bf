"""Onboarding an organisation on a real anvil, RabbitMQ and Redis: `wafl org init` makes its keystore
(and its masking secret, shown nowhere), the admin registers its address with `wafl participants
add`, it attests, and the submitter started on that keystore (`wafl run submitter`, WAFL_KEYSTORE
and WAFL_KEYSTORE_PASSWORD_FILE) gets an update accepted on chain; with a wrong password it stops
at start, exit 2, one line, no secret. The admin's command refuses a key that is not the admin's,
a malformed address and an absent node the same way."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aio_pika
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from tests.conftest import new_account
from tests.support.brokers import AMQP_URL, REDIS_URL, amqp
from tests.support.submitting import accepted_logs, proof_message
from tools.localnet import ServiceProcess
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil, fund
from wafl.chain.artifact import Deployment
from wafl.chain.attest import attest
from wafl.chain.deploy import deploy
from wafl.core.config import ModelConfig
from wafl.zk.masking import read_secret
from wafl.zk.prover import Prover

PASSWORD = "acme-Sekret-4711"
ROUND_SECONDS = 600


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WAFL_")}
    return subprocess.run([sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**clean, **(env or {})})


def one_line(proc: subprocess.CompletedProcess[str], expected: str, secrets: list[str]) -> None:
    """Exit 2, nothing on stdout, one line on stderr holding `expected`, no secret anywhere."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert expected in proc.stderr, proc.stderr
    output = (proc.stdout + proc.stderr).lower()
    assert not any(secret.lower() in output for secret in secrets), "a secret in the output"


def make_org(name: str, anvil: Anvil, tmp_path: Path) -> tuple[Path, Path, LocalAccount]:
    """`wafl org init NAME --password-file ...`: the organisation's directory, password file and account."""
    password = tmp_path / "password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    proc = run_cli("org", "init", name, "--out", str(tmp_path / "orgs"), "--password-file", str(password),
                   "--rpc-url", anvil.url)
    assert proc.returncode == 0, proc.stderr
    directory = tmp_path / "orgs" / name
    keystore = directory / "keystore.json"
    # The standard keystore: eth-account opens it with the password, only its owner can read it.
    assert keystore.stat().st_mode & 0o777 == 0o600
    account: LocalAccount = Account.from_key(Account.decrypt(json.loads(keystore.read_text()), PASSWORD))
    assert proc.stdout.splitlines()[0] == account.address == (directory / "address.txt").read_text().strip()
    assert f"wafl participants add --deployment DEPLOYMENT --rpc-url URL --key-file ADMIN_KEY {account.address}" \
        in proc.stdout
    output = proc.stdout + proc.stderr
    assert PASSWORD not in output and account.key.hex()[2:] not in output.lower()
    # The masking secret of secure aggregation: valid, its owner's only, and not shown.
    masking = directory / "masking.key"
    assert masking.stat().st_mode & 0o777 == 0o600
    assert str(read_secret(masking)) not in output
    return directory, password, account


def submitter_env(org: str, anvil: Anvil, artifact: Path, keystore: Path, password: Path) -> dict[str, str]:
    # Confirmations 0: this anvil mines a block only for a transaction.
    return {"WAFL_ORG": org, "WAFL_RPC_URL": anvil.url, "WAFL_DEPLOYMENT": str(artifact), "WAFL_AMQP_URL": AMQP_URL,
            "WAFL_REDIS_URL": REDIS_URL, "WAFL_METRICS_PORT": "0", "WAFL_CONFIRMATIONS": "0",
            "WAFL_KEYSTORE": str(keystore), "WAFL_KEYSTORE_PASSWORD_FILE": str(password)}


async def publish_proof(org: str, body: bytes) -> None:
    async with amqp() as channel:
        exchange = await channel.get_exchange(f"wafl.{org}.events")
        await exchange.publish(aio_pika.Message(body, content_type="application/json"), routing_key="proof.generated")


def test_an_organisation_from_org_init_gets_its_update_accepted(
    org: str, anvil: Anvil, w3: Web3, ref_config: ModelConfig, ref_worker: Prover, tmp_path: Path,
) -> None:
    directory, password, member = make_org(org, anvil, tmp_path)
    secrets = [PASSWORD, member.key.hex()[2:], str(read_secret(directory / "masking.key"))]
    # The admin deploys (no participants yet) and registers the address org init printed.
    admin = new_account(w3)
    deployment = deploy(w3, admin, ref_config, quorum=1, round_duration=ROUND_SECONDS, participants=[])
    artifact = directory / "deployment.json"
    deployment.save(artifact)
    admin_key = tmp_path / "admin.key"
    admin_key.write_text(admin.key.hex())
    add = ("participants", "add", "--deployment", str(artifact), "--rpc-url", anvil.url, "--key-file", str(admin_key))
    proc = run_cli(*add, member.address.lower())
    assert proc.returncode == 0, proc.stderr
    done = json.loads(proc.stdout)
    assert done["registered"] == [member.address] and done["already_registered"] == [] and done["tx"]
    assert w3.eth.get_transaction_receipt(done["tx"])["status"] == 1
    again = json.loads(run_cli(*add, member.address).stdout)
    assert again == {**done, "registered": [], "already_registered": [member.address], "tx": None}
    # Its attestation opens round 1 (`wafl attest` takes a key file; here the keystore's key, in-process).
    fund(w3, member.address)
    aggregator = AggregatorClient(w3, deployment)
    assert attest(w3, deployment, member, None, None)
    assert aggregator.current_round().round == 1

    # The submitter, on the keystore: a proof published on the org's exchange becomes an accepted update.
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("WAFL_")},
           **submitter_env(org, anvil, artifact, directory / "keystore.json", password), "WAFL_LOG_LEVEL": "debug"}
    message = proof_message(org, ref_config, ref_worker, aggregator, member, 1, seed=7)
    log_path = tmp_path / "submitter.log"
    with log_path.open("wb") as log:
        service = ServiceProcess(org, "submitter", 0, subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "run", "submitter"], env=env, stdout=log, stderr=subprocess.STDOUT,
        ), log_path)
        try:
            assert service.metrics_port > 0  # its start-up line: the keystore opened, the address registered
            asyncio.run(publish_proof(org, message.model_dump_json().encode()))
            deadline = time.monotonic() + 120
            while not accepted_logs(aggregator, 1, member):
                assert service.proc.poll() is None and time.monotonic() < deadline, service.log()[-3000:]
                time.sleep(0.2)
        finally:
            service.proc.terminate()
            code = service.proc.wait(timeout=60)
    output = service.log()
    assert code == 0, output
    (started,) = [json.loads(line) for line in output.splitlines() if '"service_started"' in line]
    assert started["address"] == member.address and started["org"] == org
    (accepted,) = accepted_logs(aggregator, 1, member)
    assert w3.eth.get_transaction(accepted)["from"] == member.address  # signed with the keystore's key
    assert not any(secret.lower() in output.lower() for secret in secrets), "a secret in the submitter's log"


def test_a_wrong_password_stops_the_submitter_at_start(
    org: str, anvil: Anvil, w3: Web3, ref_config: ModelConfig, tmp_path: Path,
) -> None:
    directory, password, member = make_org(org, anvil, tmp_path)
    deployment = deploy(w3, new_account(w3), ref_config, quorum=1, round_duration=ROUND_SECONDS,
                        participants=[member.address])
    artifact = tmp_path / "deployment.json"
    deployment.save(artifact)
    wrong = tmp_path / "wrong-password"
    wrong.write_text("wrong-Sekret-0815\n")
    wrong.chmod(0o600)
    keystore = directory / "keystore.json"
    started = time.monotonic()
    proc = run_cli("run", "submitter", env=submitter_env(org, anvil, artifact, keystore, wrong))
    one_line(proc, f"wafl submitter: keystore {keystore} (WAFL_KEYSTORE) does not open with the password in "
             f"password file {wrong} (WAFL_KEYSTORE_PASSWORD_FILE): wrong password, or a damaged keystore",
             [PASSWORD, "wrong-Sekret-0815", member.key.hex()[2:]])
    assert time.monotonic() - started < 60
    # The right password file with the key's other sources set too: refused, whichever is right.
    key_file = tmp_path / "org.key"
    key_file.write_text(member.key.hex())
    key_file.chmod(0o600)
    proc = run_cli("run", "submitter", env={**submitter_env(org, anvil, artifact, keystore, password),
                                            "WAFL_KEY_FILE": str(key_file)})
    one_line(proc, "WAFL_KEY_FILE and WAFL_KEYSTORE are set: keep only one source of the signing key",
             [PASSWORD, member.key.hex()[2:]])


def test_participants_add_refuses_in_one_line(anvil: Anvil, w3: Web3, ref_config: ModelConfig,
                                             tmp_path: Path) -> None:
    admin = new_account(w3)
    deployment: Deployment = deploy(w3, admin, ref_config, quorum=1, round_duration=ROUND_SECONDS, participants=[])
    artifact = tmp_path / "deployment.json"
    deployment.save(artifact)
    stranger = new_account(w3)
    stranger_key = tmp_path / "stranger.key"
    stranger_key.write_text(stranger.key.hex())
    newcomer = Account.create().address
    secrets = [stranger.key.hex()[2:]]
    add = ("participants", "add", "--deployment", str(artifact))
    cases = [
        (run_cli(*add, "--rpc-url", anvil.url, "--key-file", str(stranger_key), newcomer),
         f"wafl: the aggregator at {deployment.address} refused to register them (AccessControlUnauthorizedAccount): "
         f"{stranger.address} is not its admin: use the key that deployed it"),
        (run_cli(*add, "--rpc-url", anvil.url, "--key-file", str(stranger_key), newcomer, "0x1234"),
         "wafl: '0x1234' is not an Ethereum address (0x and 40 hexadecimal digits)"),
        # EIP-55's example address with one letter's case changed.
        (run_cli(*add, "--rpc-url", anvil.url, "--key-file", str(stranger_key),
                 "0x52908400098527886e0F7030069857D2E4169EE7"),
         "wafl: 0x52908400098527886e0F7030069857D2E4169EE7 fails its checksum (mixed case)"),
        (run_cli(*add, "--rpc-url", "http://127.0.0.1:1", "--key-file", str(stranger_key), newcomer),
         "wafl: no Ethereum node answers at http://127.0.0.1:1"),
        (run_cli(*add, "--rpc-url", anvil.url, newcomer),
         "wafl: no admin key: pass --key-file or set WAFL_DEPLOYER_KEY"),
    ]
    for proc, expected in cases:
        one_line(proc, expected, secrets)
    functions = AggregatorClient(w3, deployment).contract.functions
    assert not functions.hasRole(functions.PARTICIPANT_ROLE().call(), newcomer).call()
