"""The `wafl` command line.

Bad input ends every command the same way: one line on stderr saying what is wrong (and what to
do), exit status 2, and nothing left running. :func:`run` turns the known kinds of bad input into
that line, in one place; any other exception is a bug and keeps its traceback. Ctrl-C and SIGTERM
unwind a command (so that the anvil, provers and services it started stop) and exit with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit

from services import SERVICE_NAMES
from tools import model_cli, org_cli, status_cli
from tools.errors import UsageError
from wafl.bus.secrets import redact, register_secret, register_url, safe_url
from wafl.core.config import ConfigError, ModelConfig, load_config, named_configs
from wafl.core.paths import ToolchainError
from wafl.zk.ceremony import CeremonyError
from wafl.zk.keys import KeySetError

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3

    from wafl.chain.artifact import Deployment

# A reason, not a dump: longer messages are cut here.
MAX_LINE = 600
INTERRUPTED = 130
BROKEN_PIPE = 141  # what a shell reports for a command that SIGPIPE ended


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in one line too (the usage itself is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return parse


# ---- what the commands share -------------------------------------------------------------------


def _configs(names: Sequence[str] | None) -> list[tuple[str, ModelConfig]]:
    """Every configuration asked for (default: the bundled ones), all loaded before any work starts."""
    return [(name, load_config(name)) for name in (names or named_configs())]


def _within(cfg: ModelConfig, flag: str, count: int) -> None:
    if count > cfg.max_participants:
        raise UsageError(f"{flag} {count} exceeds the {cfg.max_participants} organisations {cfg.name} has room for")


def signer(what: str, key_file: str | None, *, key_env: str | None = None, file_env: str | None = None) -> LocalAccount:
    """The account of the private key in `key_file` (else the file `file_env` names), else in `key_env`.

    No message repeats the key; a valid one is registered as a secret, so that none ever shows it.
    """
    key_file = key_file or (os.environ.get(file_env) if file_env else None)
    if key_file:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read the {what} file {key_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"the {what} file {key_file} is not text: it should hold the key in hex") from None
        source = f"the {what} file {key_file}"
    else:
        key = os.environ.get(key_env, "").strip() if key_env else ""
        if not key:
            ways = ["pass --key-file", *(f"set {v}" for v in (file_env, key_env) if v)]
            raise UsageError(f"no {what}: {' or '.join(ways)}")
        source = f"${key_env}"
    if not key:
        raise UsageError(f"{source} is empty: it should hold the {what} in hex")
    from eth_account import Account

    try:
        account: LocalAccount = Account.from_key(key)
    except Exception:  # whatever is wrong with it, the key is not echoed
        raise UsageError(f"{source} is not a valid private key (64 hex digits)") from None
    register_secret(key)
    return account


def connect(url: str, flag: str = "--rpc-url") -> Web3:
    """Web3 on the Ethereum node at `url`, once it has answered; UsageError if it does not."""
    from web3 import HTTPProvider, Web3

    register_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{flag} {safe_url(url)} is not an http(s) URL, e.g. http://127.0.0.1:8545")
    try:
        Web3(HTTPProvider(url, request_kwargs={"timeout": 10})).eth.get_block_number()
    except Exception as exc:  # refused, timed out, not JSON-RPC: no node to talk to, whichever
        raise UsageError(f"no Ethereum node answers at {safe_url(url)} ({type(exc).__name__}): "
                         f"check {flag} and that the node runs") from None
    return Web3(HTTPProvider(url, request_kwargs={"timeout": 60}))


def writable(path: Path, flag: str, *, directory: bool = False) -> Path:
    """`path` if the command's output can go there: checked before anything is spent on the output."""
    if directory and path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file: name a directory for the results")
    if not directory and path.is_dir():
        raise UsageError(f"{flag} {path} is a directory: name a file, e.g. {path / 'deployment.json'}")
    existing = path.absolute() if directory else path.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path} cannot be written: {existing} is not a writable directory")
    return path


