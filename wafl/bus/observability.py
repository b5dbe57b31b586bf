"""Prometheus metrics shared by every service (names follow Prometheus conventions)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, start_http_server

DEAD_LETTERS = Counter(
    "wafl_messages_dead_lettered",
    "Messages dead-lettered by a service, by queue and kind of failure.",
    ["service", "queue", "kind"],
)
MESSAGES_HANDLED = Counter(
    "wafl_messages_handled",
    "Messages a service processed successfully, by queue.",
    ["service", "queue"],
)
DUPLICATES_SKIPPED = Counter(
    "wafl_duplicates_skipped",
    "Redelivered or repeated messages recognised by their idempotency key and not redone.",
    ["service", "stage"],
)

# Histogram buckets, one definition for every service that records these quantities.
GAS_BUCKETS = (50_000, 100_000, 200_000, 250_000, 300_000, 350_000, 400_000, 500_000, 750_000, 1_000_000, 2_000_000)
"""Gas used by one transaction (submitUpdate, finalizeRound): wafl_tx_gas_used, wafl_submitter_gas_used."""
SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300)
"""Durations of a pipeline stage (training, witness + proof, queueing, submission), in seconds."""


class MetricsPortError(RuntimeError):
    """/metrics cannot be served on the port asked for (taken, or not allowed)."""


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics on ``port`` (0 picks a free one); returns the port."""
    try:
        server, _ = start_http_server(port, addr="0.0.0.0", registry=registry)
    except OSError as exc:
        raise MetricsPortError(f"cannot serve /metrics on port {port} (WAFL_METRICS_PORT): {exc.strerror}; "
                               "choose another port, or 0 for any free one") from None
    return int(server.server_port)
