"""`wafl bench pipeline`: where a round's time goes, and how the prover pool scales.

1. A federation (every service a separate process) runs several rounds; from the events of every
   organisation: the round latency (round.opened to round.finalized) split into train, queue
   wait, prove, submit and confirm (update.submitted to update.accepted), medians over rounds.
2. The same set of prover jobs proven by a pool of 1 and of 2 prover processes: proofs per
   minute and their ratio.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika

from services.trainer.rounds import RoundTrainer
from tools.localnet import Federation, federation
from wafl.bus.messages import ProverJob
from wafl.bus.topology import Topology
from wafl.core.config import ModelConfig
from wafl.core.packing import unpack
from wafl.data.datasets import load_org_data
from wafl.zk.build import build_circuit


@dataclass
class EventLog:
    """Every event of some organisations' exchanges, collected on a background thread."""

    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)  # (org, routing key, body)
    _stop: threading.Event = field(default_factory=threading.Event)
    _ready: threading.Event = field(default_factory=threading.Event)

    def start(self, amqp_url: str, orgs: list[str]) -> None:
        threading.Thread(target=lambda: asyncio.run(self._run(amqp_url, orgs)), daemon=True).start()
        if not self._ready.wait(30):
            raise TimeoutError("event observer did not start")

    def stop(self) -> None:
        self._stop.set()

    def of(self, routing_key: str) -> list[tuple[str, dict[str, Any]]]:
        return [(org, body) for org, key, body in list(self.events) if key == routing_key]

    async def _run(self, amqp_url: str, orgs: list[str]) -> None:
        connection = await aio_pika.connect(amqp_url)
        channel = await connection.channel()
        for org in orgs:
            exchange = await channel.declare_exchange(Topology(org).events.name, aio_pika.ExchangeType.TOPIC,
                                                      durable=True)
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
            await queue.bind(exchange, routing_key="#")

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage, org: str = org) -> None:
                async with message.process():
                    self.events.append((org, message.routing_key or "", json.loads(message.body)))

            await queue.consume(on_message)
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        await connection.close()


def _time(body: dict[str, Any]) -> float:
    return datetime.fromisoformat(body["emitted_at"]).timestamp()


def latency_split(log: EventLog, rounds: int) -> dict[str, float]:
    per_round: dict[str, list[float]] = {k: [] for k in ("round", "train", "queue_wait", "prove", "submit", "confirm")}
    opened = {(org, b["round"]): _time(b) for org, b in log.of("round.opened")}
    finalized = {(org, b["round"]): _time(b) for org, b in log.of("round.finalized")}
    accepted = {(org, b["round"], b["participant"].lower()): _time(b) for org, b in log.of("update.accepted")}
    for round_id in range(1, rounds + 1):
        spans = [finalized[k] - opened[k] for k in opened if k[1] == round_id and k in finalized]
        trained = [b for org, b in log.of("update.trained") if b["round"] == round_id]
        proofs = [b for org, b in log.of("proof.generated") if b["round"] == round_id]
        submitted = [(org, b) for org, b in log.of("update.submitted") if b["round"] == round_id]
        if not spans or not trained or not proofs or not submitted:
            continue
        per_round["round"].append(statistics.median(spans))
        per_round["train"].append(statistics.median(b["train_seconds"] for b in trained))
        per_round["queue_wait"].append(statistics.median(b["queue_seconds"] for b in proofs))
        per_round["prove"].append(statistics.median(b["proof_seconds"] + b["witness_seconds"] for b in proofs))
        # Submit: the submitter's own work (estimate, sign, broadcast); inclusion is the chain's.
        per_round["submit"].append(statistics.median(b.get("send_seconds", 0.0) for _, b in submitted))
        # Confirmation: from the broadcast to the chain watcher publishing the acceptance once it
        # is deep enough (block inclusion plus the confirmation depth).
        proved = {(org, b["participant"].lower()): _time(b) for org, b in log.of("proof.generated")
                  if b["round"] == round_id}
        confirms = [accepted[(org, round_id, b["participant"].lower())]
                    - (proved[(org, b["participant"].lower())] + b.get("send_seconds", 0.0))
                    for org, b in submitted
                    if (org, round_id, b["participant"].lower()) in accepted
                    and (org, b["participant"].lower()) in proved]
        per_round["confirm"].append(statistics.median(confirms) if confirms else 0.0)
    medians = {f"{k}_seconds": round(statistics.median(v), 3) for k, v in per_round.items() if v}
    if "round_seconds" in medians:
        other = sum(medians.get(f"{k}_seconds", 0.0) for k in ("train", "queue_wait", "submit"))
        medians["other_share_of_round"] = round(other / medians["round_seconds"], 4)
        medians["rounds_measured"] = len(per_round["round"])
    return medians


