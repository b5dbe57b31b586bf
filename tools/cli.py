"""The `wafl` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from services import SERVICE_NAMES
from wafl.core.config import ConfigError, load_config, named_configs
from wafl.zk.keys import KeySetError


def _configs(names: Sequence[str] | None) -> list[str]:
    return list(names) if names else named_configs()


def cmd_configs(args: argparse.Namespace) -> int:
    for name in named_configs():
        cfg = load_config(name)
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

    compiled = compile_contracts()
    sizes = {n: c["deployed_size"] for n, c in compiled["contracts"].items()}
    for name in _configs(args.config):
        cfg = load_config(name)
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


def _read_secret(env: str, file_arg: str | None, what: str) -> str:
    if file_arg:
        try:
            return Path(file_arg).read_text().strip()
        except OSError as exc:
            raise SystemExit(f"cannot read the {what} file {file_arg}: {exc.strerror}") from None
    value = os.environ.get(env)
    if not value:
        raise SystemExit(f"no {what}: pass a key file or set {env}")
    return value.strip()


def cmd_deploy(args: argparse.Namespace) -> int:
    from eth_account import Account
    from web3 import HTTPProvider, Web3

    from wafl.chain.deploy import DeploymentError, deploy
    from wafl.zk.keys import load_keys

    cfg = load_config(args.config)
    keys = load_keys(Path(args.keys)) if args.keys else None
    key = _read_secret("WAFL_DEPLOYER_KEY", args.key_file, "deployer key")
    try:
        deployer = Account.from_key(key)
    except (ValueError, TypeError):
        raise SystemExit("the deployer key is not a valid private key") from None
    w3 = Web3(HTTPProvider(args.rpc_url))
    if not w3.is_connected():
        raise SystemExit(f"no Ethereum node answers at {args.rpc_url}")
    participants = [p for p in (args.participants or "").split(",") if p]
    try:
        deployment = deploy(
            w3, deployer, cfg, quorum=args.quorum, round_duration=args.round_duration, participants=participants,
            keys=keys, allow_development_keys=args.allow_development_keys,
        )
    except DeploymentError as exc:
        print(f"wafl: {exc}", file=sys.stderr)
        return 2
    deployment.save(Path(args.out))
    print(json.dumps({
        "address": deployment.address, "start_block": deployment.start_block, "out": args.out,
        "vk_hash": deployment.vk_hash, "keys": deployment.keys_kind, "transcript_sha256": deployment.transcript_sha256,
    }))
    if deployment.keys_kind == "development":
        print("wafl: deployed with DEVELOPMENT keys (one party made them): for tests only", file=sys.stderr)
    return 0


def cmd_attest(args: argparse.Namespace) -> int:
    from eth_account import Account
    from web3 import HTTPProvider, Web3

    from wafl.chain.artifact import Deployment
    from wafl.chain.attest import AttestError, CeremonyCheck, attest
    from wafl.zk.keys import load_keys

    try:
        deployment = Deployment.load(Path(args.deployment))
    except (FileNotFoundError, ValueError) as exc:
        print(f"wafl: {exc}", file=sys.stderr)
        return 2
    key = _read_secret("WAFL_KEY_FILE", args.key_file, "participant key")
    try:
        account = Account.from_key(key)
    except (ValueError, TypeError):
        raise SystemExit("the participant key is not a valid private key") from None
    keys = load_keys(Path(args.keys)) if args.keys else None
    check = None
    if args.mine or args.ptau:
        if not (args.mine and args.ptau and keys is not None):
            print("wafl: checking a ceremony needs --keys, --ptau and --mine", file=sys.stderr)
            return 2
        cfg = deployment.model_config
        from wafl.zk.build import build_circuit

        check = CeremonyCheck(r1cs=build_circuit(cfg).r1cs, ptau=Path(args.ptau), mine=args.mine)
    w3 = Web3(HTTPProvider(args.rpc_url, request_kwargs={"timeout": 10}))
    if not w3.is_connected():
        print(f"wafl: no Ethereum node answers at {args.rpc_url}", file=sys.stderr)
        return 2
    from wafl.zk.ceremony import CeremonyError

    try:
        tx = attest(w3, deployment, account, keys, check)
    except (AttestError, CeremonyError) as exc:
        print(f"wafl: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"participant": account.address, "vk_hash": deployment.vk_hash, "tx": tx or None,
                      "already_attested": not tx}))
    return 0


def cmd_bench_gas(args: argparse.Namespace) -> int:
    from tools.bench.gas import BenchOptions, bench_config

    options = BenchOptions(participants=args.participants, rounds=args.rounds)
    for name in _configs(args.config):
        row = bench_config(load_config(name), options)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"{name}:")
            for key, value in row.items():
                print(f"  {key:36} {value}")
    return 0


def cmd_bench_prove(args: argparse.Namespace) -> int:
    from tools.bench.prove import ProveBenchOptions, bench_prove

    options = ProveBenchOptions(runs=args.runs, cores=args.cores, max_phase1_power=args.max_phase1_power)
    for name in _configs(args.config):
        for row in bench_prove(load_config(name), options):
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """Run one service as a plain process: settings validated, start-up checks, then consume."""
    import asyncio

    from services import spec
    from wafl.bus.service import StartupError
    from wafl.bus.settings import SettingsError, load_settings

    service = spec(args.service)
    try:
        settings = load_settings(service.settings, Path(args.settings) if args.settings else None)
        asyncio.run(service.serve(settings))
    except (SettingsError, StartupError) as exc:
        print(f"wafl {args.service}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    import asyncio

    from tools.tail import tail_until_signalled
    from wafl.bus.secrets import register_url, safe_url
    from wafl.bus.settings import DEFAULT_AMQP_URL

    url = args.amqp_url or os.environ.get("WAFL_AMQP_URL", DEFAULT_AMQP_URL)
    org = args.org or os.environ.get("WAFL_ORG")
    if not org:
        print("wafl tail: which organisation? pass --org or set WAFL_ORG", file=sys.stderr)
        return 2
    register_url(url)
    try:
        asyncio.run(tail_until_signalled(url, org, args.pattern, raw=args.json, dead_letters=args.dead_letters,
                                         count=args.count, echo=lambda line: print(line, flush=True),
                                         ready=lambda where: print(f"wafl tail: {where}; Ctrl-C stops",
                                                                   file=sys.stderr, flush=True)))
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"wafl tail: cannot reach RabbitMQ at {safe_url(url)}: {exc.__class__.__name__}", file=sys.stderr)
        return 2
    return 0


def cmd_grafana_push(args: argparse.Namespace) -> int:
    token = os.environ.get("GRAFANA_TOKEN", "")
    if not token:
        print("wafl grafana push: set GRAFANA_TOKEN (a Grafana service-account token)", file=sys.stderr)
        return 2
    try:
        from tools.grafana_push import push
    except ImportError:
        print("wafl grafana push: grafana-client is not installed: pip install 'wafl[grafana]'", file=sys.stderr)
        return 2
    push(args.url, token)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from tools.simulate.cli import run

    return run(args)


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from tools.bench.pipeline import bench_pipeline

    row = bench_pipeline(load_config(args.config), orgs=args.orgs, rounds=args.rounds, jobs=args.jobs)
    if args.json:
        print(json.dumps(row), flush=True)
    else:
        for key, value in row.items():
            print(f"  {key:32} {value}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="wafl", description="Web3-accelerated federated learning")
    sub = root.add_subparsers(dest="command", required=True)

    p = sub.add_parser("configs", help="list the bundled model configurations")
    p.set_defaults(func=cmd_configs)

    p = sub.add_parser("build", help="build circuits and this machine's development keys, compile contracts")
    p.add_argument("--config", action="append", help="configuration name (repeatable; default all)")
    p.add_argument("--naive", action="store_true", help="also build the naive benchmark circuit")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("deploy", help="deploy verifier + aggregator and write the artifact file")
    p.add_argument("--config", required=True)
    p.add_argument("--rpc-url", required=True)
    p.add_argument("--key-file", help="file holding the deployer's private key (else $WAFL_DEPLOYER_KEY)")
    p.add_argument("--participants", help="comma-separated participant addresses to register")
    p.add_argument("--quorum", type=int, required=True)
    p.add_argument("--round-duration", type=int, default=3600, help="seconds")
    p.add_argument("--out", required=True, help="artifact path (ABI, address, start block, config, keys)")
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
    p.add_argument("--key-file", help="file holding the participant's private key (else $WAFL_KEY_FILE)")
    p.add_argument("--keys", help="the ceremony's final key directory")
    p.add_argument("--ptau", help="the phase 1 file the ceremony used")
    p.add_argument("--mine", help="the contribution hash `wafl ceremony contribute` printed for you")
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
    p.add_argument("--count", type=int, help="stop after this many events")
    p.set_defaults(func=cmd_tail)

    grafana = sub.add_parser("grafana", help="Grafana dashboards").add_subparsers(dest="grafana", required=True)
    p = grafana.add_parser("push", help="upload the datasource and dashboards with grafana-client")
    p.add_argument("--url", required=True, help="Grafana base URL; the token comes from $GRAFANA_TOKEN")
    p.set_defaults(func=cmd_grafana_push)

    p = sub.add_parser("simulate", help="a whole federation on this machine: services, anvil, real proofs, results")
    from tools.simulate.cli import add_arguments

    add_arguments(p)
    p.set_defaults(func=cmd_simulate)

    bench = sub.add_parser("bench", help="benchmarks that print their figures").add_subparsers(
        dest="bench", required=True
    )
    p = bench.add_parser("gas", help="constraints, proof seconds and gas per configuration vs naive")
    p.add_argument("--config", action="append", help="configuration name (repeatable; default all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--participants", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.set_defaults(func=cmd_bench_gas)

    p = bench.add_parser("prove", help="witness and prove seconds per backend vs zokrates-js, alternating runs")
    p.add_argument("--config", action="append", help="configuration name (repeatable; default all)")
    p.add_argument("--runs", type=int, default=5, help="jobs per backend (plus one unmeasured warm-up)")
    p.add_argument("--cores", type=int, default=1, help="cores each backend's processes may use")
    p.add_argument("--max-phase1-power", type=int, default=12,
                   help="largest local phase 1 to make for the snarkjs backend's ceremony keys")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_bench_prove)

    p = bench.add_parser("pipeline", help="round latency split and prover-pool throughput (1 vs 2 replicas)")
    p.add_argument("--config", default="wine-13x3-b16")
    p.add_argument("--orgs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=8, help="prover jobs for the throughput measurement")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench_pipeline)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except (ConfigError, KeySetError) as exc:
        print(f"wafl: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
