"""What every WaFL service shares at run time: the broker (dead-letter and Prometheus
middlewares), the topology declared once, start-up checks, Redis state and idempotency keys."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import aio_pika
import redis.asyncio as aioredis
import structlog
from faststream import FastStream
from faststream.middlewares import AckPolicy
from faststream.rabbit import RabbitBroker
from faststream.rabbit.prometheus import RabbitPrometheusMiddleware
from faststream.rabbit.publisher import RabbitPublisher
from faststream.rabbit.subscriber import RabbitSubscriber
from faststream.specification import AsyncAPI
from prometheus_client import REGISTRY
from web3 import HTTPProvider, Web3

from wafl.bus.deadletter import BrokerRef, dead_letter_middleware
from wafl.bus.messages import Message
from wafl.bus.secrets import safe_url
from wafl.bus.settings import ServiceSettings
from wafl.bus.topology import SUBSCRIPTIONS, Topology
from wafl.chain.artifact import Deployment


class StartupError(RuntimeError):
    """The service cannot start; the message says what is wrong and how to fix it."""


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


@dataclass(frozen=True)
class ServiceSpec(Generic[SettingsT]):
    """One service as everything outside it sees it: the CLI (`wafl run <name>`), the simulation,
    compose, the Kubernetes manifests and the AsyncAPI documents all read it (services/__init__.py
    lists them)."""

    name: str
    settings: type[SettingsT]
    # The app on example settings, connecting nothing: what `make docs` renders as AsyncAPI.
    example_app: Callable[[], FastStream]
    # Start-up checks, then consume until stopped.
    serve: Callable[[SettingsT], Coroutine[Any, Any, None]]

    @property
    def title(self) -> str:
        return service_title(self.name)

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The public topics it consumes (the topology declares their queues)."""
        return SUBSCRIPTIONS.get(self.name, ())


@dataclass
class Runtime:
    """A service's connections, built from its settings."""

    service: str
    settings: ServiceSettings
    topology: Topology
    broker: RabbitBroker
    redis: aioredis.Redis = field(repr=False)

    def key(self, *parts: object) -> str:
        """A Redis key private to this organisation and service."""
        return ":".join(["wafl", self.settings.org, self.service, *(str(p) for p in parts)])

    def event_publisher(self, model: type[Message]) -> RabbitPublisher:
        """Publishes ``model`` events, persistent, on the organisation's event exchange."""
        return self.broker.publisher(
            exchange=self.topology.events, routing_key=model.routing_key, schema=model, persist=True,
            title=model.routing_key,
        )

    def event_subscriber(self, model: type[Message]) -> RabbitSubscriber:
        """Consumes ``model`` events from this service's own queue of them (declared by the topology)."""
        return self.broker.subscriber(
            self.topology.service_queue(self.service, model.routing_key), self.topology.events,
            title=f"{self.service}: {model.routing_key}",
        )


def make_broker(settings: ServiceSettings, service: str, graceful_timeout: float = 30.0) -> RabbitBroker:
    topology = Topology(settings.org)
    ref = BrokerRef()
    broker = RabbitBroker(
        settings.amqp_url.get_secret_value(),
        middlewares=[
            dead_letter_middleware(topology, service, ref),
            RabbitPrometheusMiddleware(registry=REGISTRY, app_name=service, metrics_prefix="faststream"),
        ],
        ack_policy=AckPolicy.NACK_ON_ERROR,
        graceful_timeout=graceful_timeout,
        logger=None,
        description=f"WaFL {service} of organisation {settings.org}",
    )
    ref.broker = broker
    return broker


def make_runtime(settings: ServiceSettings, service: str, graceful_timeout: float = 30.0) -> Runtime:
    return Runtime(
        service=service,
        settings=settings,
        topology=Topology(settings.org),
        broker=make_broker(settings, service, graceful_timeout),
        redis=aioredis.Redis.from_url(settings.redis_url.get_secret_value(), decode_responses=True),
    )


def service_title(service: str) -> str:
    return "WaFL " + service.replace("_", " ")


def make_app(runtime: Runtime) -> FastStream:
    app = FastStream(
        runtime.broker,
        logger=None,
        specification=AsyncAPI(
            title=service_title(runtime.service), version="1.0.0", description=f"WaFL {runtime.service}"
        ),
    )

    @app.after_startup
    async def _declare() -> None:
        await declare_topology(runtime.broker, runtime.topology)

    @app.after_shutdown
    async def _close() -> None:
        await runtime.redis.aclose()

    return app


def announce_start(app: FastStream, **fields: Any) -> None:
    """Log ``service_started`` once the app runs: connected, topology declared, signal handlers
    installed (a SIGTERM from then on is a graceful stop)."""

    @app.after_startup
    async def _announce() -> None:
        structlog.get_logger().info("service_started", **fields)


