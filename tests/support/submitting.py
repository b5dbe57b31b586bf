"""Submitter test helpers: a proven update as the prover publishes it, one submitter replica,
and what the chain says was accepted."""

from __future__ import annotations

import random

import redis.asyncio as aioredis
from eth_account.signers.local import LocalAccount
from web3 import Web3

from services.submitter.decisions import Submitter
from services.submitter.records import TxPolicy
from tests.support.updates import make_update
from wafl.bus.messages import NO_BRANCH, ProofGenerated
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.artifact import Deployment
from wafl.core.config import ModelConfig
from wafl.zk.prover import Prover


def proof_message(
    org: str, cfg: ModelConfig, worker: Prover, aggregator: AggregatorClient, account: LocalAccount,
    round_id: int, seed: int,
) -> ProofGenerated:
    update = make_update(cfg, worker, aggregator.global_model(), account.address, round_id, random.Random(seed))
    return ProofGenerated(org=org, round=round_id, branch=NO_BRANCH, participant=account.address,
                          update_words=update.words,
                          proof=update.proof.as_uint256x8(), proof_seconds=1.0, witness_seconds=0.1,
                          queue_seconds=0.0)


def submitter(redis: aioredis.Redis, w3: Web3, deployment: Deployment, account: LocalAccount, org: str,
              prefix: str | None = None, confirmations: int = 0, **policy: float) -> Submitter:
    """One replica: its own client objects, the organisation's Redis namespace. Confirmations 0
    unless told: the tests' anvil mines only the blocks that carry transactions (or that a test
    mines by hand), so nothing would ever come to stand on the last receipt."""
    return Submitter(AggregatorClient(w3, deployment), account, redis, prefix or f"wafl:{org}:submitter", org,
                     TxPolicy(confirmations=confirmations, **policy))  # type: ignore[arg-type]


def nonce(w3: Web3, account: LocalAccount) -> int:
    return int(w3.eth.get_transaction_count(account.address, "latest"))


def accepted_logs(aggregator: AggregatorClient, round_id: int, account: LocalAccount) -> list[str]:
    logs = aggregator.contract.events.UpdateAccepted().get_logs(
        argument_filters={"round": round_id, "participant": account.address},
        from_block=aggregator.deployment.start_block)
    return [log["transactionHash"].to_0x_hex() for log in logs]
