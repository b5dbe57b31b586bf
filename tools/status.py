"""`wafl status`: the federation as the chain holds it, once or refreshed in place.

The reading is wafl.chain.status's (one consistent snapshot per refresh); this module checks the
input, prints the snapshot for people (text) or programs (`--json`, one object per refresh) and
refreshes until Ctrl-C, which the command line turns into exit status 130.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from web3 import Web3
from web3.exceptions import Web3RPCError

from tools.cli import load_deployment
from tools.errors import UsageError
from wafl.bus.secrets import redact
from wafl.chain.artifact import Deployment
from wafl.chain.status import FederationStatus, StatusError, StatusReader

# Cursor home, clear to the end of the screen: each refresh overwrites the one before.
CLEAR = "\x1b[H\x1b[J"


def load(path: Path) -> Deployment:
    """The deployment artifact at `path`, its address and configuration checked; UsageError if not."""
    try:
        deployment = load_deployment(path)
    except UsageError:
        raise
    except ValueError as exc:  # an artifact of another version
        raise UsageError(f"{exc}: deploy again, or use the wafl that wrote it") from None
    if not isinstance(deployment.address, str) or not Web3.is_address(deployment.address):
        raise UsageError(f"{path} names no contract address: give the file `wafl deploy --out` wrote")
    if not all(isinstance(v, int) for v in (deployment.chain_id, deployment.start_block)) or not isinstance(
            deployment.abi, list):
        raise UsageError(f"{path} is not a deployment artifact: give the file `wafl deploy --out` wrote")
    deployment.model_config  # noqa: B018 - a broken configuration is bad input before the node is asked
    return deployment


def first_snapshot(reader: StatusReader) -> FederationStatus:
    """The first read, whose failure is bad input: the wrong chain, no contract, not an aggregator."""
    try:
        return reader.read()
    except StatusError as exc:
        raise UsageError(str(exc)) from None


def show(w3: Web3, deployment: Deployment, *, as_json: bool, watch: float | None, history: int,
         out: TextIO = sys.stdout, sleep: Callable[[float], None] = time.sleep) -> int:
    """Print the status once, or every `watch` seconds until interrupted.

    A refresh that fails (the node away for a while) keeps the last snapshot: the text says so
    under it; with `--json` no object is printed for it and a line on stderr says why.
    """
    reader = StatusReader(w3, deployment, history=history)
    status = first_snapshot(reader)
    problem = ""
    while True:
        if as_json and problem:
            print(f"wafl status: refresh failed {problem}", file=sys.stderr, flush=True)
        elif as_json:
            out.write(status.to_json() + "\n")
        elif watch is None:
            out.write(render(status))
        else:
            footer = f"every {watch:g} s, Ctrl-C stops" + (f"; last refresh failed {problem}" if problem else "")
            out.write(CLEAR + render(status) + footer + "\n")
        out.flush()
        if watch is None:
            return 0
        sleep(watch)
        try:
            status, problem = reader.read(), ""
        except (OSError, Web3RPCError, StatusError) as exc:
            reason = f"no answer from the node ({type(exc).__name__})" if isinstance(exc, OSError) else str(exc)
            problem = f"at {datetime.now(UTC):%H:%M:%S} UTC: " + redact(" ".join(reason.split()))[:200]


# ---- the text ------------------------------------------------------------------------------------


def duration(seconds: int) -> str:
    """`1d 02h`, `1h 02m`, `2m 05s`, `7s`."""
    days, rest = divmod(abs(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02}h"
    if hours:
        return f"{hours}h {minutes:02}m"
    return f"{minutes}m {secs:02}s" if minutes else f"{secs}s"


def when(timestamp: int) -> str:
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (ValueError, OverflowError, OSError):  # past the year 9999: a deadline of a very long round
        return f"timestamp {timestamp}"


def _round_line(s: FederationStatus) -> str:
    if not s.round:
        return (f"not open: {s.attested_count} of {s.participant_count} participants attested the keys "
                "(round 1 opens with the last attestation)")
    left = s.deadline - s.block_timestamp
    timing = f"{duration(left)} left" if left > 0 else f"passed {duration(left)} ago: anyone may finalise it"
    return f"{s.round}, {s.accepted} accepted of quorum {s.quorum}; deadline {when(s.deadline)} ({timing})"


def render(s: FederationStatus) -> str:
    """The snapshot for people: every figure the JSON holds but the layout's bit widths."""
    lines = [
        f"WaFL federation {s.address} on chain {s.chain_id}",
        f"  block        {s.block_number} {s.block_hash}, {when(s.block_timestamp)}",
        f"  config       {s.config_name}: {s.d_in} inputs x {s.d_out} outputs, {s.n_weights} weights "
        f"in {s.n_words} words",
        f"  terms        quorum {s.quorum}, rounds of {duration(s.round_duration)}, "
        f"{s.participant_count} of at most {s.max_participants} participants registered",
        f"  keys         {s.vk_hash} ({s.keys_kind}), attested by {s.attested_count} of {s.participant_count}",
        f"  round        {_round_line(s)}",
        f"  model hash   {s.model_hash}",
        f"participants ({s.participant_count})",
    ]
    for p in s.participants:
        submitted = ("submitted" if p.submitted else "not submitted") if s.round else ""
        lines.append(f"  {p.address}  {'attested' if p.attested else 'NOT attested':12}  {submitted}".rstrip())
    lines.append(f"finalised rounds (the last {len(s.finalized)})" if s.finalized else "finalised rounds: none yet")
    for r in s.finalized:
        lines.append(f"  round {r.round}: {r.accepted} accepted, block {r.block_number} {r.block_hash}")
    if s.artifact_mismatches:
        differ = ", ".join(s.artifact_mismatches)
        lines.append(f"warning: the deployment artifact differs from the contract in {differ} "
                     "(the contract's values are shown): is it this deployment's artifact?")
    return "\n".join(lines) + "\n"
