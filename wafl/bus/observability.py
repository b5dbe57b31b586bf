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


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY) -> int:
    """Serve /metrics on ``port`` (0 picks a free one); returns the port."""
    server, _ = start_http_server(port, addr="0.0.0.0", registry=registry)
    return int(server.server_port)