async def declare_topology(broker: RabbitBroker, topology: Topology) -> None:
    """Exchanges, dead-letter queue, prover work queue and every service's event queue."""
    events = await broker.declare_exchange(topology.events)
    dlx = await broker.declare_exchange(topology.dead_letter_exchange)
    dead_letters = await broker.declare_queue(topology.dead_letters)
    await dead_letters.bind(dlx)
    await broker.declare_queue(topology.prover_jobs)
    for queue in topology.consumer_queues():
        declared = await broker.declare_queue(queue)
        await declared.bind(events, routing_key=queue.routing_key)


# ---- start-up checks ------------------------------------------------------------------------


def load_deployment(settings: ServiceSettings) -> Deployment:
    try:
        return Deployment.load(settings.deployment)
    except FileNotFoundError as exc:
        raise StartupError(f"{exc} (WAFL_DEPLOYMENT)") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise StartupError(f"deployment artifact {settings.deployment} is not valid: {exc}") from None


def check_chain(settings: ServiceSettings, deployment: Deployment) -> Web3:
    w3 = Web3(HTTPProvider(settings.rpc_url, request_kwargs={"timeout": 10}))
    try:
        chain_id = w3.eth.chain_id
    except Exception as exc:
        # The exception's text repeats the URL (API keys in its path): only its kind is said.
        raise StartupError(f"no Ethereum node answers at {safe_url(settings.rpc_url)} (WAFL_RPC_URL): "
                           f"{type(exc).__name__}") from None
    if chain_id != deployment.chain_id:
        raise StartupError(
            f"the node at {safe_url(settings.rpc_url)} is chain {chain_id}, the deployment is on chain "
            f"{deployment.chain_id}"
        )
    if not w3.eth.get_code(Web3.to_checksum_address(deployment.address)):
        raise StartupError(
            f"no contract code at {deployment.address} on {safe_url(settings.rpc_url)}: wrong WAFL_DEPLOYMENT "
            "artifact or a reset chain"
        )
    aggregator = w3.eth.contract(address=Web3.to_checksum_address(deployment.address), abi=deployment.abi)
    on_chain = "0x" + bytes(aggregator.functions.verificationKeyHash().call()).hex()
    if on_chain != deployment.vk_hash:
        raise StartupError(
            f"the aggregator at {deployment.address} verifies with key {on_chain}, the deployment artifact "
            f"names {deployment.vk_hash}: wrong artifact"
        )
    return w3


async def check_broker(settings: ServiceSettings, timeout: float = 5.0) -> None:
    url = settings.amqp_url.get_secret_value()
    try:
        connection = await asyncio.wait_for(aio_pika.connect(url), timeout)
    except Exception as exc:
        raise StartupError(f"cannot reach RabbitMQ at {safe_url(url)} (WAFL_AMQP_URL): {type(exc).__name__}") from None
    await connection.close()


async def check_redis(settings: ServiceSettings, timeout: float = 5.0) -> None:
    url = settings.redis_url.get_secret_value()
    client: aioredis.Redis = aioredis.Redis.from_url(url, socket_connect_timeout=timeout)
    try:
        await cast(Awaitable[bool], client.ping())
    except Exception as exc:
        raise StartupError(f"cannot reach Redis at {safe_url(url)} (WAFL_REDIS_URL): {type(exc).__name__}") from None
    finally:
        await client.aclose()


async def preflight(settings: ServiceSettings, *, chain: bool = True) -> tuple[Deployment, Web3 | None]:
    """Every check a service needs before it consumes anything; StartupError on the first failure."""
    deployment = load_deployment(settings)
    w3 = await asyncio.to_thread(check_chain, settings, deployment) if chain else None
    await check_broker(settings)
    await check_redis(settings)
    return deployment, w3


DONE = "done"


async def run_once(
    redis: aioredis.Redis,
    key: str,
    work: Callable[[], Awaitable[None]],
    *,
    lease_seconds: int = 30,
    poll_seconds: float = 0.2,
) -> bool:
    """Run ``work`` once per key across redeliveries, concurrent consumers and replicas.

    The key holds a lease while the work runs (renewed by a heartbeat, so a long proof keeps
    it) and "done" afterwards. A duplicate arriving meanwhile waits: when the holder finishes it
    returns False; when the holder died, its lease expires and the duplicate does the work.
    A failure releases the lease so that a redelivery can retry.
    """
    token = uuid.uuid4().hex
    while True:
        if await redis.set(key, token, nx=True, ex=lease_seconds):
            break
        value = await redis.get(key)
        if value == DONE:
            return False
        await asyncio.sleep(poll_seconds)

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(lease_seconds / 3)
            await redis.set(key, token, xx=True, ex=lease_seconds)

    beat = asyncio.create_task(heartbeat())
    try:
        await work()
    except BaseException:
        beat.cancel()
        if await redis.get(key) == token:
            await redis.delete(key)
        raise
    beat.cancel()
    await redis.set(key, DONE)
    return True
