"""The chain as the organisation's chain_watcher last saw it, shared through its Redis.

Only the chain_watcher and the submitter talk to the chain RPC (the Kubernetes NetworkPolicies
allow no one else). The other services tell a current round from a stale or unknown one with
this record, which the watcher writes on every poll and before it publishes a round.opened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from wafl.bus.deadletter import RejectMessage


class ChainStateUnknownError(RuntimeError):
    """The chain_watcher has not reported yet: a transient condition, retried by redelivery."""


@dataclass(frozen=True)
class ChainState:
    round: int
    deadline: int
    block: int
    updated_at: float


def state_key(org: str) -> str:
    return f"wafl:{org}:chain:state"


async def write_state(redis: aioredis.Redis, org: str, round_id: int, deadline: int, block: int) -> None:
    mapping: dict[str, Any] = {"round": round_id, "deadline": deadline, "block": block, "updated_at": time.time()}
    await cast(Any, redis.hset(state_key(org), mapping=mapping))


async def read_state(redis: aioredis.Redis, org: str) -> ChainState | None:
    raw: dict[Any, Any] = await cast(Any, redis.hgetall(state_key(org)))
    if not raw:
        return None
    value = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in raw.items()}
    return ChainState(int(value["round"]), int(value["deadline"]), int(value["block"]), float(value["updated_at"]))


async def classify_round(redis: aioredis.Redis, org: str, round_id: int) -> bool:
    """True for the current round, False for a past one; RejectMessage for an unknown round."""
    state = await read_state(redis, org)
    if state is None:
        raise ChainStateUnknownError("the chain_watcher has not reported the chain's state yet")
    if round_id > state.round:
        raise RejectMessage(f"unknown round {round_id}: the contract is at round {state.round}")
    return round_id == state.round
