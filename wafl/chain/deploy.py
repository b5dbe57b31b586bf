"""Deploy the verifier and aggregator for one configuration and key set; write the artifact.

The tests deploy through this module too. The artifact holds everything a service needs:
ABIs, addresses, start block, chain id, the model configuration and which keys the verifier
holds (their hash, their kind, the ceremony transcript's hash).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from eth_account.signers.local import LocalAccount
from web3 import Web3

from wafl.chain.artifact import Deployment
from wafl.chain.compile import compile_contracts
from wafl.chain.tx import ErrorDecoder, send
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights
from wafl.core.packing import pack
from wafl.zk.build import build_circuit, development_keys
from wafl.zk.keys import KeySet, vk_words

# Chains whose ids only local development nodes use (anvil and Hardhat 31337, Ganache 1337):
# the only ones development keys may be deployed on without --allow-development-keys.
LOCAL_CHAIN_IDS = frozenset({31337, 1337})


class DeploymentError(ValueError):
    """A deployment that must not be made, with the reason in the message."""


def deploy(
    w3: Web3,
    deployer: LocalAccount,
    cfg: ModelConfig,
    *,
    quorum: int,
    round_duration: int,
    participants: Sequence[str | LocalAccount] | None = None,
    initial_model: Weights | None = None,
    keys: KeySet | None = None,
    allow_development_keys: bool = False,
    standardisation: dict[str, list[float]] | None = None,
    masking_keys: Mapping[str, tuple[int, int]] | None = None,
) -> Deployment:
    """Deploy with `keys` (default: this machine's development keys) and register participants.

    Participants given as accounts (tests, simulations: keys this process holds) also attest the
    keys, which opens round 1 once all have; an organisation attests itself with `wafl attest`.
    With secure aggregation each of them first registers its masking public key, taken from
    `masking_keys` (by address; every account participant needs one). Development keys are
    refused on a chain that is not a local development chain unless `allow_development_keys`.
    `standardisation` is recorded in the artifact as given (the federation's, of raw features:
    see wafl.data.standardisation).
    """
    check_terms(cfg, quorum, round_duration, participants or [])
    accounts = [p for p in participants or [] if not isinstance(p, str)]
    masking = {address.lower(): key for address, key in (masking_keys or {}).items()}
    if cfg.set_size:
        lacking = [a.address for a in accounts if a.address.lower() not in masking]
        if lacking:
            raise DeploymentError(
                f"{cfg.name} uses secure aggregation: participants attesting here need a masking key "
                f"(masking_keys), and {', '.join(lacking)} has none"
            )
    build = build_circuit(cfg)
    keys = keys if keys is not None else development_keys(build)
    if keys.circuit_sha256 != build.circuit_sha256:
        raise DeploymentError(
            f"the keys in {keys.directory} were made for another circuit than {cfg.name}'s "
            f"({keys.circuit_sha256[:16]} vs {build.circuit_sha256[:16]})"
        )
    chain_id = w3.eth.chain_id
    if keys.is_development and chain_id not in LOCAL_CHAIN_IDS and not allow_development_keys:
        raise DeploymentError(
            f"refusing development keys on chain {chain_id}: whoever made them can forge proofs; "
            "deploy a ceremony's keys (--keys DIR) or pass --allow-development-keys"
        )
    if w3.eth.get_balance(deployer.address) == 0:
        raise DeploymentError(f"the deployer {deployer.address} has no ether on chain {chain_id}: fund it first")
    compiled = compile_contracts()["contracts"]
    aggregator_abi = compiled["WaflAggregator"]["abi"]
    verifier_abi = compiled["WaflVerifier"]["abi"]
    decoder = ErrorDecoder(aggregator_abi, verifier_abi)
    start_block = w3.eth.block_number

    verifier_factory = w3.eth.contract(abi=verifier_abi, bytecode=compiled["WaflVerifier"]["bytecode"])
    receipt = send(w3, deployer, verifier_factory.constructor(vk_words(keys.verification_key), cfg.set_size), decoder)
    verifier_address = receipt["contractAddress"]
    on_chain_hash = "0x" + bytes(
        w3.eth.contract(address=verifier_address, abi=verifier_abi).functions.keyHash().call()
    ).hex()
    if on_chain_hash != keys.vk_hash:
        raise DeploymentError(f"the verifier holds key {on_chain_hash}, not {keys.vk_hash}")

    initial = initial_model or Weights.zeros(cfg)
    layout = (cfg.n_weights, cfg.weight_bits, cfg.slot_bits, cfg.lanes_per_word, cfg.max_participants)
    factory = w3.eth.contract(abi=aggregator_abi, bytecode=compiled["WaflAggregator"]["bytecode"])
    receipt = send(
        w3,
        deployer,
        factory.constructor(
            verifier_address, deployer.address, layout, quorum, round_duration, pack(cfg, initial.flat())
        ),
        decoder,
    )
    address = receipt["contractAddress"]
    aggregator = w3.eth.contract(address=address, abi=aggregator_abi)
    if participants:
        addresses = [Web3.to_checksum_address(p if isinstance(p, str) else p.address) for p in participants]
        send(w3, deployer, aggregator.functions.registerParticipants(addresses), decoder)
        for account in accounts:
            if cfg.set_size:
                x, y = masking[account.address.lower()]
                send(w3, account, aggregator.functions.registerMaskingKey(x, y), decoder)
            send(w3, account, aggregator.functions.attestKeys(bytes.fromhex(keys.vk_hash[2:])), decoder)
    return Deployment(
        chain_id=chain_id,
        address=str(address),
        verifier_address=str(verifier_address),
        start_block=start_block,
        abi=aggregator_abi,
        verifier_abi=verifier_abi,
        config=cfg.model_dump(mode="json"),
        quorum=quorum,
        round_duration=round_duration,
        vk_hash=keys.vk_hash,
        keys_kind=keys.kind.value,
        circuit_sha256=keys.circuit_sha256,
        transcript_sha256=keys.transcript_sha256,
        standardisation=standardisation,
    )


def check_terms(
    cfg: ModelConfig, quorum: int, round_duration: int, participants: Sequence[str | LocalAccount]
) -> None:
    """DeploymentError for what the aggregator's constructor or registration would revert on: checked
    before anything is built or sent (by `deploy`, and by `wafl deploy` before it connects)."""
    if not 1 <= quorum <= cfg.max_participants:
        raise DeploymentError(
            f"quorum {quorum} must be between 1 and {cfg.max_participants} (max_participants of {cfg.name})"
        )
    if not 1 <= round_duration < 1 << 64:
        raise DeploymentError(f"round duration {round_duration} must be between 1 and 2^64 - 1 seconds")
    addresses: set[str] = set()
    for participant in participants:
        address = participant if isinstance(participant, str) else participant.address
        if not Web3.is_address(address):
            raise DeploymentError(f"participant {address!r} is not an Ethereum address (0x and 40 hex digits)")
        addresses.add(address.lower())
    if len(addresses) > cfg.max_participants:
        raise DeploymentError(
            f"{len(addresses)} participants; {cfg.name} has room for {cfg.max_participants} (max_participants)"
        )
