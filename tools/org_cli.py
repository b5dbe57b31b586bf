"""`wafl org init` (an organisation's key and files to join a federation) and `wafl participants
add` (the federation's admin registers them). The work is in tools/org.py, imported when a command runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_org_init(args: argparse.Namespace) -> int:
    from tools.org import init_org, next_steps

    org = init_org(args.name, Path(args.out), args.password_file, args.rpc_url, args.registry, args.k8s)
    print(org.address)
    print(next_steps(org, str(Path(args.out) / org.name)))
    return 0


def cmd_participants_add(args: argparse.Namespace) -> int:
    import json

    from tools.org import add_participants

    print(json.dumps(add_participants(args.deployment, args.rpc_url, args.key_file, args.addresses)))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's subcommands to the `wafl` parser (imports nothing heavy)."""
    org = sub.add_parser("org", help="an organisation's own set-up").add_subparsers(dest="org", required=True)
    p = org.add_parser("init", help="a new organisation: its encrypted key, masking secret (secure aggregation), "
                       "address, service settings, Kubernetes overlay and compose env file, in NAME/")
    p.add_argument("name", metavar="NAME", help="organisation id: lower-case letters, digits and '-' "
                   "(its queues are wafl.NAME.*, its namespace wafl-NAME)")
    p.add_argument("--out", default=".", help="directory to create NAME/ in (default: this one)")
    p.add_argument("--password-file", help="file holding the keystore's new password (default: asked twice on the "
                   "terminal, never echoed)")
    p.add_argument("--rpc-url", help="the federation's chain RPC, for the settings and the overlay's network policy "
                   "(default: a placeholder to replace)")
    p.add_argument("--registry", help="image registry of the overlay (default: registry.example.org/NAME)")
    p.add_argument("--k8s", help="deploy/k8s of a WaFL checkout, the overlay's base (default: this checkout's)")
    p.set_defaults(func=cmd_org_init)

    participants = sub.add_parser("participants", help="the federation's participants (its admin)").add_subparsers(
        dest="participants", required=True)
    p = participants.add_parser("add", help="register organisations' addresses as participants, with the admin's key")
    p.add_argument("addresses", nargs="+", metavar="ADDRESS", help="an organisation's address (its address.txt)")
    p.add_argument("--deployment", required=True, help="the deployment artifact")
    p.add_argument("--rpc-url", required=True)
    p.add_argument("--key-file", help="file holding the admin's (deployer's) private key (else $WAFL_DEPLOYER_KEY)")
    p.set_defaults(func=cmd_participants_add)
