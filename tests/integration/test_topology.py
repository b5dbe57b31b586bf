"""The topology is declared once: every service declares every consumer queue, so an event
published before its consumer first starts waits for it (real RabbitMQ)."""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
from faststream.rabbit import RabbitBroker

from tools.localnet import create_vhost, rabbitmqctl
from wafl.bus.messages import RoundOpened, encode
from wafl.bus.service import declare_topology
from wafl.bus.topology import Topology


def test_an_event_published_before_its_consumer_starts_is_kept() -> None:
    vhost = f"wafl-topology-{uuid.uuid4().hex[:6]}"
    url = create_vhost(vhost)
    try:
        asyncio.run(_publish_before_consumers(url))
    finally:
        rabbitmqctl("delete_vhost", vhost)


async def _publish_before_consumers(url: str) -> None:
    topology = Topology("org-a")
    # What the chain watcher does at start-up, before any trainer ever ran.
    async with RabbitBroker(url) as broker:
        await declare_topology(broker, topology)
        event = RoundOpened(org="org-a", round=1, deadline=10, global_words=[1], message_id="0xab:0",
                            block_number=1, block_hash="0x" + "00" * 32, tx_hash="0x" + "11" * 32, log_index=0)
        await broker.publish(event, exchange=topology.events, routing_key=RoundOpened.routing_key, persist=True)
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(topology.service_queue("trainer", RoundOpened.routing_key).name)
        message = await queue.get(timeout=5)
        assert message is not None
        assert message.body == encode(event)
        await message.ack()
        # Metrics gets its own copy; the prover's private queue gets none.
        metrics = await channel.get_queue(topology.service_queue("metrics", RoundOpened.routing_key).name)
        assert (await metrics.get(timeout=5)) is not None
        jobs = await channel.get_queue(topology.prover_jobs.name)
        assert await jobs.get(fail=False) is None
    finally:
        await connection.close()
