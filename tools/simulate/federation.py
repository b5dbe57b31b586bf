"""`wafl simulate`: a whole federation on one machine, on embedded defaults.

Every honest organisation runs the real handlers of its five services (trainer, prover,
submitter, chain_watcher, metrics) on one broker per organisation and one Redis. By default the
broker is in-process (FastStream's test broker routes each publish straight to the subscribers
of that organisation's queues) and Redis is an in-process stand-in (fakeredis, with Lua for the
submitter's nonce lock); ``amqp_url`` / ``redis_url`` put the same code on real servers. The
chain is an anvil from the pinned npm package unless ``rpc_url`` names a running development
node: anvil or Hardhat's, whose balance cheat code (``anvil_setBalance``, ``hardhat_setBalance``)
funds the run's accounts. On a node with neither, the run stops before it deploys, naming every
account and the ether it lacks (FundsNeededError); their keys are kept in ``Plan.accounts`` for
the next run, which uses them once they are funded.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
import structlog
from eth_account import Account
from eth_account.signers.local import LocalAccount
from faststream.rabbit import RabbitBroker, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from web3 import HTTPProvider, Web3

from services.chain_watcher.follower import ChainFollower
from services.chain_watcher.handlers import Watcher, WatcherState
from services.metrics.book import MetricsBook
from services.metrics.handlers import MetricsState
from services.metrics.handlers import register as register_metrics
from services.prover.handlers import ProverState
from services.prover.handlers import register as register_prover
from services.prover.proving import JobProver
from services.submitter.decisions import Submitter
from services.submitter.handlers import SubmitterState
from services.submitter.handlers import register as register_submitter
from services.submitter.records import TxPolicy
from services.trainer.handlers import TrainerState
from services.trainer.handlers import register as register_trainer
from services.trainer.rounds import RoundTrainer, UnprovableStepError
from tools.localnet import delete_org_topology
from tools.simulate.attack import Attack, MaliciousParticipant, Rejection, made_up_update
from wafl.bus.messages import PUBLIC_MESSAGES, Message, ProofGenerated, UpdateFailed
from wafl.bus.service import Runtime, declare_topology, make_broker
from wafl.bus.settings import DEFAULT_AMQP_URL, ServiceSettings
from wafl.bus.topology import DEAD_LETTER_REASON, DEAD_LETTER_SERVICE, Topology
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.chain.nodes import FundsNeededError, fund_all, increase_time
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights, fedavg
from wafl.core.packing import pack, unpack
from wafl.data.datasets import evaluate
from wafl.data.fedsplit import FederationData
from wafl.zk.build import build_circuit
from wafl.zk.masking import generate_secret, public_key
from wafl.zk.prover import Prover

log = structlog.get_logger()

# What each account is given, or must hold on a node without a cheat code: a run spends a small
# part of it (a deployment of a few million gas, then about 300,000 gas per update).
FUNDS = 10**18


@dataclass(frozen=True)
class Servers:
    amqp_url: str | None = None
    redis_url: str | None = None
    rpc_url: str | None = None


@dataclass(frozen=True)
class Plan:
    cfg: ModelConfig
    data: FederationData
    rounds: int
    malicious: int = 0
    attack: Attack = "scaled"
    seed: int = 0
    round_timeout: float = 300.0
    servers: Servers = Servers()
    accounts: Path | None = None
    """Where the keys of the run's accounts are kept and found again (a chain that outlives the
    run, whose accounts may have to be funded by hand); None: new keys, forgotten after the run."""

    @property
    def orgs(self) -> int:
        return len(self.data.orgs)

    @property
    def honest(self) -> int:
        return self.orgs - self.malicious


@dataclass
class RoundRecord:
    round: int
    accuracy: float
    loss: float
    accepted: int
    rejected: int
    median_proof_seconds: float | None
    gas_per_update: float | None
    round_seconds: float
    plain_fedavg_accuracy: float | None = None
    matches_reference: bool = True
    failed: list[str] = field(default_factory=list)
    """One "org: reason: detail" per honest organisation that published update.failed."""
    observed: dict[str, Any] | None = None
    """What anyone reading the chain sees of the first organisation's update: its first submitted
    word and that word's lanes read as weights, beside the weights it really trained."""


@dataclass
class Progress:
    """What the display shows; called from the event loop."""

    on_event: Callable[[str, Message], None] = lambda org, event: None
    on_round: Callable[[RoundRecord], None] = lambda record: None
    on_start: Callable[[str], None] = lambda text: None


