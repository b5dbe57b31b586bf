"""The chain watcher's loop: poll the chain, publish confirmed events, checkpoint in Redis.

A reorganisation deeper than the confirmation depth is said once (``chain.reorged``, published
before the cursor is rewound, with an id derived from the fork, so a crash in between repeats the
same message), and the deadline ticks of the dropped branch are forgotten so that a round whose
closing was dropped is closed again."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass

import structlog
from faststream.rabbit.publisher import RabbitPublisher

from services.chain_watcher.follower import ChainFollower, Cursor, Fork, Head
from wafl.bus.chainstate import write_state
from wafl.bus.messages import (
    ChainEvent,
    ChainReorged,
    MemberRejoined,
    RoundDeadline,
    RoundFinalized,
    RoundOpened,
    RoundVoided,
    UpdateAccepted,
)
from wafl.bus.service import Runtime

SERVICE = "chain_watcher"
log = structlog.get_logger()


@dataclass
class WatcherState:
    follower: ChainFollower | None = None
    poll_interval: float = 1.0


class Watcher:
    def __init__(self, runtime: Runtime, state: WatcherState) -> None:
        self.runtime = runtime
        self.state = state
        self.publishers: dict[str, RabbitPublisher] = {
            model.routing_key: runtime.event_publisher(model)
            for model in (RoundOpened, UpdateAccepted, RoundVoided, RoundFinalized, MemberRejoined, RoundDeadline,
                          ChainReorged)
        }
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # ---- cursor in Redis ----------------------------------------------------------------------
    async def load_cursor(self, follower: ChainFollower) -> Cursor:
        raw = await self.runtime.redis.get(self.runtime.key("cursor"))
        if raw is None:
            return Cursor(scanned_to=follower.start_block - 1)
        data = json.loads(raw)
        return Cursor(data["scanned_to"], tuple(data["last_published"]),
                      {int(k): v for k, v in data["hashes"].items()})

    async def save_cursor(self, cursor: Cursor) -> None:
        data = {"scanned_to": cursor.scanned_to, "last_published": list(cursor.last_published),
                "hashes": {str(k): v for k, v in cursor.hashes.items()}}
        await self.runtime.redis.set(self.runtime.key("cursor"), json.dumps(data))

    # ---- one poll ---------------------------------------------------------------------------------
    async def poll_once(self) -> int:
        follower = self.state.follower
        assert follower is not None
        org = self.runtime.settings.org
        cursor = await self.load_cursor(follower)
        fork = await asyncio.to_thread(follower.find_fork, cursor)
        head = await asyncio.to_thread(follower.head)
        # Recorded before any round.opened goes out, so that consumers never see a round ahead of it.
        await write_state(self.runtime.redis, org, head.round, head.deadline, head.number)
        if fork is not None:
            await self._reorged(cursor, fork, head)
        events, safe, hashes = await asyncio.to_thread(follower.confirmed_events, cursor, head)
        published = 0
        for event in events:
            position = (event.block_number, event.log_index)
            if position <= cursor.last_published:
                continue  # published before a restart
            await self.publishers[event.routing_key].publish(event)
            cursor.last_published = position
            await self.save_cursor(cursor)
            published += 1
            log.info("event_published", topic=event.routing_key, block=event.block_number,
                     round=getattr(event, "round", None))
            if isinstance(event, RoundVoided):
                log.warning("round_voided", round=event.round, missing=event.missing, excluded=event.excluded)
        if safe > cursor.scanned_to:
            follower.remember(cursor, safe, hashes)
            await self.save_cursor(cursor)
        await self._deadline_tick(head)
        return published

    async def _reorged(self, cursor: Cursor, fork: Fork, head: Head) -> None:
        event = ChainReorged(
            org=self.runtime.settings.org, message_id=f"reorg:{fork.block}:{fork.old_tip}", fork_block=fork.block,
            fork_hash=fork.hash, depth=fork.depth, dropped_blocks=fork.dropped, round=head.round,
        )
        await self.publishers[ChainReorged.routing_key].publish(event)
        log.warning("chain_reorged", fork_block=fork.block, depth=fork.depth, round=head.round)
        async for key in self.runtime.redis.scan_iter(match=self.runtime.key("deadline", "*")):
            await self.runtime.redis.delete(key)
        ChainFollower.rewind(cursor, fork)
        await self.save_cursor(cursor)

    async def _deadline_tick(self, head: Head) -> None:
        if head.timestamp < head.deadline:
            return
        key = self.runtime.key("deadline", head.round)
        if await self.runtime.redis.set(key, head.number, nx=True):
            tick = RoundDeadline(org=self.runtime.settings.org, round=head.round, deadline=head.deadline,
                                 message_id=f"deadline:{head.round}:{head.number}")
            await self.publishers[RoundDeadline.routing_key].publish(tick)
            log.info("deadline_passed", round=head.round)

    # ---- loop -------------------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the RPC or broker is away: keep the cursor, try again
                log.warning("poll_failed", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.state.poll_interval)

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self.run())

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop polling. The flag ends the loop even if a cancellation is absorbed on the way (a
        handler running inline under the in-process broker may swallow it)."""
        self._stopping = True
        task = self._task
        if task is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout
        while not task.done() and asyncio.get_running_loop().time() < deadline:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if task.done() and not task.cancelled():
            with contextlib.suppress(Exception):
                task.result()


def register(runtime: Runtime, state: WatcherState) -> Watcher:
    return Watcher(runtime, state)


__all__ = ["SERVICE", "ChainEvent", "Watcher", "WatcherState", "register"]
