"""`wafl ceremony`: the Groth16 setup ceremony's command line (see wafl/zk/ceremony.py).

    wafl ceremony phase1 --power N [--out FILE]          one-party phase 1 (development)
    wafl ceremony phase1 --power N --ptau FILE           check a downloaded public phase 1 file
    wafl ceremony init --config NAME|--r1cs FILE [--label L] --ptau FILE --out DIR
    wafl ceremony contribute --in DIR --out DIR --name ORG
    wafl ceremony verify --dir DIR --config NAME|--r1cs FILE --ptau FILE [--mine HASH]
    wafl ceremony finalize --in DIR --out DIR --beacon HEX --config NAME|--r1cs FILE --ptau FILE

Every failure is one line on stderr and exit status 2 (`tools.cli.run` reports them).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from tools.cli import Parser, run
from wafl.zk.ceremony import (
    CeremonyError,
    Transcript,
    check,
    check_public_ptau,
    contribute,
    finalize,
    format_hash,
    init,
    iter_entries,
    local_phase1,
    make_local_ptau,
    public_ptau_name,
    public_ptau_power,
    required_power,
)


def _r1cs(args: argparse.Namespace) -> tuple[Path, str]:
    """The constraint system and its label: a configuration's build, or a file given directly."""
    if args.r1cs:
        path = Path(args.r1cs)
        return path, getattr(args, "label", None) or path.stem
    from wafl.core.config import load_config
    from wafl.zk.build import build_circuit

    build = build_circuit(load_config(args.config))
    path = build.directory / "circuit.r1cs"
    if not path.exists():
        raise CeremonyError(f"the build of {args.config} has no circuit.r1cs: rebuild it with `wafl build`")
    return path, args.config


def _print_entries(transcript: Transcript) -> None:
    for index, contribution, is_beacon in iter_entries(transcript):
        what = f"beacon {transcript.beacon}" if is_beacon else contribution.name
        print(f"#{index} {what}")
        print(f"   {contribution.hash}")


def _phase1(args: argparse.Namespace) -> int:
    if args.ptau:
        if args.out:
            raise CeremonyError("--out makes a local phase 1; --ptau checks a public one: give one of them")
        digest = check_public_ptau(Path(args.ptau), args.power)
        print(f"{args.ptau}: the published {public_ptau_name(args.power)} (blake2b {digest[:32]}…)")
        return 0
    if args.out and Path(args.out).is_dir():
        raise CeremonyError(f"--out {args.out} is a directory: name the file, e.g. {Path(args.out) / 'phase1.ptau'}")
    path = make_local_ptau(args.power, Path(args.out)) if args.out else local_phase1(args.power)
    print(path)
    print(
        f"power {args.power} phase 1 made by this machine alone: for tests and development only. "
        "A federation uses a published file: download powersOfTau28_hez_final_NN.ptau and check it with "
        "`wafl ceremony phase1 --ptau FILE --power NN`.",
        file=sys.stderr,
    )
    return 0


def _init(args: argparse.Namespace) -> int:
    r1cs, label = _r1cs(args)
    transcript = init(r1cs, Path(args.ptau), Path(args.out), label)
    print(f"phase 2 of {label} started in {args.out} (circuit hash {transcript.circuit_hash[:32]}…; "
          f"the circuit needs phase 1 power {required_power(r1cs)})")
    if public_ptau_power(transcript.ptau_blake2b) is None:
        print(
            "warning: the phase 1 file is not a published one: keys from it are for development only", file=sys.stderr
        )
    print(f"send {args.out} to the first organisation: `wafl ceremony contribute --in DIR --out NEW_DIR --name ORG`")
    return 0


def _contribute(args: argparse.Namespace) -> int:
    digest = contribute(Path(args.input), Path(args.out), args.name)
    print(f"{args.name} contributed; the result is in {args.out}: send that directory to the next organisation.")
    print(
        "Your contribution hash (keep it, and check that the final keys list it with "
        "`wafl ceremony verify ... --mine HASH`):"
    )
    print(digest)
    print(format_hash(digest))
    return 0


