"""The metrics service's plain core: Prometheus metrics from the event stream, and the quality of
each finalised global model on the organisation's held-out data.

The chain's totals are gauges set from the ledger (``ledger.py``): they equal the canonical chain,
going down when a reorganisation drops blocks. Everything else counts this organisation's work
(trained, proved, submitted), which a reorganisation does not undo."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from services.metrics.ledger import ChainTotals
from wafl.bus.messages import (
    ChainReorged,
    Message,
    ProofGenerated,
    RoundDeadline,
    RoundFinalized,
    RoundFinalizeSent,
    RoundOpened,
    UpdateFailed,
    UpdateSubmitted,
    UpdateTrained,
)
from wafl.bus.observability import GAS_BUCKETS, SECONDS_BUCKETS
from wafl.core.config import ModelConfig
from wafl.core.fixedpoint import Weights
from wafl.core.packing import unpack
from wafl.data.datasets import OrgData, evaluate


class MetricsBook:
    def __init__(self, registry: CollectorRegistry, cfg: ModelConfig | None = None, data: OrgData | None = None):
        self.cfg = cfg
        self.data = data

        self.rounds_opened = Gauge("wafl_chain_rounds_opened", "Rounds opened on the canonical chain.",
                                   registry=registry)
        self.rounds_finalized = Gauge("wafl_chain_rounds_finalized", "Rounds finalised on the canonical chain.",
                                      registry=registry)
        self.deadlines = Counter(
            "wafl_round_deadlines", "Rounds whose deadline passed before their quorum.", registry=registry
        )
        self.updates_accepted = Gauge(
            "wafl_chain_updates_accepted", "Updates accepted on the canonical chain (all participants).",
            registry=registry,
        )
        self.rounds_voided = Gauge(
            "wafl_chain_rounds_voided",
            "Rounds voided on the canonical chain (secure aggregation: members of the set missing at the deadline).",
            registry=registry,
        )
        self.members_excluded = Gauge(
            "wafl_chain_members_excluded",
            "Exclusions from the round sets on the canonical chain (secure aggregation: one per member a voided "
            "round excluded; a rejoin does not lower it).",
            registry=registry,
        )
        self.round_set_size = Gauge(
            "wafl_round_set_size", "Members of the open round's set (secure aggregation; 0 without).",
            registry=registry,
        )
        self.reorgs = Counter(
            "wafl_chain_reorgs", "Reorganisations deeper than the chain watcher's confirmation depth.",
            registry=registry,
        )
        self.reorg_depth = Histogram(
            "wafl_chain_reorg_depth_blocks", "Scanned blocks each such reorganisation dropped.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=registry,
        )
        self.updates_trained = Counter("wafl_updates_trained", "Updates this organisation trained.", registry=registry)
        self.proofs = Counter("wafl_proofs_generated", "Proofs this organisation generated.", registry=registry)
        self.updates_submitted = Counter(
            "wafl_updates_submitted", "Updates this organisation submitted.", registry=registry
        )
        self.updates_failed = Counter(
            "wafl_updates_failed", "Updates this organisation failed to submit.", ("reason",), registry=registry
        )
        self.finalize_sent = Counter(
            "wafl_finalize_sent", "finalizeRound transactions this organisation sent.", registry=registry
        )
        self.proof_seconds = Histogram("wafl_proof_duration_seconds", "Witness + proof time.",
                                       buckets=SECONDS_BUCKETS, registry=registry)
        self.train_seconds = Histogram("wafl_train_duration_seconds", "Training time of a round's step.",
                                       buckets=SECONDS_BUCKETS, registry=registry)
        self.queue_seconds = Histogram("wafl_proof_queue_seconds", "Time a prover job waited for a prover.",
                                       buckets=SECONDS_BUCKETS, registry=registry)
        self.submit_seconds = Histogram("wafl_submit_duration_seconds", "Signing to receipt of a submission.",
                                        buckets=SECONDS_BUCKETS, registry=registry)
        self.gas = Histogram(
            "wafl_tx_gas_used",
            "Gas used by this organisation's transactions.",
            ("kind",),
            buckets=GAS_BUCKETS,
            registry=registry,
        )
        self.current_round = Gauge("wafl_current_round", "The round open on chain.", registry=registry)
        self.accuracy = Gauge(
            "wafl_global_model_accuracy", "Accuracy of the latest global model on held-out data.", registry=registry
        )
        self.loss = Gauge(
            "wafl_global_model_loss", "MSE loss of the latest global model on held-out data.", registry=registry
        )
        self.model_round = Gauge(
            "wafl_global_model_round", "The round that produced the latest evaluated model.", registry=registry
        )

    def set_chain_totals(self, totals: ChainTotals) -> None:
        self.rounds_opened.set(totals.rounds_opened)
        self.rounds_finalized.set(totals.rounds_finalized)
        self.updates_accepted.set(totals.updates_accepted)
        self.rounds_voided.set(totals.rounds_voided)
        self.members_excluded.set(totals.members_excluded)

    def record(self, event: Message) -> None:
        match event:
            case RoundOpened():
                if event.round >= self.current_round._value.get():
                    self.round_set_size.set(len(event.members))
                self.current_round.set(max(self.current_round._value.get(), event.round))
            case RoundFinalized():
                self.current_round.set(max(self.current_round._value.get(), event.round + 1))
                self.evaluate(event.round, event.global_words)
            case ChainReorged():
                self.reorgs.inc()
                self.reorg_depth.observe(event.depth)
                self.current_round.set(event.round)
            case RoundDeadline():
                self.deadlines.inc()
            case UpdateTrained():
                self.updates_trained.inc()
                self.train_seconds.observe(event.train_seconds)
            case ProofGenerated():
                self.proofs.inc()
                self.proof_seconds.observe(event.proof_seconds + event.witness_seconds)
                self.queue_seconds.observe(event.queue_seconds)
            case UpdateSubmitted():
                self.updates_submitted.inc()
                self.submit_seconds.observe(event.submit_seconds)
                self.gas.labels(kind="update").observe(event.gas_used)
            case UpdateFailed():
                self.updates_failed.labels(reason=event.reason).inc()
            case RoundFinalizeSent():
                self.finalize_sent.inc()
                self.gas.labels(kind="finalize").observe(event.gas_used)

    def evaluate(self, round_id: int, global_words: list[int]) -> tuple[float, float] | None:
        if self.cfg is None or self.data is None:
            return None
        model = Weights.from_flat(self.cfg, unpack(self.cfg, global_words))
        accuracy, loss = evaluate(
            self.cfg, np.asarray(model.w), np.asarray(model.b), self.data.x_test, self.data.y_test
        )
        if round_id >= self.model_round._value.get():  # a reorganisation may finalise a round again
            self.accuracy.set(accuracy)
            self.loss.set(loss)
            self.model_round.set(round_id)
        return accuracy, loss
