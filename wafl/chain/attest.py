"""An organisation's attestation of the keys its federation's verifier holds.

For ceremony keys, the organisation first checks the whole ceremony against the circuit and the
phase 1 and finds its own contribution hash in it (`wafl.zk.ceremony.verify`); then it checks that
the final key is the one the deployment artifact names and the aggregator records, and sends
`attestKeys`. Round 1 opens with the last registered participant's attestation.

With secure aggregation the organisation's masking key goes on chain first: the public key of its
masking secret (the file its provers read) is registered unless it already is, and refused if the
participant registered another one (its provers would then mask with a key the set does not hold).
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
    w3: Web3,
    deployment: Deployment,
    account: LocalAccount,
    keys: KeySet | None,
    check: CeremonyCheck | None,
    masking_secret: int | None = None,
) -> str:
    """Check, then attest; returns the transaction hash, or "" when already attested.

    A secure-aggregation deployment needs `masking_secret`: its public key is registered first.
    """
    secure = deployment.model_config.secure_aggregation
    if secure and masking_secret is None:
        raise AttestError(
            f"{deployment.model_config.name} uses secure aggregation: pass your masking key file (--masking-key)"
        )
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
    if not aggregator.is_participant(account.address):
        raise AttestError(f"{account.address} is not a registered participant of {deployment.address}")
    if secure and masking_secret is not None:
        register_masking_key(aggregator, account, masking_secret)
    if aggregator.has_attested(account.address):
        return ""
    receipt = aggregator.attest_keys(account, deployment.vk_hash)
    return "0x" + bytes(receipt["transactionHash"]).hex()


def register_masking_key(aggregator: AggregatorClient, account: LocalAccount, secret: int) -> str:
    """Register the public key of `secret` for `account`; returns the transaction hash, or "" when
    that key is already registered. AttestError when another key is."""
    from wafl.zk.masking import public_key

    mine = public_key(secret)
    registered = aggregator.masking_key(account.address)
    if registered == mine:
        return ""
    if registered is not None:
        raise AttestError(
            f"{account.address} registered another masking key (x {registered[0]:#x}) than the one of the file "
            f"given (x {mine[0]:#x}): give the file whose key it registered"
        )
    receipt = aggregator.register_masking_key(account, mine)
    return "0x" + bytes(receipt["transactionHash"]).hex()
