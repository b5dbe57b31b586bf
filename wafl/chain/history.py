"""The global model after a finalised round, read from the chain with where it was read.

Finalising round N averages the accepted updates and, in the same transaction, emits
``RoundFinalized(N, accepted)`` then ``RoundOpened(N + 1, deadline, globalWords)``: the model after
round N is that ``globalWords``, and the log gives the block (number and hash) that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from wafl.chain.artifact import Deployment
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights
from wafl.core.packing import unpack

if TYPE_CHECKING:  # web3 is imported by the read itself: what a model file records imports none of it
    from web3 import Web3


class ChainModelError(ValueError):
    """The chain cannot give the model asked for; the message says why, in one line."""


@dataclass(frozen=True)
class ModelOrigin:
    """Where on the chain the global model after `round` is: what an exported model records."""

    chain_id: int
    contract: str
    round: int
    accepted: int
    """The updates that round averaged (0: the model was carried over)."""
    block_number: int
    block_hash: str
    block_timestamp: int
    transaction_hash: str
    vk_hash: str
    """The verification key the contract's verifier holds (every accepted update was proven to it)."""


@dataclass(frozen=True)
class FinalisedModel:
    """The global model after a round, as the chain holds it, and where."""

    origin: ModelOrigin
    words: list[int]
    weights: Weights


def finalised_model(w3: Web3, deployment: Deployment, round_id: int | None = None) -> FinalisedModel:
    """The model after round `round_id` (default: the last finalised round) of the aggregator the
    deployment artifact names; ChainModelError if the chain is not the artifact's, holds no such
    contract, or has not finalised that round."""
    from web3 import Web3

    cfg = deployment.model_config
    chain_id = int(w3.eth.chain_id)
    if chain_id != deployment.chain_id:
        raise ChainModelError(f"the node is on chain {chain_id}, the deployment artifact's is {deployment.chain_id}")
    address = Web3.to_checksum_address(deployment.address)
    head = int(w3.eth.block_number)  # every read below is of this block or an earlier one
    if not w3.eth.get_code(address, block_identifier=head):
        raise ChainModelError(f"chain {chain_id} has no contract at {address} (block {head}): is it the chain "
                              "the deployment was made on, still running?")
    contract = w3.eth.contract(address=address, abi=deployment.abi)
    try:
        vk_hash = "0x" + bytes(contract.functions.verificationKeyHash().call(block_identifier=head)).hex()
        current = int(contract.functions.currentRound().call(block_identifier=head)[0])
    except Exception as exc:  # reverted, undecodable: some other contract's code at the address
        raise ChainModelError(f"the contract at {address} on chain {chain_id} is not a WaflAggregator "
                              f"({type(exc).__name__})") from None
    if vk_hash != deployment.vk_hash:
        raise ChainModelError(f"the aggregator at {address} holds verification key {vk_hash}, "
                              f"not the deployment artifact's {deployment.vk_hash}")
    last = current - 1  # round `current` is open; every earlier one was finalised
    if last < 1:
        raise ChainModelError(f"the aggregator at {address} has finalised no round yet"
                              + (f" (round {current} is open)" if current else " (round 1 has not opened)"))
    wanted = last if round_id is None else round_id
    if not 1 <= wanted <= last:
        raise ChainModelError(f"round {wanted} was never finalised: the aggregator at {address} has finalised "
                              f"rounds 1 to {last}" + (f" (round {current} is open)" if wanted == current else ""))
    opened = contract.events.RoundOpened().get_logs(
        from_block=deployment.start_block, to_block=head, argument_filters={"round": wanted + 1})
    finalised = contract.events.RoundFinalized().get_logs(
        from_block=deployment.start_block, to_block=head, argument_filters={"round": wanted})
    if len(opened) != 1 or len(finalised) != 1 or opened[0]["transactionHash"] != finalised[0]["transactionHash"]:
        raise ChainModelError(f"the node (chain {chain_id}) returns {len(finalised)} RoundFinalized({wanted}) and "
                              f"{len(opened)} RoundOpened({wanted + 1}) logs of {address} from block "
                              f"{deployment.start_block}, not one of each in one transaction")
    log = opened[0]
    number = int(log["blockNumber"])
    block = w3.eth.get_block(number)
    if block["hash"] != log["blockHash"]:  # the chain reorganised between the two reads
        raise ChainModelError(f"block {number} changed while it was read (a reorganisation): try again")
    words = [int(w) for w in log["args"]["globalWords"]]
    origin = ModelOrigin(
        chain_id=chain_id,
        contract=address,
        round=wanted,
        accepted=int(finalised[0]["args"]["accepted"]),
        block_number=number,
        block_hash=log["blockHash"].to_0x_hex(),
        block_timestamp=int(block["timestamp"]),
        transaction_hash=log["transactionHash"].to_0x_hex(),
        vk_hash=vk_hash,
    )
    return FinalisedModel(origin, words, _unpacked(cfg, words, address))


def _unpacked(cfg: ModelConfig, words: list[int], address: str) -> Weights:
    try:
        return Weights.from_flat(cfg, unpack(cfg, words))
    except ValueError as exc:  # a word count or lane layout that is not this configuration's
        raise ChainModelError(f"the model of the aggregator at {address} does not fit configuration "
                              f"{cfg.name}: {exc}") from None