def run_rounds(cfg: ModelConfig, workdir: Path, orgs: int, rounds: int) -> dict[str, float]:
    with federation(cfg, workdir, org_count=orgs) as fed:
        log = EventLog()
        log.start(fed.amqp_url, [o.name for o in fed.orgs])
        fed.start_all()
        for round_id in range(1, rounds + 1):
            fed.wait_for_round(round_id, 600)
        time.sleep(2)  # the last round.finalized events reach every organisation
        log.stop()
        return latency_split(log, rounds)


def prover_throughput(cfg: ModelConfig, workdir: Path, jobs: int, replicas: int) -> float:
    """Proofs per minute of a pool of ``replicas`` prover processes over ``jobs`` jobs."""
    with federation(cfg, workdir, org_count=jobs) as fed:
        pool_org = fed.orgs[0]
        log = EventLog()
        log.start(fed.amqp_url, [pool_org.name])
        # The chain watcher records the open round, which provers check every job against.
        watcher = fed.start(pool_org, "chain_watcher")
        provers = [fed.start(pool_org, "prover", r) for r in range(replicas)]
        _wait_for_log(fed, [watcher], "event_published", timeout=120)
        _wait_for_log(fed, provers, "service_started", timeout=120)
        prepared = _jobs(fed, pool_org.name)
        started = time.monotonic()
        asyncio.run(_publish_jobs(fed.amqp_url, pool_org.name, prepared))
        deadline = started + 1200
        while len(log.of("proof.generated")) < jobs and time.monotonic() < deadline:
            fed.assert_alive()
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        log.stop()
        if len(log.of("proof.generated")) < jobs:
            raise TimeoutError(f"only {len(log.of('proof.generated'))} of {jobs} proofs")
        return jobs / elapsed * 60.0


def _jobs(fed: Federation, org: str) -> list[ProverJob]:
    """One job per registered participant, for the current round, from real training steps."""
    cfg = fed.cfg
    words = fed.aggregator.global_words()
    jobs = []
    for index, member in enumerate(fed.orgs):
        data = load_org_data(cfg, cfg.dataset, index, len(fed.orgs))
        job, _ = RoundTrainer(cfg, data, org, member.account.address).train(1, words)
        jobs.append(job)
    assert all(len(unpack(cfg, j.update_words)) == cfg.n_weights for j in jobs)
    return jobs


async def _publish_jobs(amqp_url: str, org: str, jobs: list[ProverJob]) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    queue_name = Topology(org).prover_jobs.name
    for job in jobs:
        await channel.default_exchange.publish(
            aio_pika.Message(job.model_dump_json().encode(), content_type="application/json",
                             delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=queue_name,
        )
    await connection.close()


def _wait_for_log(fed: Federation, processes: list[Any], marker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(marker in p.log() for p in processes):
            return
        fed.assert_alive()
        time.sleep(0.2)
    raise TimeoutError(f"{marker!r} not logged within {timeout}s:\n{fed.log_tails()}")


def bench_pipeline(cfg: ModelConfig, *, orgs: int = 3, rounds: int = 3, jobs: int = 8) -> dict[str, Any]:
    build_circuit(cfg)
    with tempfile.TemporaryDirectory(prefix="wafl-bench-") as tmp:
        work = Path(tmp)
        (work / "rounds").mkdir()
        (work / "pool1").mkdir()
        (work / "pool2").mkdir()
        result: dict[str, Any] = {"config": cfg.name, "orgs": orgs, "rounds": rounds}
        result.update(run_rounds(cfg, work / "rounds", orgs, rounds))
        one = prover_throughput(cfg, work / "pool1", jobs, 1)
        two = prover_throughput(cfg, work / "pool2", jobs, 2)
    result.update({
        "jobs": jobs,
        "proofs_per_minute_1_replica": round(one, 2),
        "proofs_per_minute_2_replicas": round(two, 2),
        "replica_speedup": round(two / one, 3),
    })
    return result
