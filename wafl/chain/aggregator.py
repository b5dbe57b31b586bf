"""Typed access to a deployed WaflAggregator."""

from __future__ import annotations

from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.types import TxReceipt

from wafl.chain.artifact import Deployment
from wafl.chain.tx import ErrorDecoder, send
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights
from wafl.core.packing import unpack
from wafl.zk.prover import Groth16Proof


@dataclass(frozen=True)
class RoundInfo:
    round: int
    deadline: int
    accepted: int


class AggregatorClient:
    def __init__(self, w3: Web3, deployment: Deployment) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.config: ModelConfig = deployment.model_config
        self.contract: Contract = w3.eth.contract(
            address=Web3.to_checksum_address(deployment.address), abi=deployment.abi
        )
        self.decoder = ErrorDecoder(deployment.abi, deployment.verifier_abi)

    # ---- reads ------------------------------------------------------------------------------
    def current_round(self) -> RoundInfo:
        round_id, deadline, accepted = self.contract.functions.currentRound().call()
        return RoundInfo(int(round_id), int(deadline), int(accepted))

    def global_words(self) -> list[int]:
        return [int(w) for w in self.contract.functions.globalModel().call()]

    def global_model(self) -> Weights:
        return Weights.from_flat(self.config, unpack(self.config, self.global_words()))

    def verification_key_hash(self) -> str:
        return "0x" + bytes(self.contract.functions.verificationKeyHash().call()).hex()

    def has_attested(self, address: str) -> bool:
        return bool(self.contract.functions.hasAttested(Web3.to_checksum_address(address)).call())

    def has_submitted(self, address: str) -> bool:
        return bool(self.contract.functions.hasSubmitted(Web3.to_checksum_address(address)).call())

    def is_participant(self, address: str) -> bool:
        role = self.contract.functions.PARTICIPANT_ROLE().call()
        return bool(self.contract.functions.hasRole(role, Web3.to_checksum_address(address)).call())

    def participants(self) -> list[str]:
        """The registered participants, in registration order."""
        return [Web3.to_checksum_address(a) for a in self.contract.functions.participants().call()]

    # ---- secure aggregation -----------------------------------------------------------------
    def secure_aggregation(self) -> bool:
        return bool(self.contract.functions.secureAggregation().call())

    def set_size(self) -> int:
        return int(self.contract.functions.setSize().call())

    def round_members(self) -> list[str]:
        """The current round's set, in slot order (empty without secure aggregation)."""
        return [Web3.to_checksum_address(a) for a in self.contract.functions.roundMembers().call()]

    def masking_key(self, address: str) -> tuple[int, int] | None:
        """The participant's registered masking public key, or None."""
        x, y = self.contract.functions.maskingKey(Web3.to_checksum_address(address)).call()
        return (int(x), int(y)) if x else None

    def is_excluded(self, address: str) -> bool:
        return bool(self.contract.functions.isExcluded(Web3.to_checksum_address(address)).call())

    # ---- writes -----------------------------------------------------------------------------
    def submit_update(
        self,
        account: LocalAccount,
        round_id: int,
        words: list[int],
        proof: Groth16Proof | list[int],
        *,
        gas: int | None = None,
    ) -> TxReceipt:
        flat = proof.as_uint256x8() if isinstance(proof, Groth16Proof) else list(proof)
        call = self.contract.functions.submitUpdate(round_id, words, flat)
        return send(self.w3, account, call, self.decoder, gas=gas)

    def finalize_round(self, account: LocalAccount, *, gas: int | None = None) -> TxReceipt:
        return send(self.w3, account, self.contract.functions.finalizeRound(), self.decoder, gas=gas)

    def attest_keys(self, account: LocalAccount, vk_hash: str | None = None) -> TxReceipt:
        """Attest the verification key (by default the one the deployment artifact names)."""
        key_hash = bytes.fromhex((vk_hash or self.deployment.vk_hash).removeprefix("0x"))
        return send(self.w3, account, self.contract.functions.attestKeys(key_hash), self.decoder)

    def register_masking_key(self, account: LocalAccount, public_key: tuple[int, int]) -> TxReceipt:
        x, y = public_key
        return send(self.w3, account, self.contract.functions.registerMaskingKey(x, y), self.decoder)

    def rejoin(self, account: LocalAccount) -> TxReceipt:
        """Back into the rounds' sets after an exclusion, from the next round's."""
        return send(self.w3, account, self.contract.functions.rejoin(), self.decoder)

    def open_first_round(self, account: LocalAccount) -> TxReceipt:
        return send(self.w3, account, self.contract.functions.openFirstRound(), self.decoder)

    def register(self, admin: LocalAccount, addresses: list[str]) -> TxReceipt:
        call = self.contract.functions.registerParticipants([Web3.to_checksum_address(a) for a in addresses])
        return send(self.w3, admin, call, self.decoder)

    def check_call(self, account: str, round_id: int, words: list[int], proof: list[int]) -> None:
        """Dry-run submitUpdate; raises ContractRevertError with the custom error if it would revert."""
        try:
            self.contract.functions.submitUpdate(round_id, words, proof).call({"from": account})
        except ContractLogicError as exc:
            raise self.decoder.from_exception(exc) from None