def _verify(args: argparse.Namespace) -> int:
    r1cs, _ = _r1cs(args)
    transcript = check(Path(args.dir), r1cs, Path(args.ptau), args.mine)
    print(f"ceremony {args.dir}: config {transcript.config}, r1cs sha256 {transcript.r1cs_sha256[:16]}…")
    public = public_ptau_power(transcript.ptau_blake2b)
    phase1 = public_ptau_name(public) if public is not None else "NOT a published file (development only)"
    print(f"phase 1: {phase1}")
    _print_entries(transcript)
    state = "finalised" if transcript.finalised else "not finalised"
    print(f"OK: every contribution verifies and matches the transcript ({state})")
    if args.mine:
        print("your contribution is included")
    return 0


def _finalize(args: argparse.Namespace) -> int:
    r1cs, _ = _r1cs(args)
    keys = finalize(Path(args.input), Path(args.out), args.beacon, r1cs, Path(args.ptau))
    print(f"{keys.label()} in {args.out}")
    print(f"vk_hash {keys.vk_hash}; transcript sha256 {keys.transcript_sha256}")
    return 0


def _circuit_args(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--config", help="configuration (a bundled name or a YAML file): its build's circuit.r1cs")
    which.add_argument("--r1cs", help="the constraint system (snarkjs r1cs) directly")
    p.add_argument("--ptau", required=True, help="the phase 1 file (prepared for phase 2)")


def add_ceremony_parser(subparsers: argparse._SubParsersAction[Parser]) -> None:
    """Add `ceremony` and its subcommands to a `wafl` parser's subcommands."""
    ceremony = subparsers.add_parser(
        "ceremony", help="the Groth16 setup ceremony: phase 1 and the organisations' phase 2 contributions"
    )
    sub = ceremony.add_subparsers(dest="ceremony", required=True)

    p = sub.add_parser("phase1", help="make a local (development) phase 1, or check a downloaded public one")
    p.add_argument("--power", type=int, required=True, help="2^power >= constraints + public inputs + 1")
    p.add_argument("--out", help="where to write a local phase 1 (default: cached under the build directory)")
    p.add_argument("--ptau", help="a downloaded powersOfTau28_hez_final_NN.ptau to check against its published hash")
    p.set_defaults(func=_phase1)

    p = sub.add_parser("init", help="start phase 2 for a circuit")
    _circuit_args(p)
    p.add_argument("--label", help="the configuration label recorded with --r1cs (default: the file name)")
    p.add_argument("--out", required=True, help="new directory for the initial key and transcript")
    p.set_defaults(func=_init)

    p = sub.add_parser("contribute", help="add this organisation's contribution")
    p.add_argument("--in", dest="input", required=True, help="the directory received from the previous step")
    p.add_argument("--out", required=True, help="new directory to send to the next organisation")
    p.add_argument("--name", required=True, help="this organisation's name, recorded in the key")
    p.set_defaults(func=_contribute)

    p = sub.add_parser("verify", help="verify a ceremony directory and list its contributions")
    p.add_argument("--dir", required=True, help="a ceremony directory (any step, or the final keys)")
    _circuit_args(p)
    p.add_argument("--mine", help="fail unless this contribution hash is included")
    p.set_defaults(func=_verify)

    p = sub.add_parser("finalize", help="apply the public beacon, verify everything and write the key set")
    p.add_argument("--in", dest="input", required=True, help="the directory after the last contribution")
    p.add_argument("--out", required=True, help="new directory for the key set")
    p.add_argument(
        "--beacon", required=True, help="public randomness fixed after the last contribution: hex, 32+ bytes"
    )
    _circuit_args(p)
    p.set_defaults(func=_finalize)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `wafl ceremony ...` on its own (python -m tools.ceremony_cli ceremony ...)."""
    root = Parser(prog="wafl")
    add_ceremony_parser(root.add_subparsers(dest="command", required=True))
    return run(root.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
