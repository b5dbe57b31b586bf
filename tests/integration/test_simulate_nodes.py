"""`wafl simulate --rpc-url` on running nodes other than its own anvil: Hardhat's node as
`npx hardhat node` runs it (automine, an error for a mined revert), whose accounts hardhat_setBalance
funds; and a node with no balance cheat code at all, where the run stops before deploying with one
line naming every account to fund, and runs with the same accounts once they are funded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import HTTPProvider, Web3

from tests.support.nodes import StockHardhatNode, standard_methods_only
from tools.simulate.federation import FUNDS
from wafl.chain.hardhat import HardhatNode
from wafl.chain.nodes import fund

CONFIG = "iris-4x3-b3"  # the smallest circuit: the tests are about the chain


def wafl_simulate(cwd: Path, rpc_url: str, out: str, rounds: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "simulate", "--config", CONFIG, "--orgs", "2", "--rounds", str(rounds),
         "--rpc-url", rpc_url, "--round-timeout", "120", "--out", out],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )


def results(proc: subprocess.CompletedProcess[str], out: Path) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result: dict[str, Any] = json.loads((out / "results.json").read_text())
    return result


def kept_accounts(out: Path) -> list[LocalAccount]:
    """The deployer's and the organisations' accounts, from the keys the run kept in --out."""
    names = ["admin", "org1", "org2"]
    assert sorted(p.name for p in (out / "keys").iterdir()) == sorted(f"{n}.key" for n in names)
    for name in names:
        assert (out / "keys" / f"{name}.key").stat().st_mode & 0o077 == 0  # mode 600
    return [Account.from_key((out / "keys" / f"{n}.key").read_text()) for n in names]


@pytest.mark.slow
def test_simulate_on_a_hardhat_node(tmp_path: Path) -> None:
    with StockHardhatNode() as node:
        w3 = node.web3()
        proc = wafl_simulate(tmp_path, node.url, "hardhat", rounds=2)
        result = results(proc, tmp_path / "hardhat")
        rounds = result["rounds"]
        assert [r["round"] for r in rounds] == [1, 2]
        assert all(r["accepted"] == 2 and r["rejected"] == 0 and not r["failed"] for r in rounds), rounds
        assert all(r["matches_reference"] for r in rounds)  # on chain == the Python reference, bit for bit
        # Funded by hardhat_setBalance, the one cheat code this node has, then spent from: the
        # deployer deployed, each organisation attested and submitted an update per round.
        for account in kept_accounts(tmp_path / "hardhat"):
            assert 0 < w3.eth.get_balance(account.address) < FUNDS
            assert w3.eth.get_transaction_count(account.address) >= 2


@pytest.mark.slow
def test_simulate_on_a_node_without_cheat_codes_names_the_accounts_then_runs_once_funded(tmp_path: Path) -> None:
    with HardhatNode() as node, standard_methods_only(node.url) as gateway:
        public = Web3(HTTPProvider(gateway.url))
        first = wafl_simulate(tmp_path, gateway.url, "public", rounds=1)
        assert first.returncode == 2, first.stdout[-3000:] + first.stderr[-3000:]
        accounts = kept_accounts(tmp_path / "public")
        admin, org1, org2 = (a.address for a in accounts)
        (line,) = first.stderr.strip().splitlines()
        assert line == (f"wafl simulate: the node at {gateway.url} has no balance cheat code (anvil_setBalance or "
                        f"hardhat_setBalance): send 1 ETH each to {admin}, {org1}, {org2} (from a funded account), "
                        "then run again with the same --out (it keeps their keys)")
        assert not (tmp_path / "public" / "results.json").exists()
        assert [public.eth.get_transaction_count(a) for a in (admin, org1, org2)] == [0, 0, 0]  # nothing sent

        # Funded as such a chain's accounts are: transfers from an account that holds ether (here
        # one funded on the node behind the gateway), sent through the gateway.
        bank: LocalAccount = Account.create()
        fund(node.web3(), bank.address)
        for nonce, address in enumerate((admin, org1, org2)):
            signed = bank.sign_transaction({
                "to": address, "value": FUNDS, "gas": 21_000, "nonce": nonce, "chainId": public.eth.chain_id,
                "maxFeePerGas": 2 * public.eth.gas_price, "maxPriorityFeePerGas": public.eth.max_priority_fee,
            })
            receipt = public.eth.wait_for_transaction_receipt(public.eth.send_raw_transaction(signed.raw_transaction))
            assert receipt["status"] == 1

        second = wafl_simulate(tmp_path, gateway.url, "public", rounds=1)
        result = results(second, tmp_path / "public")
        assert result["rounds"][0]["accepted"] == 2 and result["rounds"][0]["matches_reference"]
        # The same accounts, now spending what they were sent.
        assert [a.address for a in kept_accounts(tmp_path / "public")] == [admin, org1, org2]
        assert all(public.eth.get_transaction_count(a) >= 2 for a in (admin, org1, org2))
        assert all(public.eth.get_balance(a) < FUNDS for a in (admin, org1, org2))
