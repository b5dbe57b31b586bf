"""A whole federation on this machine, every service a separate OS process (`wafl run ...`),
against real RabbitMQ and Redis servers and a local chain: anvil by default, or Hardhat's node
(`node="hardhat"`), either mining a block every second. Used by the federation and fault tests
and by `wafl bench pipeline`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aio_pika
import redis
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from services import SERVICE_NAMES
from wafl.bus.messages import PUBLIC_MESSAGES
from wafl.bus.settings import DEFAULT_AMQP_URL, DEFAULT_REDIS_URL, with_path
from wafl.bus.topology import Topology
from wafl.chain.aggregator import AggregatorClient
from wafl.chain.anvil import Anvil
from wafl.chain.artifact import Deployment
from wafl.chain.deploy import deploy
from wafl.chain.hardhat import HardhatNode
from wafl.chain.nodes import LocalNode, fund
from wafl.core.config import ModelConfig
from wafl.zk.keys import KeySet
from wafl.zk.masking import SECRET_ENV, generate_secret, public_key, read_secret, write_secret


def rabbitmqctl(*args: str) -> str:
    proc = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def create_vhost(name: str, user: str = "guest") -> str:
    """A RabbitMQ virtual host for one federation; returns its AMQP URL."""
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    return with_path(DEFAULT_AMQP_URL, name)


def close_vhost_connections(vhost: str, reason: str = "closed by WaFL fault test") -> int:
    """Drop every client connection of one virtual host (the broker stays up)."""
    closed = 0
    for line in rabbitmqctl("list_connections", "pid", "vhost").splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1] == vhost:
            rabbitmqctl("close_connection", parts[0], reason)
            closed += 1
    return closed


@dataclass
class ServiceProcess:
    org: str
    service: str
    replica: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    expected_exit: bool = False  # a test stopped it on purpose: not a crash

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def metrics_port(self) -> int:
        """The port the service serves /metrics on, as its start-up line says. Services pick a free
        one themselves: a port chosen here could be taken by another process before they bind it."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                if '"service_started"' in line:
                    return int(json.loads(line)["metrics_port"])
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.org}/{self.service} did not start:\n{self.log()[-3000:]}")


@dataclass
class Org:
    name: str
    index: int
    account: LocalAccount
    key_file: Path
    redis_db: int
    processes: list[ServiceProcess] = field(default_factory=list)
    masking_key_file: Path | None = None  # secure aggregation: the organisation's masking secret

    @property
    def redis_url(self) -> str:
        return with_path(DEFAULT_REDIS_URL, self.redis_db)

    def env(
        self, base: dict[str, str], amqp_url: str, deployment_path: Path, rpc_url: str, count: int, dataset: str
    ) -> dict[str, str]:
        return {
            **base,
            "WAFL_ORG": self.name,
            "WAFL_AMQP_URL": amqp_url,
            "WAFL_REDIS_URL": self.redis_url,
            "WAFL_RPC_URL": rpc_url,
            "WAFL_DEPLOYMENT": str(deployment_path),
            "WAFL_PARTICIPANT": self.account.address,
            "WAFL_KEY_FILE": str(self.key_file),
            "WAFL_DATASET": dataset,
            "WAFL_ORG_INDEX": str(self.index),
            "WAFL_ORG_COUNT": str(count),
            "WAFL_LOG_LEVEL": "info",
            **({SECRET_ENV: str(self.masking_key_file)} if self.masking_key_file else {}),
        }

    def metrics_port(self, service: str) -> int:
        return next(p.metrics_port for p in self.processes if p.service == service)


