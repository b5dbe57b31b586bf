"""RabbitMQ topology of one organisation, declared once (docs/design.md section 7).

- ``wafl.<org>.events``: durable topic exchange for public events (routing key = topic);
- ``wafl.<org>.prover.jobs``: durable work queue for prover jobs (private: reached through the
  default exchange only, never bound to the public exchange);
- ``wafl.<org>.dlx`` / ``wafl.<org>.dead-letters``: where messages that cannot be processed go,
  with their reason in headers;
- one durable queue per (service, topic). Queues are quorum queues: they count deliveries, so a
  message that keeps failing is dead-lettered by the broker after DELIVERY_LIMIT attempts
  instead of being retried forever.
"""

from __future__ import annotations

from dataclasses import dataclass

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue
from faststream.rabbit.schemas.queue import QuorumQueueArgs

from wafl.bus.messages import PUBLIC_MESSAGES, ChainReorged, ProofGenerated, RoundDeadline, RoundOpened, RoundVoided

DELIVERY_LIMIT = 5
DEAD_LETTER_REASON = "x-wafl-reason"
DEAD_LETTER_QUEUE = "x-wafl-queue"
DEAD_LETTER_SERVICE = "x-wafl-service"
DEAD_LETTER_ROUTING_KEY = "x-wafl-routing-key"

# Which public topics each service consumes. Every service declares all of these queues at
# start-up, so an event published before its consumer first runs waits in its queue.
SUBSCRIPTIONS: dict[str, tuple[str, ...]] = {
    "trainer": (RoundOpened.routing_key,),
    "submitter": (ProofGenerated.routing_key, RoundDeadline.routing_key, ChainReorged.routing_key,
                  RoundVoided.routing_key),
    "metrics": tuple(m.routing_key for m in PUBLIC_MESSAGES),
}


@dataclass(frozen=True)
class Topology:
    org: str

    @property
    def prefix(self) -> str:
        return f"wafl.{self.org}"

    @property
    def events(self) -> RabbitExchange:
        return RabbitExchange(f"{self.prefix}.events", type=ExchangeType.TOPIC, durable=True)

    @property
    def dead_letter_exchange(self) -> RabbitExchange:
        return RabbitExchange(f"{self.prefix}.dlx", type=ExchangeType.FANOUT, durable=True)

    @property
    def dead_letters(self) -> RabbitQueue:
        return RabbitQueue(f"{self.prefix}.dead-letters", durable=True, queue_type=QueueType.QUORUM)

    def _work_queue_arguments(self) -> QuorumQueueArgs:
        return {
            "x-dead-letter-exchange": self.dead_letter_exchange.name,
            "x-delivery-limit": DELIVERY_LIMIT,
        }

    @property
    def prover_jobs(self) -> RabbitQueue:
        return RabbitQueue(
            f"{self.prefix}.prover.jobs",
            durable=True,
            queue_type=QueueType.QUORUM,
            arguments=self._work_queue_arguments(),
        )

    def service_queue(self, service: str, routing_key: str) -> RabbitQueue:
        """The durable queue through which ``service`` consumes ``routing_key``."""
        return RabbitQueue(
            f"{self.prefix}.{service}.{routing_key}",
            durable=True,
            queue_type=QueueType.QUORUM,
            routing_key=routing_key,
            arguments=self._work_queue_arguments(),
        )

    def consumer_queues(self) -> list[RabbitQueue]:
        return [self.service_queue(s, key) for s, keys in SUBSCRIPTIONS.items() for key in keys]