@dataclass
class Observed:
    proof_seconds: dict[int, list[float]] = field(default_factory=dict)
    failed: dict[int, dict[str, str]] = field(default_factory=dict)
    """round -> participant (lower case) -> "org: reason: detail" of its update.failed."""


class HonestOrg:
    """One organisation's five services on one broker and one Redis."""

    def __init__(self, name: str, index: int, account: LocalAccount, plan: Plan, deployment: Deployment,
                 w3: Web3, worker: Prover, redis: aioredis.Redis, amqp_url: str,
                 observer: tuple[str, Callable[[str, Message], None]] | None = None,
                 masking_secret: int | None = None) -> None:
        self.name = name
        self.account = account
        cfg = plan.cfg
        self.settings = ServiceSettings(org=name, amqp_url=SecretStr(amqp_url))
        self.broker = make_broker(self.settings, "simulate")
        self.topology = Topology(name)
        # First, so that the in-process broker shows an event before the work it sets off.
        if observer is not None:
            self.observe(*observer)

        def runtime(service: str) -> Runtime:
            return Runtime(service, self.settings, self.topology, self.broker, redis)

        data = plan.data.orgs[index]
        register_trainer(runtime("trainer"), TrainerState(RoundTrainer(cfg, data, name, account.address)))
        register_prover(runtime("prover"), ProverState(JobProver(cfg, worker, name, masking_secret=masking_secret)))
        submitter_runtime = runtime("submitter")
        # Confirmations 0, as for the watcher below: a development node never reorganises, and one
        # that mines only with transactions (our own anvil, a stock Hardhat node) never adds the
        # blocks that a confirmation depth would wait for.
        submitter = Submitter(AggregatorClient(w3, deployment), account, redis, submitter_runtime.key(), name,
                              TxPolicy(confirmations=0))
        register_submitter(submitter_runtime, SubmitterState(submitter))
        self.book = MetricsBook(CollectorRegistry(), cfg, data)
        register_metrics(runtime("metrics"), MetricsState(self.book))
        # Confirmations 0: see the submitter's above.
        self.watcher = Watcher(runtime("chain_watcher"), WatcherState(ChainFollower(w3, deployment, name, 0), 0.2))

    def observe(self, tag: str, sink: Callable[[str, Message], None]) -> None:
        """One extra, temporary subscriber per public topic, for the progress display."""
        for model in PUBLIC_MESSAGES:
            queue = RabbitQueue(f"wafl.{self.name}.simulate-{tag}.{model.routing_key}", auto_delete=True,
                                routing_key=model.routing_key)
            self.broker.subscriber(queue, self.topology.events, title=f"simulate: {model.routing_key}")(
                self._handler(model, sink))
        dead = RabbitQueue(f"wafl.{self.name}.simulate-{tag}.dead-letters", auto_delete=True)

        # Raw messages: an observer never rejects (or dead-letters) what it is shown. (A job that
        # can never be proven is also announced by the prover itself, on update.failed.)
        async def on_dead_letter(message: RabbitMessage) -> None:
            reason = str(message.headers.get(DEAD_LETTER_REASON, "?"))
            service = str(message.headers.get(DEAD_LETTER_SERVICE, "?"))
            log.warning("dead_lettered", org=self.name, service=service, reason=reason)

        self.broker.subscriber(dead, self.topology.dead_letter_exchange, title="simulate: dead letters")(on_dead_letter)

    def _handler(self, model: type[Message], sink: Callable[[str, Message], None]) -> Callable[..., Any]:
        org = self.name

        async def handle(message: RabbitMessage) -> None:
            try:
                event = model.model_validate_json(message.body)
            except ValueError:
                return  # the consuming service dead-letters it
            sink(org, event)

        return handle


