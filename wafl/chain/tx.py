"""Signed transactions and revert decoding: every revert surfaces as its custom error's name."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_account.signers.local import LocalAccount
from eth_utils.abi import function_signature_to_4byte_selector
from hexbytes import HexBytes
from web3 import Web3
from web3.contract.contract import ContractConstructor, ContractFunction
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import Nonce, TxParams, TxReceipt, Wei

_BUILTIN = {
    "08c379a0": ("Error", ["string"]),
    "4e487b71": ("Panic", ["uint256"]),
}


class ContractRevertError(RuntimeError):
    """A transaction or call reverted; ``name`` is the custom error (or Error / Panic)."""

    def __init__(self, name: str, args: Sequence[Any], data: str) -> None:
        self.name = name
        self.args_ = tuple(args)
        self.data = data
        # The receipt when the transaction was mined and reverted (its gasUsed is what it cost).
        self.receipt: TxReceipt | None = None
        shown = ", ".join(repr(a) for a in self.args_)
        super().__init__(f"reverted with {name}({shown})")


class ErrorDecoder:
    """Maps revert data to the custom errors of one or more ABIs."""

    def __init__(self, *abis: Sequence[dict[str, Any]]) -> None:
        self._errors: dict[str, tuple[str, list[str]]] = dict(_BUILTIN)
        for abi in abis:
            for item in abi:
                if item.get("type") != "error":
                    continue
                types = [_abi_type(i) for i in item.get("inputs", [])]
                signature = f"{item['name']}({','.join(types)})"
                selector = function_signature_to_4byte_selector(signature).hex()
                self._errors[selector] = (item["name"], types)

    def decode(self, data: str | bytes | None) -> ContractRevertError:
        raw = HexBytes(data or b"")
        if len(raw) < 4:
            return ContractRevertError("UnknownRevert", [], raw.to_0x_hex())
        name, types = self._errors.get(raw[:4].hex(), ("UnknownError", []))
        try:
            args = [
                Web3.to_checksum_address(v) if t == "address" else v
                for t, v in zip(types, abi_decode(types, raw[4:]), strict=True)
            ]
        except Exception:  # malformed payload: keep the name, drop the arguments
            args = []
        return ContractRevertError(name, args, raw.to_0x_hex())

    def from_exception(self, exc: ContractLogicError) -> ContractRevertError:
        return self.decode(revert_data(exc.data))


def revert_data(data: object) -> str | bytes | None:
    """The revert payload in an error's data: the hex itself (anvil, geth), or nested as
    {"message": ..., "data": "0x..."} (Hardhat, whose error web3 passes on as it is)."""
    if isinstance(data, dict):
        data = data.get("data")
    return data if isinstance(data, str | bytes) else None


def _abi_type(item: dict[str, Any]) -> str:
    if item["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in item["components"])
        return f"({inner}){item['type'][5:]}"
    return str(item["type"])


def send(
    w3: Web3,
    account: LocalAccount,
    call: ContractFunction | ContractConstructor | TxParams,
    decoder: ErrorDecoder,
    *,
    gas: int | None = None,
    nonce: int | None = None,
    timeout: float = 120.0,
) -> TxReceipt:
    """Build, sign locally, send and wait; a revert raises ContractRevertError."""
    params: TxParams = {
        "from": account.address,
        "chainId": w3.eth.chain_id,
        "nonce": Nonce(nonce) if nonce is not None else w3.eth.get_transaction_count(account.address, "pending"),
    }
    if gas is not None:
        params["gas"] = gas
    try:
        if isinstance(call, dict):
            tx: TxParams = {**params, **call}
            if "gas" not in tx:
                tx["gas"] = w3.eth.estimate_gas(tx)
            tx.setdefault("maxFeePerGas", Wei(w3.eth.gas_price * 2))
            tx.setdefault("maxPriorityFeePerGas", w3.eth.max_priority_fee)
        else:
            tx = call.build_transaction(params)
    except ContractLogicError as exc:
        raise decoder.from_exception(exc) from None
    signed = account.sign_transaction(tx)  # type: ignore[arg-type]
    try:
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    except Web3RPCError as exc:
        if not mined_despite_error(exc, signed.hash):
            raise
        tx_hash = signed.hash
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout)
    if receipt["status"] != 1:
        error = replay_revert(w3, tx, receipt, decoder)
        error.receipt = receipt
        raise error
    return receipt


def mined_despite_error(exc: Web3RPCError, tx_hash: bytes) -> bool:
    """Hardhat by default (throwOnTransactionFailures) mines a reverting transaction, then answers
    eth_sendRawTransaction with an error naming its hash in error.data.txHash: its receipt (status
    0) follows as anvil's does. Any other error is a refusal."""
    error = (exc.rpc_response or {}).get("error")
    data = error.get("data") if isinstance(error, dict) else None
    mined = data.get("txHash") if isinstance(data, dict) else None
    return isinstance(mined, str) and HexBytes(mined) == HexBytes(tx_hash)


def replay_revert(w3: Web3, tx: TxParams, receipt: TxReceipt, decoder: ErrorDecoder) -> ContractRevertError:
    """A mined transaction failed: replay it as a call at its block to learn why.

    The block is the receipt's own, not the one before: a call at block N runs on the state after
    all of block N, with block N's timestamp. The reverted transaction changed no state, while the
    transactions before it in block N did, and may be what made it revert: another organisation's
    update that reached the quorum and finalised the round earlier in the same block (our update
    then failed with Wafl__RoundClosed), or a deadline that block N's timestamp is past
    (Wafl__DeadlinePassed). At block N - 1 neither is visible, and the call would succeed.
    (Only transactions after ours in block N can still mislead it: short of debug_traceTransaction,
    which not every node offers, nothing replays a transaction at its exact position.)
    """
    gas = tx.get("gas")
    if gas is not None and int(receipt["gasUsed"]) >= int(gas):
        return ContractRevertError("OutOfGas", [int(gas)], "0x")  # used all its gas: a replay tells no more
    call: TxParams = {k: v for k, v in tx.items() if k in ("from", "to", "data", "value", "gas")}  # type: ignore[assignment]
    try:
        w3.eth.call(call, block_identifier=receipt["blockNumber"])
    except ContractLogicError as exc:
        return decoder.from_exception(exc)
    return ContractRevertError("RevertedWithoutReason", [], "0x")