def load_deployment(path: Path) -> Deployment:
    """A deployment artifact, or UsageError saying why the file is not one."""
    from wafl.chain.artifact import Deployment

    try:
        return Deployment.load(path)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot read the deployment artifact {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError:
        raise UsageError(f"{path} is not JSON: give the artifact `wafl deploy --out` wrote") from None
    except (TypeError, KeyError, AttributeError, UnicodeDecodeError):
        raise UsageError(f"{path} is not a deployment artifact: give the file `wafl deploy --out` wrote") from None


# ---- commands --------------------------------------------------------------------------------------


def cmd_configs(args: argparse.Namespace) -> int:
    for name, cfg in _configs(None):
        print(
            f"{name}: {cfg.d_in}x{cfg.d_out}, batch {cfg.batch}, F={cfg.frac_bits}, "
            f"lanes {cfg.weight_bits}+{cfg.headroom_bits} bits x {cfg.lanes_per_word}/word, "
            f"{cfg.n_words} words, {cfg.public_inputs} public inputs"
        )
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from wafl.chain.compile import compile_contracts
    from wafl.zk.build import build_circuit, development_keys
    from wafl.zk.circuit import CircuitKind

    configs = _configs(args.config)
    compiled = compile_contracts()
    sizes = {n: c["deployed_size"] for n, c in compiled["contracts"].items()}
    for name, cfg in configs:
        build = build_circuit(cfg, CircuitKind.PACKED)
        keys = development_keys(build)
        line: dict[str, object] = {
            "config": name,
            "constraints": build.constraints,
            "circuit_sha256": build.circuit_sha256,
            "development_vk_hash": keys.vk_hash,
            "bytes": sizes,
        }
        if args.naive:
            line["naive_constraints"] = build_circuit(cfg, CircuitKind.NAIVE).constraints
        print(json.dumps(line), flush=True)
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from wafl.zk.keys import load_keys

    # Everything that can be checked here is, before the node is asked anything (the cheap first).
    cfg = load_config(args.config)
    out = writable(Path(args.out), "--out")
    keys = load_keys(Path(args.keys)) if args.keys else None
    deployer = signer("deployer key", args.key_file, key_env="WAFL_DEPLOYER_KEY")
    from wafl.chain.deploy import check_terms, deploy

    participants = [p.strip() for p in (args.participants or "").split(",") if p.strip()]
    check_terms(cfg, args.quorum, args.round_duration, participants)
    standardisation = read_standardisation(Path(args.standardisation), cfg) if args.standardisation else None
    w3 = connect(args.rpc_url)
    deployment = deploy(
        w3, deployer, cfg, quorum=args.quorum, round_duration=args.round_duration, participants=participants,
        keys=keys, allow_development_keys=args.allow_development_keys, standardisation=standardisation,
    )
    deployment.save(out)
    print(json.dumps({
        "address": deployment.address, "start_block": deployment.start_block, "out": args.out,
        "vk_hash": deployment.vk_hash, "keys": deployment.keys_kind, "transcript_sha256": deployment.transcript_sha256,
    }))
    if deployment.keys_kind == "development":
        print("wafl: deployed with DEVELOPMENT keys (one party made them): for tests only", file=sys.stderr)
    return 0


def read_standardisation(path: Path, cfg: ModelConfig) -> dict[str, list[float]]:
    """The record of a --standardisation file, checked against the configuration's width."""
    from wafl.data.standardisation import Standardisation, StandardisationError

    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--standardisation {path}: {type(exc).__name__}: {exc}") from None
    try:
        return Standardisation.from_record(raw, cfg.d_in, f"--standardisation {path}").record()
    except StandardisationError as exc:
        raise UsageError(str(exc)) from None


def cmd_attest(args: argparse.Namespace) -> int:
    from wafl.chain.attest import CeremonyCheck, attest
    from wafl.zk.keys import load_keys

    deployment = load_deployment(Path(args.deployment))
    # The submitter's variables: the file holding the organisation's key, or its keystore and password file.
    keystore = args.keystore or (None if args.key_file else os.environ.get("WAFL_KEYSTORE"))
    if keystore:
        from tools.org import keystore_signer

        account = keystore_signer(keystore, args.password_file or os.environ.get("WAFL_KEYSTORE_PASSWORD_FILE"))
    else:
        account = signer("participant key", args.key_file, file_env="WAFL_KEY_FILE")
    keys = load_keys(Path(args.keys)) if args.keys else None
    check = None
    if args.mine or args.ptau:
        if not (args.mine and args.ptau and keys is not None):
            raise UsageError("checking a ceremony needs --keys, --ptau and --mine")
        from wafl.zk.build import build_circuit

        check = CeremonyCheck(r1cs=build_circuit(deployment.model_config).r1cs, ptau=Path(args.ptau), mine=args.mine)
    masking_secret = _masking_secret(args.masking_key, deployment.model_config)
    tx = attest(connect(args.rpc_url), deployment, account, keys, check, masking_secret)
    print(json.dumps({"participant": account.address, "vk_hash": deployment.vk_hash, "tx": tx or None,
                      "already_attested": not tx}))
    return 0


def _masking_secret(flag: str | None, cfg: ModelConfig) -> int | None:
    """The masking secret of a secure-aggregation deployment: --masking-key, else the file the provers'
    variable names; None for a plain one."""
    from wafl.zk.masking import SECRET_ENV, MaskingKeyError, read_secret

    if not cfg.secure_aggregation:
        if flag:
            raise UsageError(f"--masking-key: {cfg.name} does not use secure aggregation")
        return None
    path = flag or os.environ.get(SECRET_ENV)
    if not path:
        raise UsageError(f"{cfg.name} uses secure aggregation: pass --masking-key FILE (your masking secret; "
                         f"else the file ${SECRET_ENV} names)")
    try:
        return read_secret(Path(path))
    except MaskingKeyError as exc:
        raise UsageError(f"--masking-key: {exc}") from None


def cmd_bench_gas(args: argparse.Namespace) -> int:
    configs = _configs(args.config)
    for _, cfg in configs:
        _within(cfg, "--participants", args.participants)
    from tools.bench.gas import BenchOptions, bench_config

    options = BenchOptions(participants=args.participants, rounds=args.rounds)
    for name, cfg in configs:
        row = bench_config(cfg, options)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{name}:")
            for key, value in row.items():
                print(f"  {key:36} {value}")
    return 0


def cmd_bench_prove(args: argparse.Namespace) -> int:
    configs = _configs(args.config)
    usable = len(os.sched_getaffinity(0))
    if args.cores > usable:
        raise UsageError(f"--cores {args.cores}: this process may use {usable}")
    from tools.bench.prove import ProveBenchOptions, bench_prove

    options = ProveBenchOptions(runs=args.runs, cores=args.cores, max_phase1_power=args.max_phase1_power)
    for _, cfg in configs:
        for row in bench_prove(cfg, options):
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0


def cmd_bench_secagg(args: argparse.Namespace) -> int:
    configs = _configs(args.config or ["iris-4x3-b3-secagg", "wine-13x3-b16-secagg"])
    from tools.bench.secagg import bench_secagg

    for name, cfg in configs:
        if not cfg.secure_aggregation:
            raise UsageError(f"--config {name} does not mask its updates: give a secure-aggregation configuration")
    for _, cfg in configs:
        print(json.dumps(bench_secagg(cfg, runs=args.runs)), flush=True)
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    _within(cfg, "--orgs", args.orgs)
    _within(cfg, "--jobs", args.jobs)  # one organisation per job
    if cfg.dataset is None:
        raise UsageError(f"configuration {cfg.name} names no dataset for the organisations to train on")
    from tools.bench.pipeline import bench_pipeline

    row = bench_pipeline(cfg, orgs=args.orgs, rounds=args.rounds, jobs=args.jobs)
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        for key, value in row.items():
            print(f"  {key:32} {value}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run one service as a plain process: settings validated, start-up checks, then consume."""
    import asyncio

    from services import spec
    from wafl.bus.settings import load_settings

    service = spec(args.service)
    settings = load_settings(service.settings, Path(args.settings) if args.settings else None)
    asyncio.run(service.serve(settings))
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    import asyncio

    from tools.tail import check_org, tail_until_signalled
    from wafl.bus.settings import DEFAULT_AMQP_URL

    from_env = not args.amqp_url and "WAFL_AMQP_URL" in os.environ
    url = args.amqp_url or os.environ.get("WAFL_AMQP_URL", DEFAULT_AMQP_URL)
    org = check_org(args.org or os.environ.get("WAFL_ORG"))
    try:
        asyncio.run(tail_until_signalled(url, org, args.pattern, raw=args.json, dead_letters=args.dead_letters,
                                         count=args.count, url_from="WAFL_AMQP_URL" if from_env else "--amqp-url",
                                         echo=lambda line: print(line, flush=True),
                                         ready=lambda where: print(f"wafl tail: {where}; Ctrl-C stops",
                                                                   file=sys.stderr, flush=True)))
    except KeyboardInterrupt:  # the way to stop it
        return 0
    return 0


def cmd_grafana_push(args: argparse.Namespace) -> int:
    token = os.environ.get("GRAFANA_TOKEN", "")
    if not token:
        raise UsageError("set GRAFANA_TOKEN (a Grafana service-account token)")
    register_secret(token)
    register_url(args.url)
    if urlsplit(args.url).scheme not in ("http", "https"):
        raise UsageError(f"--url {safe_url(args.url)} is not an http(s) URL, e.g. http://127.0.0.1:3000")
    try:
        from tools.grafana_push import push
    except ImportError:
        raise UsageError("grafana-client is not installed: pip install 'wafl[grafana]'") from None
    push(args.url, token)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from tools.simulate.args import check_arguments

    check_arguments(args)  # before the simulation's imports: seconds of torch and scikit-learn
    from tools.simulate.cli import run as simulate

    return simulate(args)


# ---- the parser --------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="wafl", description="Web3-accelerated federated learning")
    sub = root.add_subparsers(dest="command", required=True)
    config_help = "configuration: a bundled name or a YAML file (repeatable; default all bundled)"

    p = sub.add_parser("configs", help="list the bundled model configurations")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("build", help="build circuits and this machine's development keys, compile contracts")
    p.add_argument("--config", action="append", help=config_help)
    p.add_argument("--naive", action="store_true", help="also build the naive benchmark circuit")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("deploy", help="deploy verifier + aggregator and write the artifact file")
    p.add_argument("--config", required=True, help="configuration: a bundled name or a YAML file")
    p.add_argument("--rpc-url", required=True)
    p.add_argument("--key-file", help="file holding the deployer's private key (else $WAFL_DEPLOYER_KEY)")
    p.add_argument("--participants", help="comma-separated participant addresses to register")
    p.add_argument("--quorum", type=int, required=True)
    p.add_argument("--round-duration", type=int, default=3600, help="seconds")
    p.add_argument("--out", required=True, help="artifact path (ABI, address, start block, config, keys)")
    p.add_argument("--standardisation", help='JSON file {"mean": [...], "std": [...]}: the federation\'s '
                   "standardisation of raw features, recorded in the artifact for `wafl model evaluate`")
    p.add_argument("--keys", help="the ceremony's final directory (`wafl ceremony finalize --out`); "
                   "default: this machine's development keys")
    p.add_argument("--allow-development-keys", action="store_true",
                   help="deploy development keys on a chain that is not a local development chain")
    p.set_defaults(func=cmd_deploy)

    from tools.ceremony_cli import add_ceremony_parser

    add_ceremony_parser(sub)

    p = sub.add_parser("attest", help="check the federation's keys (and your ceremony contribution), attest them")
    p.add_argument("--deployment", required=True, help="the deployment artifact")
    p.add_argument("--rpc-url", required=True)
    key = p.add_mutually_exclusive_group()
    key.add_argument("--key-file", help="file holding the participant's private key (else the file $WAFL_KEY_FILE "
                     "names, as for the submitter)")
    key.add_argument("--keystore", help="the participant's encrypted keystore (`wafl org init`; else $WAFL_KEYSTORE, "
                     "as for the submitter)")
    p.add_argument("--password-file", help="file holding the keystore's password (else $WAFL_KEYSTORE_PASSWORD_FILE)")
    p.add_argument("--keys", help="the ceremony's final key directory")
    p.add_argument("--ptau", help="the phase 1 file the ceremony used")
    p.add_argument("--mine", help="the contribution hash `wafl ceremony contribute` printed for you")
    p.add_argument("--masking-key", help="secure aggregation: the file holding your masking secret, whose public key "
                   "is registered before attesting (else the file $WAFL_MASKING_KEY_FILE names, as for the prover)")
    p.set_defaults(func=cmd_attest)

    p = sub.add_parser("run", help="run one service as a plain process")
    p.add_argument("service", choices=SERVICE_NAMES)
    p.add_argument("--settings", help="YAML settings file (WAFL_* environment variables also apply)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tail", help="print an organisation's events (or dead letters) as they pass")
    p.add_argument("pattern", nargs="?", default="#", help="routing pattern, e.g. 'round.*' or 'update.#'")
    p.add_argument("--org", help="organisation id (else $WAFL_ORG)")
    p.add_argument("--amqp-url", help="broker URL (else $WAFL_AMQP_URL, else the local default)")
    p.add_argument("--json", action="store_true", help="print raw events as JSON lines")
    p.add_argument("--dead-letters", action="store_true", help="tail the dead-letter exchange, with reasons")
    p.add_argument("--count", type=at_least(1), help="stop after this many events")
    p.set_defaults(func=cmd_tail)

    grafana = sub.add_parser("grafana", help="Grafana dashboards").add_subparsers(dest="grafana", required=True)
    p = grafana.add_parser("push", help="upload the datasource and dashboards with grafana-client")
    p.add_argument("--url", required=True, help="Grafana base URL; the token comes from $GRAFANA_TOKEN")
    p.set_defaults(func=cmd_grafana_push)

    p = sub.add_parser("simulate", help="a whole federation on this machine: services, anvil, real proofs, results")
    from tools.simulate.args import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_simulate)

    for commands in (model_cli, status_cli, org_cli):
        commands.register(sub)

    bench = sub.add_parser("bench", help="benchmarks that print their figures").add_subparsers(
        dest="bench", required=True
    )
    p = bench.add_parser("gas", help="constraints, proof seconds and gas per configuration vs naive")
    p.add_argument("--config", action="append", help=config_help)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--participants", type=at_least(2), default=3)
    p.add_argument("--rounds", type=at_least(1), default=2)
    p.set_defaults(func=cmd_bench_gas)

    p = bench.add_parser("prove", help="witness and prove seconds per backend vs zokrates-js, alternating runs")
    p.add_argument("--config", action="append", help=config_help)
    p.add_argument("--runs", type=at_least(1), default=5, help="jobs per backend (plus one unmeasured warm-up)")
    p.add_argument("--cores", type=at_least(1), default=1, help="cores each backend's processes may use")
    p.add_argument("--max-phase1-power", type=at_least(1), default=12,
                   help="largest local phase 1 to make for the snarkjs backend's ceremony keys")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_bench_prove)

    p = bench.add_parser("secagg", help="secure aggregation's constraints and proof time vs the unmasked circuit")
    p.add_argument("--config", action="append", help="secure-aggregation configuration(s) (default: the bundled)")
    p.add_argument("--runs", type=at_least(1), default=5, help="jobs per circuit (plus one unmeasured warm-up)")
    p.set_defaults(func=cmd_bench_secagg)

    p = bench.add_parser("pipeline", help="round latency split and prover-pool throughput (1 vs 2 replicas)")
    p.add_argument("--config", default="wine-13x3-b16", help="configuration: a bundled name or a YAML file")
    p.add_argument("--orgs", type=at_least(1), default=3)
    p.add_argument("--rounds", type=at_least(1), default=3)
    p.add_argument("--jobs", type=at_least(1), default=8, help="prover jobs for the throughput measurement")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_pipeline)
    return root