class Simulation:
    def __init__(self, plan: Plan, progress: Progress | None = None) -> None:
        self.plan = plan
        self.progress = progress or Progress()
        self.observed = Observed()
        self.records: list[RoundRecord] = []
        self.rejections: list[Rejection] = []
        self.tag = uuid.uuid4().hex[:6]
        self.deployment: Deployment | None = None
        """The run's deployment, once made (with the federation's standardisation of the data)."""

    # ---- set-up -------------------------------------------------------------------------------
    def _chain(self, stack: ExitStack) -> Web3:
        if self.plan.servers.rpc_url:
            return Web3(HTTPProvider(self.plan.servers.rpc_url, request_kwargs={"timeout": 60}))
        anvil = stack.enter_context(Anvil())
        self.progress.on_start(f"anvil at {anvil.url} (pinned npm package)")
        return anvil.web3()

    def _accounts(self) -> list[LocalAccount]:
        """The deployer, then one account per organisation: new keys, or with ``Plan.accounts`` the
        keys kept there (admin.key, org1.key, ...), made and kept (mode 600) where missing."""
        names = ["admin", *(f"org{i + 1}" for i in range(self.plan.orgs))]
        directory = self.plan.accounts
        if directory is None:
            return [Account.create() for _ in names]
        directory.mkdir(parents=True, exist_ok=True)
        accounts = []
        for name in names:
            path = directory / f"{name}.key"
            if path.exists():
                account: LocalAccount = Account.from_key(path.read_text().strip())
            else:
                account = Account.create()
                path.touch(mode=0o600)
                path.write_text(account.key.hex())
            accounts.append(account)
        return accounts

    def _fund(self, w3: Web3, accounts: list[LocalAccount]) -> None:
        """Each account funded by the node's cheat code; on a node without one, FundsNeededError
        naming every account short of FUNDS (and, with kept keys, that the next run uses them)."""
        try:
            fund_all(w3, [a.address for a in accounts], FUNDS)
        except FundsNeededError as exc:
            if self.plan.accounts is None:
                raise
            raise FundsNeededError(exc.endpoint, exc.needs,
                                   then="run again with the same --out (it keeps their keys)") from None

    def _org_name(self, index: int) -> str:
        # On shared servers, a run's names are unique so that runs never meet.
        real = self.plan.servers.amqp_url or self.plan.servers.redis_url
        return f"org{index + 1}-{self.tag}" if real else f"org{index + 1}"

    async def run(self) -> list[RoundRecord]:
        plan, cfg = self.plan, self.plan.cfg
        self.progress.on_start(f"building the {cfg.name} circuit (cached after the first run)")
        build = await asyncio.to_thread(build_circuit, cfg)
        with ExitStack() as stack:
            w3 = self._chain(stack)
            admin, *members = self._accounts()
            self._fund(w3, [admin, *members])
            # Quorum: the honest organisations. A rejected update never counts towards it.
            scaling = plan.data.standardisation
            # Secure aggregation: each organisation's masking secret, held in memory for the run only.
            secrets = [generate_secret() for _ in range(plan.honest)] if cfg.secure_aggregation else []
            if secrets:
                self.progress.on_start("masking keys: Baby Jubjub, one per organisation")
            public_keys = await asyncio.gather(*(asyncio.to_thread(public_key, s) for s in secrets))
            deployment = deploy(w3, admin, cfg, quorum=plan.honest, round_duration=3600, participants=members,
                                standardisation=scaling.record() if scaling else None,
                                masking_keys={m.address: k for m, k in zip(members, public_keys, strict=False)})
            self.deployment = deployment
            aggregator = AggregatorClient(w3, deployment)
            self.progress.on_start(f"aggregator {deployment.address}: {plan.orgs} organisations "
                                   f"({plan.malicious} malicious), quorum {plan.honest}, "
                                   f"{deployment.keys_kind.upper()} keys {deployment.vk_hash[:18]}")
            workers = [stack.enter_context(Prover(build)) for _ in range(plan.honest)]
            redis = self._redis()
            amqp_url = plan.servers.amqp_url or DEFAULT_AMQP_URL
            honest = [HonestOrg(self._org_name(i), i, members[i], plan, deployment, w3, workers[i], redis, amqp_url,
                                (self.tag, self._on_event), secrets[i] if secrets else None)
                      for i in range(plan.honest)]
            attackers = [MaliciousParticipant(cfg, aggregator, members[i], plan.attack, plan.seed + i)
                         for i in range(plan.honest, plan.orgs)]
            try:
                async with AsyncExitStack() as brokers:
                    for org in honest:
                        await brokers.enter_async_context(self._connected(org.broker))
                        if plan.servers.amqp_url:
                            await declare_topology(org.broker, org.topology)
                    for org in honest:
                        org.watcher.start()
                        brokers.push_async_callback(org.watcher.stop)
                    await self._rounds(aggregator, honest, attackers)
            finally:
                await self._cleanup(honest, redis)
        return self.records

    def _redis(self) -> aioredis.Redis:
        if self.plan.servers.redis_url:
            return aioredis.Redis.from_url(self.plan.servers.redis_url, decode_responses=True)
        import fakeredis

        return fakeredis.FakeAsyncRedis(decode_responses=True)

    def _connected(self, broker: RabbitBroker) -> Any:
        if self.plan.servers.amqp_url:
            return _started(broker)
        from faststream.rabbit import TestRabbitBroker

        return TestRabbitBroker(broker)

    async def _cleanup(self, honest: list[HonestOrg], redis: aioredis.Redis) -> None:
        if self.plan.servers.amqp_url:
            for org in honest:
                await delete_org_topology(self.plan.servers.amqp_url, org.name)
        if self.plan.servers.redis_url:
            for org in honest:
                keys = [k async for k in redis.scan_iter(match=f"wafl:{org.name}:*")]
                if keys:
                    await redis.delete(*keys)
        await redis.aclose()

    # ---- rounds -------------------------------------------------------------------------------
    def _on_event(self, org: str, event: Message) -> None:
        if isinstance(event, ProofGenerated):
            seconds = event.proof_seconds + event.witness_seconds
            self.observed.proof_seconds.setdefault(event.round, []).append(seconds)
        if isinstance(event, UpdateFailed):
            failures = self.observed.failed.setdefault(event.round, {})
            failures.setdefault(event.participant.lower(), f"{org}: {event.reason}: {event.detail}".rstrip(": "))
        self.progress.on_event(org, event)

    async def _rounds(self, aggregator: AggregatorClient, honest: list[HonestOrg],
                      attackers: list[MaliciousParticipant]) -> None:
        plan, cfg = self.plan, self.plan.cfg
        reference = aggregator.global_model()  # the honest-only FedAvg, recomputed off chain
        plain = reference  # a FedAvg that trusts its clients, poisoned updates included
        trainers = [RoundTrainer(cfg, plan.data.orgs[i], "reference", m.account.address)
                    for i, m in enumerate(honest)]
        rng = np.random.default_rng(plan.seed)
        for round_id in range(1, plan.rounds + 1):
            started = time.monotonic()
            honest_updates = [_update(cfg, t, round_id, pack(cfg, reference.flat())) for t in trainers]
            rejected = 0
            for attacker in attackers:
                # Honest rounds leave the chain at the reference model: the attackers' starting point.
                made_up = made_up_update(cfg, plan.attack, reference, _first(honest_updates, reference), rng)
                rejection = await asyncio.to_thread(attacker.submit, round_id, made_up, pack(cfg, made_up.flat()))
                if rejection is not None:
                    rejected += 1
                    self.rejections.append(rejection)
            await self._wait_for_round(aggregator, round_id)
            # The chain averages the updates it accepted: the honest ones of organisations that did not fail.
            failed = self.observed.failed.get(round_id, {})
            accepted = [u for org, u in zip(honest, honest_updates, strict=True)
                        if u is not None and org.account.address.lower() not in failed]
            if cfg.secure_aggregation and failed:
                accepted = []  # a member's update is missing: the masks cannot cancel, the round is voided
            reference = fedavg(cfg, accepted) if accepted else reference
            if attackers:  # the trusting baseline only means something beside poisoned updates
                trained = [_update(cfg, t, round_id, pack(cfg, plain.flat())) for t in trainers]
                plain_updates = [u for u in trained if u is not None]
                poisoned = [made_up_update(cfg, plan.attack, plain, _first(plain_updates, plain), rng)
                            for _ in attackers]
                plain = fedavg(cfg, plain_updates + poisoned)
            record = await self._record(aggregator, round_id, started, rejected, reference, plain)
            record.observed = await asyncio.to_thread(_observed, aggregator, honest[0].account.address, round_id,
                                                      honest_updates[0])
            self.records.append(record)
            self.progress.on_round(record)

    async def _wait_for_round(self, aggregator: AggregatorClient, round_id: int) -> None:
        deadline = time.monotonic() + self.plan.round_timeout
        at_deadline = False
        while (state := await asyncio.to_thread(aggregator.current_round)).round <= round_id:
            if time.monotonic() > deadline:
                raise TimeoutError(f"round {round_id} was not finalised within {self.plan.round_timeout:.0f}s")
            if not at_deadline and await asyncio.to_thread(self._only_failures_left, aggregator, round_id,
                                                           state.accepted):
                # The quorum is every honest organisation, so a round with a failed update closes at
                # its deadline: move the chain's clock there; the submitters finalise it.
                latest = int(aggregator.w3.eth.get_block("latest")["timestamp"])
                await asyncio.to_thread(increase_time, aggregator.w3, max(1, state.deadline - latest + 1))
                at_deadline = True
            await asyncio.sleep(0.2)

    def _only_failures_left(self, aggregator: AggregatorClient, round_id: int, accepted: int) -> bool:
        """Every honest organisation's update is accepted or failed, and at least one failed."""
        submitted = aggregator.contract.functions.hasSubmitted
        failed = [p for p in self.observed.failed.get(round_id, {})
                  if not submitted(Web3.to_checksum_address(p)).call()]
        return bool(failed) and accepted + len(failed) >= self.plan.honest

    async def _record(self, aggregator: AggregatorClient, round_id: int, started: float, rejected: int,
                      reference: Weights, plain: Weights) -> RoundRecord:
        cfg, data = self.plan.cfg, self.plan.data
        model = await asyncio.to_thread(aggregator.global_model)
        accuracy, loss = evaluate(cfg, np.asarray(model.w), np.asarray(model.b), data.x_test, data.y_test)
        gas = await asyncio.to_thread(_gas_of_accepted, aggregator, round_id)
        proofs = self.observed.proof_seconds.get(round_id, [])
        plain_accuracy = None
        if self.plan.malicious:
            plain_accuracy = evaluate(cfg, np.asarray(plain.w), np.asarray(plain.b), data.x_test, data.y_test)[0]
        return RoundRecord(
            round=round_id,
            accuracy=accuracy,
            loss=loss,
            accepted=len(gas),
            rejected=rejected,
            median_proof_seconds=statistics.median(proofs) if proofs else None,
            gas_per_update=statistics.median(gas) if gas else None,
            round_seconds=time.monotonic() - started,
            plain_fedavg_accuracy=plain_accuracy,
            matches_reference=model.flat() == reference.flat(),
            failed=sorted(self.observed.failed.get(round_id, {}).values()),
        )


