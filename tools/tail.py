"""`wafl tail PATTERN`: print an organisation's events as they pass, for operators.

Binds a temporary exclusive queue (deleted when the command stops) to the organisation's topic
exchange, or to its dead-letter exchange with ``--dead-letters``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractConnection

from tools.errors import UsageError
from wafl.bus.messages import BY_ROUTING_KEY
from wafl.bus.secrets import register_url, safe_url
from wafl.bus.topology import DEAD_LETTER_QUEUE, DEAD_LETTER_REASON, DEAD_LETTER_ROUTING_KEY, Topology

# What the services accept as an organisation id (wafl.bus.settings.ServiceSettings.org).
ORG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


def check_org(org: str | None) -> str:
    if not org:
        raise UsageError("which organisation? pass --org or set WAFL_ORG")
    if not ORG_PATTERN.fullmatch(org):
        raise UsageError(f"{org!r} is not an organisation id: lower-case letters, digits and '-', at most 64")
    return org


async def connect_broker(url: str, flag: str = "--amqp-url", timeout: float = 10.0) -> AbstractConnection:
    """A connection to RabbitMQ at `url`, or UsageError naming it (without its password) and `flag`."""
    register_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise UsageError(f"{flag} {safe_url(url)} is not an AMQP URL, e.g. amqp://guest:guest@127.0.0.1:5672/")
    # aiormq logs a failed connection itself, a second report on stderr: the UsageError is the one.
    quiet = logging.getLogger("aiormq.connection")
    was_disabled, quiet.disabled = quiet.disabled, True
    try:
        return await asyncio.wait_for(aio_pika.connect(url), timeout)
    except Exception as exc:  # refused, timed out, bad credentials, not RabbitMQ: check the URL, whichever
        raise UsageError(f"cannot reach RabbitMQ at {safe_url(url)} ({type(exc).__name__}): check {flag}") from None
    finally:
        quiet.disabled = was_disabled


def _short(address: str | None) -> str:
    return f"{address[:6]}…{address[-4:]}" if address and len(address) > 12 else (address or "-")


def summarize(routing_key: str, event: dict[str, Any]) -> str:
    """A one-line human summary of an event's payload."""
    match routing_key:
        case "round.opened":
            deadline = datetime.fromtimestamp(int(event.get("deadline", 0)), UTC).strftime("%H:%M:%S")
            return f"deadline {deadline} UTC, model of {len(event.get('global_words', []))} words"
        case "update.accepted":
            return f"update #{event.get('accepted')} accepted in block {event.get('block_number')}"
        case "round.finalized":
            return f"{event.get('accepted')} updates averaged in block {event.get('block_number')}"
        case "round.voided":
            missing = ", ".join(_short(m) for m in event.get("missing") or []) or "-"
            fate = "excluded until they rejoin" if event.get("excluded") else "not excluded, the same set tries again"
            return f"VOIDED: model unchanged, missing {missing} ({fate})"
        case "member.rejoined":
            return f"REJOINED: back in the round sets from round {event.get('from_round')}"
        case "round.deadline":
            return "deadline passed, round can be finalised"
        case "chain.reorged":
            return (f"REORG: {event.get('depth')} published blocks dropped after block {event.get('fork_block')}; "
                    "events are replayed from there")
        case "update.trained":
            loss = event.get("loss")
            loss_text = f", batch loss {loss:.4f}" if isinstance(loss, int | float) else ""
            return f"trained in {float(event.get('train_seconds', 0)):.3f}s{loss_text}"
        case "proof.generated":
            return (f"proved in {float(event.get('proof_seconds', 0)):.2f}s "
                    f"(queued {float(event.get('queue_seconds', 0)):.2f}s)")
        case "update.submitted":
            return f"tx {str(event.get('tx_hash', ''))[:10]}…, gas {event.get('gas_used')}"
        case "update.failed":
            detail = event.get("detail") or ""
            return f"FAILED {event.get('reason')}" + (f": {detail}" if detail else "")
        case "round.finalize_sent":
            return f"finalizeRound tx {str(event.get('tx_hash', ''))[:10]}…, gas {event.get('gas_used')}"
    return ", ".join(f"{k}={v}" for k, v in list(event.items())[:4])


def format_line(routing_key: str, body: bytes, headers: dict[str, Any], *, raw: bool, dead_letter: bool) -> str:
    if raw:
        try:
            payload: Any = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError):
            payload = body.decode("utf-8", "replace")
        record = {"routing_key": routing_key, "event": payload}
        if dead_letter:
            record["reason"] = str(headers.get(DEAD_LETTER_REASON, ""))
            record["queue"] = str(headers.get(DEAD_LETTER_QUEUE, ""))
        return json.dumps(record)
    now = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
    if dead_letter:
        original = str(headers.get(DEAD_LETTER_ROUTING_KEY, routing_key))
        return (f"{now}  DEAD  {original:<18} from {headers.get(DEAD_LETTER_QUEUE, '?')}: "
                f"{headers.get(DEAD_LETTER_REASON, 'no reason recorded')}")
    try:
        event = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{now}  {routing_key:<18} (unreadable body, {len(body)} bytes)"
    if not isinstance(event, dict):
        return f"{now}  {routing_key:<18} {event!r}"
    round_text = f"round {event['round']}" if "round" in event else ""
    known = "" if routing_key in BY_ROUTING_KEY else " (unknown topic)"
    return (f"{now}  {routing_key:<18} {round_text:<10} {_short(event.get('participant')):<12} "
            f"{summarize(routing_key, event)}{known}")


async def tail(
    amqp_url: str,
    org: str,
    pattern: str = "#",
    *,
    raw: bool = False,
    dead_letters: bool = False,
    count: int | None = None,
    echo: Callable[[str], None] = print,
    ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    url_from: str = "--amqp-url",
) -> int:
    """Print events until interrupted (or until ``count`` events); returns how many were printed.

    ``url_from``: where ``amqp_url`` came from, for the message when it leads nowhere.
    """
    topology = Topology(org)
    connection = await connect_broker(amqp_url, flag=url_from)
    printed = 0
    try:
        channel = await connection.channel()
        if dead_letters:
            exchange = await channel.declare_exchange(
                topology.dead_letter_exchange.name, aio_pika.ExchangeType.FANOUT, durable=True
            )
        else:
            exchange = await channel.declare_exchange(topology.events.name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key=pattern)
        if ready is not None:
            ready(f"bound to {exchange.name} with {pattern!r}")
        while stop is None or not stop.is_set():
            message = await queue.get(fail=False)
            if message is None:
                await _idle(stop)
                continue
            async with message.process():
                echo(format_line(message.routing_key or "", message.body, dict(message.headers or {}),
                                 raw=raw, dead_letter=dead_letters))
                printed += 1
            if count is not None and printed >= count:
                break
    finally:
        # Bounded: a broker that went away must not keep an interrupted tail alive.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(connection.close(), 5)
    return printed


async def _idle(stop: asyncio.Event | None, seconds: float = 0.1) -> None:
    if stop is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def tail_until_signalled(amqp_url: str, org: str, pattern: str = "#", **options: Any) -> int:
    """``tail`` that ends cleanly on SIGINT or SIGTERM (Ctrl-C, or kubectl stopping the pod)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await tail(amqp_url, org, pattern, stop=stop, **options)
