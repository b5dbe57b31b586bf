"""`wafl simulate`'s arguments and their checks, apart from the simulation itself: building the
`wafl` parser (every command's start) imports none of torch, web3, scikit-learn or rich, and bad
arguments are refused before the simulation's seconds of imports."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

from tools.cli import connect, writable
from tools.errors import UsageError
from wafl.bus.secrets import register_url, safe_url
from wafl.core.config import load_config, named_configs
from wafl.data.datasets import DATASETS

DEFAULT_CONFIG = "wine-13x3-b16"
SECURE_SUFFIX = "-secagg"  # the bundled secure-aggregation twin of a configuration
DEFAULT_ORGS = 4
DEFAULT_ROUNDS = 8  # the default configuration has converged by then (see the README)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"model configuration ({', '.join(named_configs())})")
    p.add_argument("--orgs", type=int, default=DEFAULT_ORGS, help="organisations (ignored with --data)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    p.add_argument("--dataset", choices=sorted(DATASETS), help="bundled dataset (default: the configuration's)")
    p.add_argument("--alpha", type=float, help="non-IID split: Dirichlet concentration per class (default: IID)")
    p.add_argument("--data", type=Path, nargs="+", metavar="FILE",
                   help="one CSV or NPZ file per organisation, instead of a bundled dataset")
    p.add_argument("--malicious", type=int, default=0, metavar="K", help="organisations that submit poisoned updates")
    p.add_argument("--attack", choices=["scaled", "random"], default="scaled", help="the poisoned weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("wafl-simulation"), help="results.json and results.png go here")
    p.add_argument("--amqp-url", help="a real RabbitMQ instead of the in-process broker")
    p.add_argument("--redis-url", help="a real Redis instead of the in-process stand-in")
    p.add_argument("--rpc-url", help="a running development chain instead of a new anvil (anvil or Hardhat's node: "
                                     "accounts are funded by their cheat codes; keys kept in --out/keys)")
    p.add_argument("--round-timeout", type=float, default=300.0, help="seconds a round may take")
    p.add_argument("--secure-aggregation", action="store_true",
                   help="masked updates (the configuration's -secagg twin unless it masks already): the chain "
                        "sees only the round's sum")
    p.add_argument("--verbose", action="store_true", help="the services' own logs too")


def check_arguments(args: argparse.Namespace) -> None:
    """UsageError (ConfigError) for arguments the simulation cannot run with: the configuration, the
    numbers, --out, and the servers named, which must answer. The data files are the simulation's."""
    cfg = load_config(config_name(args))
    if cfg.secure_aggregation and args.malicious:
        raise UsageError("--malicious needs the plain mode: with secure aggregation a round closes only when every "
                         "member's update is in, so a rejected one would void every round")
    if args.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    if args.round_timeout <= 0:
        raise UsageError("--round-timeout must be a positive number of seconds")
    if args.alpha is not None and args.alpha <= 0:
        raise UsageError("--alpha must be positive")
    if args.data:
        orgs = len(args.data)
        if orgs > cfg.max_participants:
            raise UsageError(f"{orgs} organisations; {cfg.name} has headroom for {cfg.max_participants}")
    else:
        orgs = args.orgs
        if not 2 <= orgs <= cfg.max_participants:
            raise UsageError(f"--orgs must be between 2 and {cfg.max_participants} (the lane headroom of {cfg.name})")
        if (args.dataset or cfg.dataset) is None:
            raise UsageError(f"configuration {cfg.name} names no dataset: pass --dataset or --data")
    if not 0 <= args.malicious < orgs:
        raise UsageError(f"--malicious must leave at least one honest organisation (0 to {orgs - 1})")
    writable(args.out, "--out", directory=True)
    if args.rpc_url:
        connect(args.rpc_url)
    asyncio.run(_check_brokers(args.amqp_url, args.redis_url))


def config_name(args: argparse.Namespace) -> str:
    """--config, or with --secure-aggregation its bundled -secagg twin (a configuration that masks
    already is taken as it is)."""
    name = str(args.config)
    if not getattr(args, "secure_aggregation", False) or load_config(name).secure_aggregation:
        return name
    twin = name + SECURE_SUFFIX
    if twin not in named_configs():
        raise UsageError(f"--secure-aggregation: {name} has no bundled {twin}; give a configuration with "
                         "secure_aggregation: true")
    return twin


async def _check_brokers(amqp_url: str | None, redis_url: str | None) -> None:
    if amqp_url:
        from tools.tail import connect_broker

        connection = await connect_broker(amqp_url, flag="--amqp-url")
        await connection.close()
    if redis_url:
        import redis.asyncio as aioredis

        register_url(redis_url)
        if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
            raise UsageError(f"--redis-url {safe_url(redis_url)} is not a Redis URL, e.g. redis://127.0.0.1:6379/0")
        client: aioredis.Redis = aioredis.Redis.from_url(redis_url, socket_connect_timeout=5)
        try:
            await cast(Awaitable[bool], client.ping())
        except Exception as exc:  # refused, a password, not Redis at all: check --redis-url, whichever
            raise UsageError(f"cannot reach Redis at {safe_url(redis_url)} ({type(exc).__name__}): "
                             "check --redis-url") from None
        finally:
            await client.aclose()