def _update(cfg: ModelConfig, trainer: RoundTrainer, round_id: int, words: list[int]) -> Weights | None:
    """The reference's update, or None when the organisation's step cannot be proven (its own
    trainer publishes update.failed for it)."""
    try:
        job, _ = trainer.train(round_id, words)
    except UnprovableStepError:
        return None
    return Weights.from_flat(cfg, unpack(cfg, job.update_words))


OBSERVED_WEIGHTS = 4  # the lanes shown of what the chain holds: the largest trained weights of the first word


def _observed(aggregator: AggregatorClient, participant: str, round_id: int, update: Weights | None
              ) -> dict[str, Any] | None:
    """The participant's first submitted word in the round, as anyone reads it from the chain, and
    the lanes of its largest trained weights read as weights (plain: those weights; masked: noise),
    beside the weights it trained."""
    cfg = aggregator.deployment.model_config
    logs = aggregator.contract.events.UpdateAccepted().get_logs(
        from_block=aggregator.deployment.start_block, argument_filters={"round": round_id, "participant": participant})
    if not logs:
        return None
    tx = aggregator.w3.eth.get_transaction(logs[0]["transactionHash"])
    _, arguments = aggregator.contract.decode_function_input(tx["input"])
    word = int(arguments["updateWords"][0])
    in_word = min(cfg.lanes_per_word, cfg.n_weights)
    trained = update.flat()[:in_word] if update is not None else [0] * in_word
    lanes = sorted(sorted(range(in_word), key=lambda k: -abs(trained[k]))[:OBSERVED_WEIGHTS])
    mask = (1 << cfg.weight_bits) - 1
    scale = 1 << cfg.frac_bits
    return {
        "participant": participant,
        "first_word": f"0x{word:064x}",
        "lanes": lanes,
        "weights_read": [(((word >> (k * cfg.slot_bits)) & mask) + cfg.weight_min) / scale for k in lanes],
        "weights_trained": [trained[k] / scale for k in lanes] if update is not None else None,
    }


def _first(updates: Sequence[Weights | None], fallback: Weights) -> Weights:
    return next((u for u in updates if u is not None), fallback)


def _gas_of_accepted(aggregator: AggregatorClient, round_id: int) -> list[int]:
    logs = aggregator.contract.events.UpdateAccepted().get_logs(
        from_block=aggregator.deployment.start_block, argument_filters={"round": round_id})  # indexed
    return [int(aggregator.w3.eth.get_transaction_receipt(log["transactionHash"])["gasUsed"]) for log in logs]


class _started:
    """A broker connected to a real server for the length of a block."""

    def __init__(self, broker: RabbitBroker) -> None:
        self.broker = broker

    async def __aenter__(self) -> RabbitBroker:
        await self.broker.start()
        return self.broker

    async def __aexit__(self, *exc: object) -> None:
        await self.broker.stop()
