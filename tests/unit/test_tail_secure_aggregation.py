"""`wafl tail`'s one-line renderings of secure aggregation's events (VOIDED, REJOINED), and the
messages they come from: public topics with their routing keys."""

from __future__ import annotations

from tests.support.inmemory import ORG, chain_fields
from tools.tail import format_line
from wafl.bus.messages import (
    BY_ROUTING_KEY,
    PUBLIC_MESSAGES,
    MemberRejoined,
    Message,
    ProverJob,
    RoundOpened,
    RoundVoided,
)

A, B = "0x" + "12" * 20, "0x" + "34" * 20


def line(message: Message) -> str:
    return format_line(message.routing_key, message.model_dump_json().encode(), {}, raw=False, dead_letter=False)


def test_voided_rounds_and_rejoins_are_one_line_each() -> None:
    excluded = line(RoundVoided(org=ORG, round=4, missing=[A, B], excluded=True, **chain_fields()))
    assert "round.voided" in excluded and "round 4" in excluded
    assert "VOIDED: model unchanged, missing 0x1212…1212, 0x3434…3434 (excluded until they rejoin)" in excluded
    kept = line(RoundVoided(org=ORG, round=4, missing=[A], excluded=False, **chain_fields()))
    assert "(not excluded, the same set tries again)" in kept
    rejoined = line(MemberRejoined(org=ORG, participant=A, from_round=6, **chain_fields()))
    assert "member.rejoined" in rejoined and "0x1212…1212" in rejoined
    assert "REJOINED: back in the round sets from round 6" in rejoined
    assert "\n" not in excluded + kept + rejoined and "unknown topic" not in excluded + rejoined


def test_the_new_events_are_public_topics_and_plain_messages_are_unchanged() -> None:
    assert BY_ROUTING_KEY["round.voided"] is RoundVoided and BY_ROUTING_KEY["member.rejoined"] is MemberRejoined
    assert ProverJob not in PUBLIC_MESSAGES  # the batch stays on the private work queue
    plain = RoundOpened(org=ORG, round=1, deadline=0, global_words=[1], **chain_fields())
    assert plain.members == [] and plain.member_keys == []
    assert RoundOpened.model_validate_json(plain.model_dump_json()) == plain
    secure = plain.model_copy(update={"members": [A], "member_keys": [2**254, 1]})
    assert RoundOpened.model_validate_json(secure.model_dump_json()).member_keys == [2**254, 1]  # exact, as strings
