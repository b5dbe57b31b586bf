"""One-shot deploy job of the docker-compose stack: wait for the chain, make the federation's
development keys and share them with the provers, fund the participants on a local anvil chain,
deploy the contracts with `wafl deploy --keys` and write the deployment artifact.

Development keys come from a one-party setup with this container's OS entropy: they differ on
every machine, so no prover can make "the same" keys itself. This job makes them once and copies
the key set into the `keys` volume (WAFL_KEYS_DIR, /keys), which every prover mounts read-only
(WAFL_KEYS=/keys); the verifier is deployed with exactly that key set. Each organisation's attest
job then attests it (`wafl attest`), and the last attestation opens round 1.

Idempotent: when the artifact already names a contract that exists on this chain, for this
configuration, and verifies with the key set in the volume, it does nothing, so `docker compose
up` again does not redeploy (a restarted anvil loses its state, and then the job deploys again,
with the same keys). A key set in the volume is reused as long as it was made for the
configuration's circuit; a new WAFL_CONFIG gets new keys and a new deployment.

Environment (docker-compose.yml sets it from .env):
  WAFL_RPC_URL          the chain's JSON-RPC URL
  WAFL_CONFIG           model configuration (must match the prover image's WAFL_CONFIGS)
  WAFL_PARTICIPANTS     comma-separated participant addresses to register
  WAFL_QUORUM           updates needed to finalise a round (default: number of participants)
  WAFL_ROUND_DURATION   seconds (default 600)
  WAFL_DEPLOYER_KEY_FILE  file holding the deployer's private key (a compose secret)
  WAFL_DEPLOYMENT       where to write the artifact (a volume the services mount read-only)
  WAFL_KEYS_DIR         the key set the provers mount (a volume; default /keys)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from eth_account import Account
from web3 import HTTPProvider, Web3

from wafl.core.config import load_config
from wafl.zk.build import build_circuit, development_keys
from wafl.zk.keys import KeySet, KeySetError, load_keys

# The key set's description is written last: a copy cut short is never a loadable key set.
KEYS_META = "keys.json"


def log(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "service": "deploy", **fields}), flush=True)


def wait_for_chain(url: str, timeout: float = 120.0) -> Web3:
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 10}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            if w3.eth.chain_id:
                return w3
        except Exception as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"no Ethereum node answers at {url}: {type(exc).__name__}") from None
            time.sleep(1)


def already_deployed(w3: Web3, artifact: Path, config: str, vk_hash: str | None) -> bool:
    """The artifact names a contract on this chain, for this configuration, whose verifier holds
    the shared key set."""
    if not artifact.exists() or vk_hash is None:
        return False
    try:
        raw = json.loads(artifact.read_text())
        address = Web3.to_checksum_address(raw["address"])
        same_chain = int(raw["chain_id"]) == w3.eth.chain_id
        same_config = raw["config"]["name"] == config
        same_keys = raw["vk_hash"] == vk_hash
    except (ValueError, KeyError, TypeError):
        return False
    return same_chain and same_config and same_keys and bool(w3.eth.get_code(address))


def read_key(path: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"cannot read the deployer key file {path}: {exc.strerror}") from None
    if not value:
        raise SystemExit(f"the deployer key file {path} is empty: set WAFL_DEPLOYER_KEY in .env")
    return value


def is_anvil(w3: Web3) -> bool:
    try:
        return "anvil" in str(w3.client_version).lower()
    except Exception:
        return False


# ---- the shared key set -------------------------------------------------------------------------


def shared_keys(directory: Path, circuit_sha256: str | None = None) -> KeySet | None:
    """The key set in the shared volume, if there is a valid one (for this circuit, when given)."""
    try:
        keys = load_keys(directory)
    except KeySetError:
        return None
    if circuit_sha256 is not None and keys.circuit_sha256 != circuit_sha256:
        return None
    return keys


def install_key_set(source: Path, target: Path) -> None:
    """Copy the key set in ``source`` into the volume mounted at ``target`` (which stays: it is a
    mount point). Whatever was there is removed first and the description copied last, so a copy
    cut short leaves no loadable key set and the next run copies again."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in target.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    files = sorted(p for p in source.iterdir() if p.is_file() and p.name != KEYS_META)
    for path in [*files, source / KEYS_META]:
        shutil.copyfile(path, target / path.name)
        (target / path.name).chmod(0o644)  # the provers mount the volume read-only


