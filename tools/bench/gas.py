"""`wafl bench gas`: constraints, proof time and gas per configuration, beside the naive design.

For each configuration, in one run: WaFL's packed circuit (build, prove several times) and its
contracts on a fresh anvil (participants x rounds of real proofs, then one round closed by
finalizeRound after its deadline); and the naive baseline, i.e. the same relation with one
public input per weight value verified by a plain exported verifier (snarkjs' template, keys
built into its code).
"""

from __future__ import annotations

import json
import random
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil, fund, increase_time
from wafl.chain.compile import compile_contracts
from wafl.chain.deploy import deploy
from wafl.chain.tx import ContractRevertError, ErrorDecoder, send
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Matrix, Weights, train_step
from wafl.core.packing import pack
from wafl.zk.build import build_circuit, development_keys
from wafl.zk.circuit import CircuitKind, public_inputs, witness_args
from wafl.zk.prover import ProofResult, Prover


@dataclass(frozen=True)
class BenchOptions:
    participants: int = 3
    rounds: int = 2
    seed: int = 7


def synthetic_batch(cfg: ModelConfig, rng: random.Random) -> tuple[Matrix, Matrix]:
    """A batch of features in a quarter of the data range with one-hot targets."""
    span = max(1, cfg.data_max // 4)
    x = [[rng.randint(-span, span) for _ in range(cfg.d_in)] for _ in range(cfg.batch)]
    y = [[int(k == rng.randrange(cfg.d_out)) for k in range(cfg.d_out)] for _ in range(cfg.batch)]
    return x, y


def _accounts(w3: Web3, n: int) -> Iterator[LocalAccount]:
    for _ in range(n):
        account: LocalAccount = Account.create()
        fund(w3, account.address)
        yield account


def _prove_and_submit(
    cfg: ModelConfig,
    worker: Prover,
    aggregator: AggregatorClient,
    account: LocalAccount,
    round_id: int,
    rng: random.Random,
) -> tuple[ProofResult, int]:
    global_model = aggregator.global_model()
    x, y = synthetic_batch(cfg, rng)
    update = train_step(cfg, global_model, x, y)
    args = witness_args(cfg, CircuitKind.PACKED, global_model, update, x, y, int(account.address, 16), round_id)
    result = worker.prove(args)
    receipt = aggregator.submit_update(account, round_id, pack(cfg, update.flat()), result.proof)
    return result, int(receipt["gasUsed"])


INVALID_PROOF_GAS_LIMIT = 10_000_000


def _invalid_proof_gas(
    cfg: ModelConfig, worker: Prover, aggregator: AggregatorClient, account: LocalAccount, round_id: int,
    rng: random.Random,
) -> int:
    """Gas of a submission whose proof has A off the curve, mined with a 10M gas limit."""
    global_model = aggregator.global_model()
    x, y = synthetic_batch(cfg, rng)
    update = train_step(cfg, global_model, x, y)
    args = witness_args(cfg, CircuitKind.PACKED, global_model, update, x, y, int(account.address, 16), round_id)
    proof = worker.prove(args).proof.as_uint256x8()
    proof[0] ^= 1
    try:
        aggregator.submit_update(account, round_id, pack(cfg, update.flat()), proof, gas=INVALID_PROOF_GAS_LIMIT)
    except ContractRevertError as exc:
        if exc.name != "Wafl__InvalidProof" or exc.receipt is None:
            raise
        return int(exc.receipt["gasUsed"])
    raise RuntimeError("a proof with A off the curve was accepted")


def bench_packed(cfg: ModelConfig, options: BenchOptions) -> dict[str, Any]:
    rng = random.Random(options.seed)
    build = build_circuit(cfg, CircuitKind.PACKED)
    proof_seconds: list[float] = []
    submit_gas: list[int] = []
    finalizing_gas: list[int] = []
    with Anvil() as anvil, Prover(build) as worker:
        w3 = anvil.web3()
        admin, *members = _accounts(w3, options.participants + 1)
        deployment = deploy(
            w3, admin, cfg, quorum=options.participants, round_duration=3600,
            participants=members,
        )
        aggregator = AggregatorClient(w3, deployment)
        for round_id in range(1, options.rounds + 1):
            for index, member in enumerate(members):
                result, gas = _prove_and_submit(cfg, worker, aggregator, member, round_id, rng)
                proof_seconds.append(result.proof_seconds)
                (finalizing_gas if index == len(members) - 1 else submit_gas).append(gas)
        # One more round that misses its quorum and is closed after the deadline.
        round_id = options.rounds + 1
        for member in members[:-1]:
            result, gas = _prove_and_submit(cfg, worker, aggregator, member, round_id, rng)
            proof_seconds.append(result.proof_seconds)
            submit_gas.append(gas)
        invalid_gas = _invalid_proof_gas(cfg, worker, aggregator, members[-1], round_id, rng)
        increase_time(w3, 3601)
        finalize_gas = int(aggregator.finalize_round(admin)["gasUsed"])
    all_accepted = submit_gas + finalizing_gas
    return {
        "constraints": build.constraints,
        "public_inputs": cfg.public_inputs,
        "per_update_public_inputs": cfg.n_words + 1,
        "proofs": len(proof_seconds),
        "proof_seconds": round(statistics.median(proof_seconds), 3),
        "gas_submit_update": int(statistics.median(all_accepted)),
        "gas_submit_update_not_finalizing": int(statistics.median(submit_gas)),
        "gas_submit_update_finalizing": int(statistics.median(finalizing_gas)),
        "gas_finalize": finalize_gas,
        "gas_invalid_proof": invalid_gas,
    }


def bench_naive(cfg: ModelConfig, options: BenchOptions) -> dict[str, Any]:
    rng = random.Random(options.seed + 1)
    build = build_circuit(cfg, CircuitKind.NAIVE)
    keys = development_keys(build)
    verifier_path = keys.directory / "Verifier.sol"
    if not verifier_path.exists():
        import groth16py

        vk = groth16py.VerifyingKey.from_snarkjs(json.dumps(keys.verification_key))
        verifier_path.write_text(vk.to_solidity(pragma="^0.8.20", contract_name="Verifier"))
    compiled = compile_contracts(verifier_path)["contracts"]["Verifier"]
    decoder = ErrorDecoder(compiled["abi"])
    # The naive verifier outgrows the 24 KB contract size limit (and, for digits, a 30M-gas
    # block) on larger models; anvil lifts both so that its verification gas can be measured.
    lifted = ["--disable-code-size-limit", "--gas-limit", "1000000000"]
    with Anvil(extra_args=lifted) as anvil, Prover(build) as worker:
        w3 = anvil.web3()
        (sender,) = _accounts(w3, 1)
        factory = w3.eth.contract(abi=compiled["abi"], bytecode=compiled["bytecode"])
        deployed = send(w3, sender, factory.constructor(), decoder)
        verifier_address = deployed["contractAddress"]
        verifier = w3.eth.contract(address=verifier_address, abi=compiled["abi"])
        global_model = Weights.zeros(cfg)
        x, y = synthetic_batch(cfg, rng)
        update = train_step(cfg, global_model, x, y)
        sender_int = int(sender.address, 16)
        result = worker.prove(witness_args(cfg, CircuitKind.NAIVE, global_model, update, x, y, sender_int, 1))
        inputs = public_inputs(cfg, CircuitKind.NAIVE, global_model, update, sender_int, 1)
        (b0, b1), (b2, b3) = result.proof.b
        # The exported verifier takes B's coordinates in the precompile's order.
        proof = (list(result.proof.a), [[b1, b0], [b3, b2]], list(result.proof.c))
        if not verifier.functions.verifyProof(*proof, inputs).call():
            raise RuntimeError("the naive verifier rejected a valid proof")
        receipt = send(w3, sender, verifier.functions.verifyProof(*proof, inputs), decoder)
    return {
        "naive_constraints": build.constraints,
        "naive_public_inputs": len(inputs),
        "naive_proof_seconds": round(result.proof_seconds, 3),
        "naive_verifier_bytes": compiled["deployed_size"],
        "gas_naive_deploy": int(deployed["gasUsed"]),
        "naive_deployable_on_mainnet": compiled["deployed_size"] <= 24_576 and int(deployed["gasUsed"]) <= 30_000_000,
        "gas_naive_verify": int(receipt["gasUsed"]),
    }


def bench_config(cfg: ModelConfig, options: BenchOptions) -> dict[str, Any]:
    row: dict[str, Any] = {"config": cfg.name}
    row.update(bench_packed(cfg, options))
    row.update(bench_naive(cfg, options))
    row["gas_ratio_naive_over_packed"] = round(row["gas_naive_verify"] / row["gas_submit_update"], 2)
    return row
