"""One-shot deploy job of the docker-compose stack: wait for the chain, fund the participants on a
local anvil chain, deploy the contracts with `wafl deploy` and write the deployment artifact.

Idempotent: when the artifact already names a contract that exists on this chain, it does nothing,
so `docker compose up` again does not redeploy (a restarted anvil loses its state, and then the job
deploys again).

Environment (docker-compose.yml sets it from .env):
  WAFL_RPC_URL          the chain's JSON-RPC URL
  WAFL_CONFIG           model configuration (must match the prover image's WAFL_CONFIGS)
  WAFL_PARTICIPANTS     comma-separated participant addresses to register
  WAFL_QUORUM           updates needed to finalise a round (default: number of participants)
  WAFL_ROUND_DURATION   seconds (default 600)
  WAFL_DEPLOYER_KEY_FILE  file holding the deployer's private key (a compose secret)
  WAFL_DEPLOYMENT       where to write the artifact (a volume the services mount read-only)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from eth_account import Account
from web3 import HTTPProvider, Web3


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


def already_deployed(w3: Web3, artifact: Path) -> bool:
    if not artifact.exists():
        return False
    try:
        raw = json.loads(artifact.read_text())
        address = Web3.to_checksum_address(raw["address"])
        same_chain = int(raw["chain_id"]) == w3.eth.chain_id
    except (ValueError, KeyError, TypeError):
        return False
    return same_chain and bool(w3.eth.get_code(address))


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

    w3 = wait_for_chain(rpc_url)
    if already_deployed(w3, artifact):
        log("already_deployed", artifact=str(artifact))
        return 0
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
    command = [
        "wafl", "deploy", "--config", config, "--rpc-url", rpc_url, "--key-file", key_file,
        "--participants", ",".join(participants), "--quorum", str(quorum),
        "--round-duration", str(round_duration), "--out", str(artifact),
    ]
    proc = subprocess.run(command, check=False)
    if proc.returncode != 0:
        return proc.returncode
    artifact.chmod(0o644)
    log("deployed", artifact=str(artifact), config=config, participants=participants, quorum=quorum)
    return 0


if __name__ == "__main__":
    sys.exit(main())
