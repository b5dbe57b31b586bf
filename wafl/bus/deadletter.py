"""Dead-lettering with a reason: a message that cannot be processed is never retried forever and
never silently dropped (docs/design.md section 7).

The middleware sits around every handler:
- a body that does not validate (malformed JSON, wrong schema version, missing field) and a
  ``RejectMessage`` raised by a handler (e.g. an unknown round) are published to the
  organisation's dead-letter exchange with the reason in the headers, then acknowledged;
- any other exception is a transient failure: the message is returned to its queue, and once it
  has been delivered DELIVERY_LIMIT times it is dead-lettered with the last error as reason.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from faststream import BaseMiddleware
from faststream.message import StreamMessage
from faststream.rabbit import RabbitBroker
from pydantic import ValidationError

from wafl.bus.observability import DEAD_LETTERS
from wafl.bus.secrets import redact
from wafl.bus.topology import (
    DEAD_LETTER_QUEUE,
    DEAD_LETTER_REASON,
    DEAD_LETTER_ROUTING_KEY,
    DEAD_LETTER_SERVICE,
    DELIVERY_LIMIT,
    Topology,
)

log = structlog.get_logger()


class RejectMessage(Exception):
    """A well-formed message that cannot be processed (unknown round, wrong participant, ...)."""


def validation_reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        location = ".".join(str(p) for p in error["loc"][1:]) or "body"
        parts.append(f"{location}: {error['msg']}")
    return "invalid message: " + "; ".join(parts)


class BrokerRef:
    """The broker, set once it exists (middlewares are given to its constructor)."""

    broker: RabbitBroker | None = None


def dead_letter_middleware(topology: Topology, service: str, ref: BrokerRef) -> type[BaseMiddleware]:
    class DeadLetterMiddleware(BaseMiddleware):
        async def consume_scope(
            self, call_next: Callable[[StreamMessage[Any]], Awaitable[Any]], msg: StreamMessage[Any]
        ) -> Any:
            try:
                return await call_next(msg)
            except ValidationError as exc:
                kind, reason = "invalid", validation_reason(exc)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                kind, reason = "invalid", f"invalid message: body is not JSON ({exc.__class__.__name__}: {exc})"
            except RejectMessage as exc:
                kind, reason = "rejected", f"rejected: {exc}"
            except Exception as exc:
                deliveries = int(msg.headers.get("x-delivery-count", 0) or 0) + 1
                if deliveries < DELIVERY_LIMIT:
                    log.warning("handler_failed_will_retry", error=redact(repr(exc)), delivery=deliveries)
                    raise
                kind, reason = "failed", f"failed {deliveries} times: {type(exc).__name__}: {exc}"
            # The subscriber's own queue: one broker may carry several services (wafl simulate).
            handler = self.context.get("handler_")
            queue = getattr(getattr(handler, "queue", None), "name", None)
            await publish_dead_letter(ref, topology, service, msg, kind, redact(reason), queue)
            return None

    return DeadLetterMiddleware


async def publish_dead_letter(
    ref: BrokerRef, topology: Topology, service: str, msg: StreamMessage[Any], kind: str, reason: str,
    queue: str | None = None,
) -> None:
    if ref.broker is None:
        raise RuntimeError("dead-letter middleware used before its broker was set")
    raw = msg.raw_message
    routing_key = str(getattr(raw, "routing_key", "") or "")
    exchange = str(getattr(raw, "exchange", "") or "")
    # Work queues are reached through the default exchange (routing key = queue name); topic
    # consumers have one queue per (service, routing key).
    consumer_queue = routing_key if not exchange else topology.service_queue(service, routing_key).name
    if queue is not None and queue.startswith(f"{topology.prefix}."):
        consumer_queue = queue
        service = queue.removeprefix(f"{topology.prefix}.").split(".")[0]
    await ref.broker.publish(
        msg.body,
        exchange=topology.dead_letter_exchange,
        headers={
            DEAD_LETTER_REASON: reason,
            DEAD_LETTER_QUEUE: consumer_queue,
            DEAD_LETTER_SERVICE: service,
            DEAD_LETTER_ROUTING_KEY: routing_key,
        },
        message_id=msg.message_id,
        content_type=msg.content_type,
        persist=True,
    )
    DEAD_LETTERS.labels(service=service, queue=consumer_queue, kind=kind).inc()
    log.warning("message_dead_lettered", queue=consumer_queue, kind=kind, reason=reason, message_id=msg.message_id)

