"""`wafl status`: the federation now, read from the chain (tools/status.py prints it).

Building this parser imports nothing heavy: web3 and the rest come with the command.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

DEFAULT_WATCH_SECONDS = 5.0
MIN_WATCH_SECONDS = 0.2


def _watch_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < MIN_WATCH_SECONDS:
        raise argparse.ArgumentTypeError(f"refresh at most every {MIN_WATCH_SECONDS:g} s, not {text}")
    return seconds


def _history(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of rounds (0 or more)")
    return int(text)


def cmd_status(args: argparse.Namespace) -> int:
    from tools.cli import connect
    from tools.status import load, show

    deployment = load(Path(args.deployment))
    return show(connect(args.rpc_url), deployment, as_json=args.json, watch=args.watch, history=args.history)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `wafl status` to the `wafl` parser (imports nothing heavy)."""
    p = sub.add_parser("status", help="the federation now: round, deadline, participants, finalised rounds, model",
                       description="The federation as the chain holds it at its latest block: contract, "
                       "configuration, the current round and its deadline, each participant's attestation and "
                       "submission, the last finalised rounds and the global model's hash. Read-only: any "
                       "RPC node of the deployment's chain serves.")
    p.add_argument("--deployment", required=True, help="the deployment artifact (`wafl deploy --out`)")
    p.add_argument("--rpc-url", required=True, help="an RPC node of the deployment's chain")
    p.add_argument("--json", action="store_true", help="one JSON object with every field (one a refresh with --watch)")
    p.add_argument("--watch", nargs="?", type=_watch_seconds, const=DEFAULT_WATCH_SECONDS, metavar="SECONDS",
                   help=f"refresh in place every SECONDS (default {DEFAULT_WATCH_SECONDS:g}) until Ctrl-C")
    p.add_argument("--history", type=_history, default=5, metavar="N", help="finalised rounds to list (default 5)")
    p.set_defaults(func=cmd_status)