# ---- running a command: bad input in one line ---------------------------------------------------


def _speaker(args: argparse.Namespace) -> str:
    """Who a message comes from: `wafl`, or the service or command that has a voice of its own."""
    match getattr(args, "command", None):
        case "run":
            return f"wafl {args.service}"
        case "ceremony":
            return f"wafl ceremony {args.ceremony}"
        case "simulate" | "tail":
            return f"wafl {args.command}"
        case "grafana":
            return "wafl grafana push"
    return "wafl"


# Bad input that modules the commands import as they need them raise, by module: one that is not
# loaded has raised nothing, so the handler never imports one (failing stays as quick as starting).
LOADED_BAD_INPUT = (
    ("wafl.zk.build", "BuildError"),
    ("wafl.chain.deploy", "DeploymentError"),
    ("wafl.chain.attest", "AttestError"),
    ("wafl.chain.nodes", "FundsNeededError"),
    ("wafl.data.fedsplit", "DataFileError"),
    ("wafl.bus.settings", "SettingsError"),
    ("wafl.bus.service", "StartupError"),
    ("wafl.bus.observability", "MetricsPortError"),
    ("grafana_client.client", "GrafanaException"),
)


def _bad_input_types() -> tuple[type[Exception], ...]:
    """The exceptions whose message is the answer to bad input."""
    kinds: list[type[Exception]] = [UsageError, ConfigError, KeySetError, ToolchainError, CeremonyError]
    for module, name in LOADED_BAD_INPUT:
        kind = getattr(sys.modules.get(module), name, None)
        if isinstance(kind, type) and issubclass(kind, Exception):
            kinds.append(kind)
    return tuple(kinds)


