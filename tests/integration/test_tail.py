"""`wafl tail`: a temporary queue on the organisation's exchange, one readable line per event."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aio_pika

from tests.support.brokers import AMQP_URL, delete_org, unique_org
from tools.tail import format_line
from wafl.bus.messages import ChainReorged, ProofGenerated, UpdateFailed, UpdateSubmitted
from wafl.bus.topology import DEAD_LETTER_QUEUE, DEAD_LETTER_REASON, Topology

PARTICIPANT = "0x" + "12" * 20


def events(org: str) -> list[tuple[str, bytes]]:
    proof = ProofGenerated(org=org, round=3, branch="0x" + "34" * 32, participant=PARTICIPANT, update_words=[1, 2],
                           proof=list(range(8)), proof_seconds=1.9, witness_seconds=0.1, queue_seconds=0.25)
    failed = UpdateFailed(org=org, round=3, participant=PARTICIPANT, reason="Wafl__InvalidProof")
    return [(m.routing_key, m.model_dump_json().encode()) for m in (proof, failed)]


def test_format_line_summarises_each_topic() -> None:
    org = "acme"
    (rk1, b1), (rk2, b2) = events(org)
    line = format_line(rk1, b1, {}, raw=False, dead_letter=False)
    assert "proof.generated" in line and "round 3" in line and "0x1212…1212" in line and "proved in 1.90s" in line
    assert "FAILED Wafl__InvalidProof" in format_line(rk2, b2, {}, raw=False, dead_letter=False)
    raw = json.loads(format_line(rk1, b1, {}, raw=True, dead_letter=False))
    assert raw["routing_key"] == rk1 and raw["event"]["round"] == 3
    dead = format_line("round.opened", b"{oops", {DEAD_LETTER_REASON: "invalid message: body is not JSON",
                                                   DEAD_LETTER_QUEUE: "wafl.acme.trainer.round.opened"},
                       raw=False, dead_letter=True)
    assert "DEAD" in dead and "invalid message: body is not JSON" in dead and "trainer.round.opened" in dead
    assert "unreadable body" in format_line("round.opened", b"\xff\xfe", {}, raw=False, dead_letter=False)
    reorg = ChainReorged(org=org, fork_block=120, fork_hash="0x" + "ab" * 32, depth=7, dropped_blocks=[], round=4)
    line = format_line(reorg.routing_key, reorg.model_dump_json().encode(), {}, raw=False, dead_letter=False)
    assert "chain.reorged" in line and "round 4" in line and "7 published blocks dropped after block 120" in line


def test_tail_prints_matching_events_until_interrupted() -> None:
    org = unique_org()
    env = {**os.environ, "WAFL_ORG": org, "WAFL_AMQP_URL": AMQP_URL}
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "tail", "update.*"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        async def publish() -> None:
            connection = await aio_pika.connect(AMQP_URL)
            channel = await connection.channel()
            exchange = await channel.declare_exchange(Topology(org).events.name, aio_pika.ExchangeType.TOPIC,
                                                      durable=True)
            submitted = UpdateSubmitted(org=org, round=3, participant=PARTICIPANT, tx_hash="0x" + "ab" * 32,
                                        block_number=7, gas_used=305_367, submit_seconds=0.4)
            for routing_key, payload in [*events(org), (submitted.routing_key, submitted.model_dump_json().encode()),
                                         ("round.opened", b'{"round": 1}')]:
                await exchange.publish(aio_pika.Message(payload, content_type="application/json"), routing_key)
            await connection.close()

        assert proc.stderr is not None
        assert "bound to" in proc.stderr.readline()  # tail has connected and bound its queue
        asyncio.run(publish())
        time.sleep(1.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
        asyncio.run(delete_org(org))
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 2, (out, err)  # the pattern update.* matches 2 of the 4 events
    assert "proof.generated" not in out and "round.opened" not in out
    assert "update.failed" in lines[0] and "Wafl__InvalidProof" in lines[0]
    assert "update.submitted" in lines[1] and "gas 305367" in lines[1]
    assert proc.returncode == 0
