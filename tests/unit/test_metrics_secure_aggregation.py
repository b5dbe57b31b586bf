"""The metrics service's secure-aggregation figures (in-process broker and Redis, the real
handlers): voided rounds and exclusions are chain facts kept in the ledger, counted once, lowered
by a reorganisation and restored after a restart; the open round's set size follows round.opened."""

from __future__ import annotations

import asyncio

import fakeredis
from prometheus_client import CollectorRegistry

from services.metrics.book import MetricsBook
from services.metrics.handlers import MetricsState, register, restore_totals
from services.metrics.ledger import ChainLedger, ChainTotals
from tests.support.inmemory import ORG, chain_fields, publish, runtime, serving
from wafl.bus.messages import ChainReorged, MemberRejoined, Message, RoundFinalized, RoundOpened, RoundVoided

A, B, C = ("0x" + c * 40 for c in "abc")
OLD, NEW = "0x" + "0d" * 32, "0x" + "0e" * 32
GAUGES = ("wafl_chain_rounds_voided", "wafl_chain_members_excluded", "wafl_round_set_size")


def history() -> list[Message]:
    """Round 1 (A, B, C) voided without C, who is excluded and rejoins; round 2 (A, B) voided with
    both missing (nobody excluded) in block 6, which a reorganisation drops."""
    words = [1, 2]
    return [
        RoundOpened(org=ORG, round=1, deadline=10, global_words=words, members=[A, B, C], member_keys=[0] * 6,
                    **chain_fields(2)),
        RoundVoided(org=ORG, round=1, missing=[C], excluded=True, **chain_fields(4, 0)),
        RoundFinalized(org=ORG, round=1, accepted=0, global_words=words, **chain_fields(4, 1)),
        RoundOpened(org=ORG, round=2, deadline=20, global_words=words, members=[A, B], member_keys=[0] * 6,
                    **chain_fields(4, 2)),
        MemberRejoined(org=ORG, participant=C, from_round=3, **chain_fields(5)),
        RoundVoided(org=ORG, round=2, missing=[A, B], excluded=False, **chain_fields(6, 0, OLD)),
    ]


def values(registry: CollectorRegistry) -> dict[str, float | None]:
    return {name: registry.get_sample_value(name) for name in GAUGES}


def test_voided_rounds_and_exclusions_are_counted_once_and_follow_a_reorganisation() -> None:
    registry = CollectorRegistry()
    book = MetricsBook(registry)
    assert values(registry) == dict.fromkeys(GAUGES, 0.0)  # present from the start (plain deployments: 0)
    seen: list[dict[str, float | None]] = []

    async def scenario() -> None:
        rt = runtime("metrics")
        register(rt, MetricsState(book))
        async with serving(rt, chain_round=3) as broker:
            events = history()
            await publish(broker, rt, *events, events[1])  # a repeat of the exclusion: the same id
            seen.append(values(registry))
            await publish(broker, rt, ChainReorged(org=ORG, message_id=f"reorg:5:{OLD}", fork_block=5,
                                                   fork_hash="0x" + "05" * 32, depth=1, dropped_blocks=[OLD],
                                                   round=3))
            seen.append(values(registry))

    asyncio.run(scenario())
    before, after = seen
    assert before == {"wafl_chain_rounds_voided": 2, "wafl_chain_members_excluded": 1, "wafl_round_set_size": 2}
    assert after == {"wafl_chain_rounds_voided": 1, "wafl_chain_members_excluded": 1, "wafl_round_set_size": 2}


def test_the_ledger_counts_each_excluded_member_and_survives_a_restart() -> None:
    redis = fakeredis.FakeAsyncRedis()

    async def scenario() -> tuple[ChainTotals, ChainTotals, dict[str, float | None]]:
        ledger = ChainLedger(redis, "wafl:acme:metrics:ledger")
        two = RoundVoided(org=ORG, round=1, missing=[A, B], excluded=True, **chain_fields(4, 0, NEW))
        assert await ledger.add(two) and not await ledger.add(two)
        assert not await ledger.add(MemberRejoined(org=ORG, participant=A, from_round=2, **chain_fields(5, 0, NEW)))
        totals = await ledger.totals()
        await ledger.drop(ChainReorged(org=ORG, fork_block=3, fork_hash=OLD, depth=2, dropped_blocks=[NEW], round=2))
        dropped = await ledger.totals()
        await ledger.add(two)  # mined again: counted again, and read back by a restarted service
        restarted = CollectorRegistry()
        await restore_totals(ChainLedger(redis, "wafl:acme:metrics:ledger"), MetricsBook(restarted))
        return totals, dropped, values(restarted)

    totals, dropped, restored = asyncio.run(scenario())
    assert (totals.rounds_voided, totals.members_excluded) == (1, 2)
    assert (dropped.rounds_voided, dropped.members_excluded) == (0, 0)
    assert restored["wafl_chain_rounds_voided"] == 1 and restored["wafl_chain_members_excluded"] == 2


def test_the_set_size_is_the_open_round_s() -> None:
    registry = CollectorRegistry()
    book = MetricsBook(registry)
    book.record(RoundOpened(org=ORG, round=3, deadline=1, global_words=[1], members=[A, B], **chain_fields(9)))
    book.record(RoundOpened(org=ORG, round=2, deadline=1, global_words=[1], members=[A, B, C], **chain_fields(8)))
    assert registry.get_sample_value("wafl_round_set_size") == 2  # a late event of an older round changes nothing
    book.record(RoundOpened(org=ORG, round=4, deadline=1, global_words=[1], **chain_fields(10)))
    assert registry.get_sample_value("wafl_round_set_size") == 0  # a plain round: no set