def _server_message(exc: Exception, args: argparse.Namespace) -> str | None:
    """A server named by the command's flags that went away, or refused a request."""
    urls = (getattr(args, flag, None) for flag in ("rpc_url", "amqp_url", "url"))
    url = next((u for u in urls if isinstance(u, str)), None)
    # requests' and niquests' errors are OSErrors too, without a file name.
    if isinstance(exc, OSError) and url is not None:
        return f"no answer from {safe_url(url)} ({type(exc).__name__}): is it running, and is the URL right?"
    if "web3.exceptions" in sys.modules:
        from web3.exceptions import Web3RPCError

        if isinstance(exc, Web3RPCError):
            error = (exc.rpc_response or {}).get("error")
            reason = error.get("message") if isinstance(error, dict) else exc.message
            return f"the Ethereum node{f' at {safe_url(url)}' if url else ''} refused a request: {reason}"
    return None


def bad_input(exc: Exception, args: argparse.Namespace) -> str | None:
    """The one line that reports `exc`, when it is bad input or a server out of reach; None otherwise."""
    message: str | None
    if isinstance(exc, _bad_input_types()):
        message = str(exc)
    elif isinstance(exc, OSError) and exc.filename is not None:
        message = f"{exc.filename}: {exc.strerror or exc}"
    elif isinstance(exc, UnicodeDecodeError):  # a binary file where text was expected: which, the command says
        message = f"a file given is not UTF-8 text ({exc.reason} at byte {exc.start}): is it the right file?"
    else:
        message = _server_message(exc, args)
    if message is None:
        return None
    line = redact(" ".join(message.split()))
    return line if len(line) <= MAX_LINE else line[: MAX_LINE - 1] + "…"


