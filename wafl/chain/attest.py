"""An organisation's attestation of the keys its federation's verifier holds.

For ceremony keys, the organisation first checks the whole ceremony against the circuit and the
phase 1 and finds its own contribution hash in it (`wafl.zk.ceremony.verify`); then it checks that
the final key is the one the deployment artifact names and the aggregator records, and sends
`attestKeys`. Round 1 opens with the last registered participant's attestation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eth_account.signers.local import LocalAccount
from web3 import Web3

from wafl.chain.aggregator import AggregatorClient
from wafl.chain.artifact import Deployment
from wafl.zk.keys import KeySet


class AttestError(ValueError):
    """Why this organisation must not attest, in one line."""


@dataclass(frozen=True)
class CeremonyCheck:
    """What an organisation checks its contribution against: the circuit, the phase 1, its hash."""

    r1cs: Path
    ptau: Path
    mine: str


def attest(
    w3: Web3, deployment: Deployment, account: LocalAccount, keys: KeySet | None, check: CeremonyCheck | None
) -> str:
    """Check, then attest; returns the transaction hash, or "" when already attested."""
    if deployment.keys_kind != "development":
        if keys is None or check is None:
            raise AttestError("the deployment uses ceremony keys: pass the final key directory and your contribution")
        from wafl.zk.ceremony import verify

        contributions = verify(keys.directory, check.r1cs, check.ptau, mine=check.mine)
        if not contributions:
            raise AttestError("the ceremony has no contribution")
    if keys is not None and keys.vk_hash != deployment.vk_hash:
        raise AttestError(
            f"the keys in {keys.directory} ({keys.vk_hash}) are not the deployment's ({deployment.vk_hash})"
        )
    aggregator = AggregatorClient(w3, deployment)
    on_chain = aggregator.verification_key_hash()
    if on_chain != deployment.vk_hash:
        raise AttestError(f"the aggregator records key {on_chain}, the deployment artifact {deployment.vk_hash}")
    if not aggregator.contract.functions.hasRole(aggregator.contract.functions.PARTICIPANT_ROLE().call(),
                                                 account.address).call():
        raise AttestError(f"{account.address} is not a registered participant of {deployment.address}")
    if aggregator.has_attested(account.address):
        return ""
    receipt = aggregator.attest_keys(account, deployment.vk_hash)
    return "0x" + bytes(receipt["transactionHash"]).hex()
