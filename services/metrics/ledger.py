"""What the canonical chain holds, as this organisation's chain watcher reported it, kept in Redis.

A counter cannot take back what a dropped branch added, so the chain's totals (rounds opened,
finalised and voided, updates accepted, members excluded) are counted here instead: one Redis
sorted set per kind, with the event's id ("<block hash>:<log index>") as member and its block as
score; an exclusion is one member per excluded address ("<event id>:<address>"). A repeated event
is the same member (counted once); after a reorganisation the events of the dropped blocks are
removed; the totals survive a restart of the metrics service.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from wafl.bus.messages import ChainEvent, ChainReorged, RoundFinalized, RoundOpened, RoundVoided, UpdateAccepted

KINDS: dict[type[ChainEvent], str] = {
    RoundOpened: "rounds_opened",
    RoundFinalized: "rounds_finalized",
    UpdateAccepted: "updates_accepted",
    RoundVoided: "rounds_voided",
}
EXCLUSIONS = "members_excluded"
"""The set of exclusions: one member per address a voided round excluded."""


@dataclass(frozen=True)
class ChainTotals:
    rounds_opened: int
    rounds_finalized: int
    updates_accepted: int
    rounds_voided: int
    members_excluded: int


class ChainLedger:
    def __init__(self, redis: aioredis.Redis, key_prefix: str) -> None:
        self.redis = redis
        self.key_prefix = key_prefix

    def _key(self, kind: str) -> str:
        return f"{self.key_prefix}:{kind}"

    async def add(self, event: ChainEvent) -> bool:
        """Record ``event``; False when it was recorded before (a repeat)."""
        kind = KINDS.get(type(event))
        if kind is None:
            return False
        if isinstance(event, RoundVoided) and event.excluded and event.missing:
            excluded = {f"{event.message_id}:{member.lower()}": event.block_number for member in event.missing}
            await self.redis.zadd(self._key(EXCLUSIONS), excluded)
        return bool(await self.redis.zadd(self._key(kind), {event.message_id: event.block_number}))

    async def drop(self, reorg: ChainReorged) -> int:
        """Remove the events of the blocks ``reorg`` dropped; returns how many."""
        dropped = {h.lower() for h in reorg.dropped_blocks}
        removed = 0
        for kind in (*KINDS.values(), EXCLUSIONS):
            key = self._key(kind)
            members = await self.redis.zrangebyscore(key, reorg.fork_block + 1, "+inf")
            gone = [m for m in members if _block_hash(m) in dropped]
            if gone:
                removed += int(await self.redis.zrem(key, *gone))
        return removed

    async def totals(self) -> ChainTotals:
        counts = {kind: int(await self.redis.zcard(self._key(kind))) for kind in (*KINDS.values(), EXCLUSIONS)}
        return ChainTotals(**counts)


def _block_hash(member: bytes | str) -> str:
    text = member.decode() if isinstance(member, bytes) else member
    return text.partition(":")[0].lower()