@dataclass
class Federation:
    cfg: ModelConfig
    workdir: Path
    node: LocalNode
    w3: Web3
    admin: LocalAccount
    deployment: Deployment
    deployment_path: Path
    orgs: list[Org]
    vhost: str
    amqp_url: str
    keys: KeySet | None = None

    @property
    def anvil(self) -> LocalNode:
        """The chain's node (named for the first node it ran on; anvil unless `node` said otherwise)."""
        return self.node

    @property
    def aggregator(self) -> AggregatorClient:
        return AggregatorClient(self.w3, self.deployment)

    def start(
        self, org: Org, service: str, replica: int = 0, extra_env: dict[str, str] | None = None
    ) -> ServiceProcess:
        env = org.env(dict(os.environ), self.amqp_url, self.deployment_path, self.node.url, len(self.orgs),
                      self.cfg.dataset or "")
        env["WAFL_METRICS_PORT"] = "0"
        if self.keys is not None:
            env["WAFL_KEYS"] = str(self.keys.directory)
        env.update(extra_env or {})
        log_path = self.workdir / f"{org.name}-{service}-{replica}.log"
        handle = log_path.open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "run", service], env=env, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process = ServiceProcess(org.name, service, replica, proc, log_path)
        org.processes.append(process)
        return process

    def start_all(self, prover_replicas: dict[str, int] | None = None) -> None:
        for org in self.orgs:
            for service in SERVICE_NAMES:
                replicas = (prover_replicas or {}).get(org.name, 1) if service == "prover" else 1
                for replica in range(replicas):
                    self.start(org, service, replica)

    def wait_for_round(self, round_id: int, timeout: float) -> None:
        """Until the contract is past ``round_id`` (it was finalised)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.aggregator.current_round().round > round_id:
                return
            self.assert_alive()
            time.sleep(0.5)
        raise TimeoutError(f"round {round_id} not finalised within {timeout}s; logs:\n{self.log_tails()}")

    def assert_alive(self) -> None:
        dead = [p for org in self.orgs for p in org.processes if p.proc.poll() is not None and p.proc.returncode != 0
                and not p.expected_exit]
        if dead:
            raise AssertionError("service exited: " + ", ".join(
                f"{p.org}/{p.service}#{p.replica} ({p.proc.returncode}):\n{p.log()[-3000:]}" for p in dead))

    def log_tails(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {p.org}/{p.service}#{p.replica}\n{p.log()[-chars:]}"
                         for org in self.orgs for p in org.processes)

    def stop(self, process: ServiceProcess, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        process.proc.send_signal(sig)
        try:
            return process.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.proc.pid, signal.SIGKILL)
            return process.proc.wait()

    def stop_all(self) -> None:
        for org in self.orgs:
            for p in org.processes:
                if p.proc.poll() is None:
                    p.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for org in self.orgs:
            for p in org.processes:
                try:
                    p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    os.killpg(p.proc.pid, signal.SIGKILL)
                    p.proc.wait()


# The local chains a federation runs on: anvil, and Hardhat's node as a second, independent EVM.
NodeName = Literal["anvil", "hardhat"]
NODES: dict[NodeName, type[LocalNode]] = {"anvil": Anvil, "hardhat": HardhatNode}


@contextmanager
def federation(cfg: ModelConfig, workdir: Path, org_count: int = 3, round_duration: int = 3600,
               quorum: int | None = None, node_args: list[str] | None = None, keys: KeySet | None = None,
               attest: bool = True, node: NodeName = "anvil") -> Iterator[Federation]:
    """Chain, deployment and keys for ``org_count`` organisations (services are started by the caller).

    `node`: the chain, anvil or Hardhat's node, with `node_args` added to its command line.
    `keys`: the key set to deploy and prove with (default: this machine's development keys).
    `attest`: the organisations attest the keys at deployment; else the caller has them attest
    (`wafl attest`), and round 1 opens with the last attestation.
    """
    tag = uuid.uuid4().hex[:6]
    # Interval mining: confirmations need blocks even when nobody sends a transaction.
    with NODES[node](block_time=1, extra_args=node_args) as chain:
        w3 = chain.web3()
        admin: LocalAccount = Account.create()
        fund(w3, admin.address)
        orgs = []
        for index in range(org_count):
            account: LocalAccount = Account.create()
            fund(w3, account.address)
            key_file = workdir / f"org{index}.key"
            key_file.write_text(account.key.hex())
            key_file.chmod(0o600)
            org = Org(f"f{tag}o{index}", index, account, key_file, redis_db=1 + index)
            if cfg.secure_aggregation:
                org.masking_key_file = workdir / f"org{index}.masking"
                write_secret(org.masking_key_file, generate_secret())
            orgs.append(org)
        participants: list[str | LocalAccount] = [o.account if attest else o.account.address for o in orgs]
        masking_keys: dict[str, tuple[int, int]] = {o.account.address: public_key(read_secret(o.masking_key_file))
                        for o in orgs if o.masking_key_file is not None}
        deployment = deploy(w3, admin, cfg, quorum=quorum or org_count,
                            round_duration=round_duration, participants=participants, keys=keys,
                            masking_keys=masking_keys)
        deployment_path = workdir / "deployment.json"
        deployment.save(deployment_path)
        vhost = f"wafl-{tag}"
        amqp_url = create_vhost(vhost)
        fed = Federation(cfg, workdir, chain, w3, admin, deployment, deployment_path, orgs, vhost, amqp_url, keys)
        try:
            yield fed
        finally:
            fed.stop_all()
            rabbitmqctl("delete_vhost", vhost)
            _cleanup(orgs)


def _cleanup(orgs: list[Org]) -> None:
    for org in orgs:
        client = redis.Redis.from_url(org.redis_url)
        keys = list(client.scan_iter(match=f"wafl:{org.name}:*"))
        if keys:
            client.delete(*keys)
        client.close()


async def delete_org_topology(amqp_url: str, org: str) -> None:
    """Delete an organisation's exchanges and queues (deleting a missing one is not an error)."""
    topology = Topology(org)
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queues = [topology.prover_jobs.name, topology.dead_letters.name]
        queues += [topology.service_queue(s, m.routing_key).name for s in SERVICE_NAMES for m in PUBLIC_MESSAGES]
        for name in queues:
            await channel.queue_delete(name)
        for name in (topology.events.name, topology.dead_letter_exchange.name):
            await channel.exchange_delete(name)
    finally:
        await connection.close()