# Set once a stop signal arrived: the KeyboardInterrupt raised for it can surface as another
# exception when a library's clean-up fails on the way out (urllib3 mid-request), still a stop.
_stop_requested = threading.Event()


def _interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    _stop_requested.set()
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a supervisor stopping the command) unwinds it as Ctrl-C does. Commands that run an
    event loop install their own handlers meanwhile (a service's graceful stop, simulate's clean-up)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def run(args: argparse.Namespace) -> int:
    """Run a parsed command: its exit status, or 2 and one line on stderr for bad input."""
    try:
        with _sigterm_interrupts():
            code: int = args.func(args)
    except KeyboardInterrupt:
        print(f"{_speaker(args)}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # whoever read the output stopped (`wafl configs | head -1`): nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor at exit, when stdout is flushed
        return BROKEN_PIPE
    except Exception as exc:
        if _stop_requested.is_set():
            print(f"{_speaker(args)}: interrupted", file=sys.stderr)
            return INTERRUPTED
        line = bad_input(exc, args)
        if line is None:
            raise
        print(f"{_speaker(args)}: {line}", file=sys.stderr)
        return 2
    return code


def main(argv: Sequence[str] | None = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    # `python -m tools.cli` runs this file as __main__, a second copy of the module: run the module's
    # own main, so that the UsageError other tools modules import is the class `run` catches.
    from tools.cli import main as module_main

    sys.exit(module_main())