def ensure_keys(config: str, directory: Path) -> KeySet:
    """The development key set of ``config``'s circuit in ``directory``: the one already there, or
    this container's (made once, with OS entropy, by wafl.zk.build.development_keys) copied in."""
    build = build_circuit(load_config(config))
    keys = shared_keys(directory, build.circuit_sha256)
    if keys is not None:
        log("keys_reused", keys=str(directory), kind=str(keys.kind), vk_hash=keys.vk_hash)
        return keys
    made = development_keys(build)
    install_key_set(made.directory, directory)
    keys = shared_keys(directory, build.circuit_sha256)
    if keys is None:
        raise SystemExit(f"the key set copied to {directory} does not load")
    log("keys_made", keys=str(directory), kind=str(keys.kind), vk_hash=keys.vk_hash, config=config)
    return keys


def deploy_command(config: str, rpc_url: str, key_file: str, participants: list[str], quorum: int,
                   round_duration: int, keys_dir: Path, artifact: Path) -> list[str]:
    """`wafl deploy` with the shared key set. Development keys are accepted on anvil's chain id
    (31337) as they are: no --allow-development-keys."""
    return [
        "wafl", "deploy", "--config", config, "--rpc-url", rpc_url, "--key-file", key_file,
        "--participants", ",".join(participants), "--quorum", str(quorum),
        "--round-duration", str(round_duration), "--keys", str(keys_dir), "--out", str(artifact),
    ]


def main() -> int:
    rpc_url = os.environ.get("WAFL_RPC_URL", "http://anvil:8545")
    config = os.environ.get("WAFL_CONFIG", "wine-13x3-b16")
    participants = [p.strip() for p in os.environ.get("WAFL_PARTICIPANTS", "").split(",") if p.strip()]
    if not participants:
        raise SystemExit("WAFL_PARTICIPANTS is empty: set WAFL_ORG_A_ADDRESS and WAFL_ORG_B_ADDRESS in .env")
    for address in participants:
        if not Web3.is_address(address):
            raise SystemExit(f"not an address in WAFL_PARTICIPANTS: {address!r}")
    quorum = int(os.environ.get("WAFL_QUORUM") or len(participants))
    round_duration = int(os.environ.get("WAFL_ROUND_DURATION") or 600)
    key_file = os.environ.get("WAFL_DEPLOYER_KEY_FILE", "/run/secrets/deployer_key")
    artifact = Path(os.environ.get("WAFL_DEPLOYMENT", "/deployments/deployment.json"))
    keys_dir = Path(os.environ.get("WAFL_KEYS_DIR", "/keys"))

    w3 = wait_for_chain(rpc_url)
    current = shared_keys(keys_dir)
    if already_deployed(w3, artifact, config, current.vk_hash if current is not None else None):
        log("already_deployed", artifact=str(artifact), keys=str(keys_dir))
        return 0
    keys = ensure_keys(config, keys_dir)
    if is_anvil(w3):
        # anvil's cheat code: gas money for the deployer and the participants (no key involved).
        # On a real chain they fund their own addresses.
        try:
            deployer = Account.from_key(read_key(key_file)).address
        except (ValueError, TypeError):  # the library's message is not shown: it may quote the key
            raise SystemExit("WAFL_DEPLOYER_KEY is not a valid private key") from None
        for address in [deployer, *participants]:
            if w3.eth.get_balance(Web3.to_checksum_address(address)) == 0:
                w3.provider.make_request("anvil_setBalance", [address, hex(10**21)])  # type: ignore[arg-type]
                log("funded", address=address)
    command = deploy_command(config, rpc_url, key_file, participants, quorum, round_duration, keys_dir, artifact)
    proc = subprocess.run(command, check=False)
    if proc.returncode != 0:
        return proc.returncode
    artifact.chmod(0o644)
    log("deployed", artifact=str(artifact), config=config, participants=participants, quorum=quorum,
        vk_hash=keys.vk_hash, keys_kind=str(keys.kind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
