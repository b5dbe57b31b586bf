"""Helpers for tests against the real RabbitMQ and Redis: unique organisations, observing
queues, cleaning up."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from tools.localnet import delete_org_topology
from wafl.bus.service import Runtime, declare_topology
from wafl.bus.settings import DEFAULT_AMQP_URL, DEFAULT_REDIS_URL
from wafl.bus.topology import Topology

AMQP_URL = DEFAULT_AMQP_URL
REDIS_URL = DEFAULT_REDIS_URL


def counter(name: str, **labels: str) -> float:
    """A sample of the process's default Prometheus registry (0 when never incremented)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def unique_org() -> str:
    return "t" + uuid.uuid4().hex[:10]


@asynccontextmanager
async def amqp() -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(AMQP_URL)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@asynccontextmanager
async def serving(runtime: Runtime) -> AsyncIterator[Topology]:
    """A service's runtime (its handlers registered) consuming as its process would: the broker
    started and the organisation's topology declared. Its Redis client is closed afterwards."""
    try:
        async with runtime.broker:
            await runtime.broker.start()
            await declare_topology(runtime.broker, runtime.topology)
            yield runtime.topology
    finally:
        await runtime.redis.aclose()


async def publish_raw(runtime: Runtime, bodies: Sequence[bytes | dict[str, Any]], **where: Any) -> None:
    """Publish bodies as a peer (or an attacker) would: bytes as they are, a dict as JSON."""
    for item in bodies:
        payload = item if isinstance(item, bytes) else json.dumps(item).encode()
        await runtime.broker.publish(payload, content_type="application/json", **where)


async def bind_observer(channel: aio_pika.abc.AbstractChannel, exchange: str, pattern: str = "#") -> Any:
    """A temporary exclusive queue bound to ``exchange`` (declared if missing)."""
    ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
    await queue.bind(ex, routing_key=pattern)
    return queue


async def drain(
    queue: Any, expect: int, timeout: float = 30.0, settle: float = 0.5
) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Get messages until ``expect`` arrived (then wait ``settle`` more for extras) or timeout."""
    got: list[aio_pika.abc.AbstractIncomingMessage] = []
    deadline = time.monotonic() + timeout
    settle_until: float | None = None
    while time.monotonic() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            got.append(message)
            continue
        if len(got) >= expect:
            settle_until = settle_until or time.monotonic() + settle
            if time.monotonic() >= settle_until:
                break
        await asyncio.sleep(0.05)
    return got


def body(message: aio_pika.abc.AbstractIncomingMessage) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(message.body)
    return decoded


async def delete_org(org: str) -> None:
    """Remove an organisation's queues, exchanges and Redis keys (database 0) after a test."""
    await delete_org_topology(AMQP_URL, org)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"wafl:{org}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
