"""The services' real handlers on an in-process broker (FastStream's TestRabbitBroker) and Redis
(fakeredis), as `wafl simulate` runs them: handler tests that need no server. The deployment
artifact they read has the events IWaflAggregator.sol declares (no contract is built)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import fakeredis
from faststream.rabbit import RabbitBroker, RabbitQueue, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage
from web3 import Web3

from wafl.bus.chainstate import write_state
from wafl.bus.messages import Message
from wafl.bus.service import Runtime, make_broker
from wafl.bus.settings import ServiceSettings
from wafl.bus.topology import DEAD_LETTER_REASON, Topology
from wafl.chain.artifact import Deployment
from wafl.core.config import load_config

ORG = "acme"
INTERFACE = Path(__file__).resolve().parents[2] / "contracts" / "src" / "IWaflAggregator.sol"
ADDRESS = Web3.to_checksum_address("0x" + "5a" * 20)


def interface_events() -> list[dict[str, Any]]:
    """The events of IWaflAggregator.sol as ABI entries."""
    abi = []
    for name, params in re.findall(r"event (\w+)\(([^)]*)\);", INTERFACE.read_text()):
        inputs = []
        for param in params.split(","):
            words = param.split()
            inputs.append({"type": words[0], "indexed": "indexed" in words, "name": words[-1]})
        abi.append({"type": "event", "name": name, "anonymous": False, "inputs": inputs})
    return abi


EVENTS = {event["name"]: event for event in interface_events()}


def deployment(events: Sequence[str] = tuple(EVENTS), functions: Sequence[dict[str, Any]] = ()) -> Deployment:
    """A secure-aggregation artifact (iris-4x3-b3-secagg) whose ABI has ``events`` and ``functions``."""
    return Deployment(chain_id=31337, address=ADDRESS, verifier_address=ADDRESS, start_block=1,
                      abi=[*(EVENTS[name] for name in events), *functions], verifier_abi=[],
                      config=load_config("iris-4x3-b3-secagg").model_dump(mode="json"), quorum=3, round_duration=60,
                      vk_hash="0x" + "00" * 32, keys_kind="development", circuit_sha256="", transcript_sha256=None)


def chain_fields(block: int = 7, log_index: int = 0, block_hash: str | None = None) -> dict[str, Any]:
    """The ChainEvent fields of a log at (block, log index), in block ``block_hash`` (default: one hash
    per block number)."""
    block_hash = block_hash or "0x" + f"{block % 256:02x}" * 32
    return {"block_number": block, "block_hash": block_hash, "tx_hash": "0x" + "cd" * 32, "log_index": log_index,
            "message_id": f"{block_hash}:{log_index}"}


def runtime(service: str, settings: ServiceSettings | None = None) -> Runtime:
    """A service's runtime on a fresh broker and a fresh in-process Redis."""
    settings = settings or ServiceSettings(org=ORG)
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    return Runtime(service, settings, Topology(settings.org), make_broker(settings, service), redis)


class Observer:
    """What passes on the organisation's topics (and its prover work queue), as raw bodies, and
    the reasons of what its services dead-letter."""

    def __init__(self, broker: RabbitBroker, topology: Topology, topics: Sequence[str], jobs: bool = False) -> None:
        self.seen: dict[str, list[bytes]] = {topic: [] for topic in topics}
        self.dead: list[str] = []
        for topic in topics:
            queue = RabbitQueue(f"{topology.prefix}.observer.{topic}", auto_delete=True, routing_key=topic)
            broker.subscriber(queue, topology.events, title=f"observer: {topic}")(self._sink(topic))
        if jobs:
            self.seen["prover.job"] = []
            broker.subscriber(topology.prover_jobs, title="observer: jobs")(self._sink("prover.job"))
        dead = RabbitQueue(f"{topology.prefix}.observer.dead-letters", auto_delete=True)
        broker.subscriber(dead, topology.dead_letter_exchange, title="observer: dead letters")(self._dead)

    async def _dead(self, message: RabbitMessage) -> None:
        self.dead.append(str(message.headers.get(DEAD_LETTER_REASON, "")))

    def _sink(self, topic: str) -> Any:
        async def handle(message: RabbitMessage) -> None:
            self.seen[topic].append(message.body)

        return handle

    def of(self, model: type[Message]) -> list[Any]:
        return [model.model_validate_json(body) for body in self.seen[model.routing_key]]


@asynccontextmanager
async def serving(rt: Runtime, chain_round: int | None = None) -> AsyncIterator[RabbitBroker]:
    """The runtime's broker started in process; ``chain_round``: what the chain watcher records
    before it publishes (the round open on chain)."""
    if chain_round is not None:
        await write_state(rt.redis, rt.settings.org, chain_round, 0, 1)
    try:
        async with TestRabbitBroker(rt.broker) as broker:
            yield broker
    finally:
        await rt.redis.aclose()


async def publish(broker: RabbitBroker, rt: Runtime, *events: Message) -> None:
    for event in events:
        await broker.publish(event, exchange=rt.topology.events, routing_key=event.routing_key)
