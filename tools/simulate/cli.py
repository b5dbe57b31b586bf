"""`wafl simulate`: arguments, the live display (rich) and the results on disk."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tools.simulate.federation import Plan, RoundRecord, Servers, Simulation
from tools.simulate.federation import Progress as Hooks
from tools.simulate.report import central_baseline, print_results, summary, write_json, write_plot
from tools.tail import format_line
from wafl.bus.logs import configure_logging
from wafl.bus.messages import ChainEvent, Message
from wafl.bus.secrets import register_url
from wafl.core.config import ConfigError, load_config, named_configs
from wafl.data.datasets import LOADERS
from wafl.data.fedsplit import DataFileError, FederationData, bundled, from_files

DEFAULT_CONFIG = "wine-13x3-b16"
DEFAULT_ORGS = 4
DEFAULT_ROUNDS = 8  # the default configuration has converged by then (see the README)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"model configuration ({', '.join(named_configs())})")
    p.add_argument("--orgs", type=int, default=DEFAULT_ORGS, help="organisations (ignored with --data)")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    p.add_argument("--dataset", choices=sorted(LOADERS), help="bundled dataset (default: the configuration's)")
    p.add_argument("--alpha", type=float, help="non-IID split: Dirichlet concentration per class (default: IID)")
    p.add_argument("--data", type=Path, nargs="+", metavar="FILE",
                   help="one CSV or NPZ file per organisation, instead of a bundled dataset")
    p.add_argument("--malicious", type=int, default=0, metavar="K", help="organisations that submit poisoned updates")
    p.add_argument("--attack", choices=["scaled", "random"], default="scaled", help="the poisoned weights")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("wafl-simulation"), help="results.json and results.png go here")
    p.add_argument("--amqp-url", help="a real RabbitMQ instead of the in-process broker")
    p.add_argument("--redis-url", help="a real Redis instead of the in-process stand-in")
    p.add_argument("--rpc-url", help="a running development chain instead of a new anvil")
    p.add_argument("--round-timeout", type=float, default=300.0, help="seconds a round may take")
    p.add_argument("--verbose", action="store_true", help="the services' own logs too")


class UsageError(ValueError):
    pass


def plan_from(args: argparse.Namespace) -> Plan:
    cfg = load_config(args.config)
    if args.rounds < 1:
        raise UsageError("--rounds must be at least 1")
    if args.alpha is not None and args.alpha <= 0:
        raise UsageError("--alpha must be positive")
    data: FederationData
    if args.data:
        data = from_files(cfg, list(args.data), args.seed)
    else:
        if not 2 <= args.orgs <= cfg.max_participants:
            raise UsageError(f"--orgs must be between 2 and {cfg.max_participants} (the lane headroom of {cfg.name})")
        dataset = args.dataset or cfg.dataset
        if dataset is None:
            raise UsageError(f"configuration {cfg.name} names no dataset: pass --dataset or --data")
        data = bundled(cfg, dataset, args.orgs, args.alpha, args.seed)
    if len(data.orgs) > cfg.max_participants:
        raise UsageError(f"{len(data.orgs)} organisations; {cfg.name} has headroom for {cfg.max_participants}")
    if not 0 <= args.malicious < len(data.orgs):
        raise UsageError(f"--malicious must leave at least one honest organisation (0 to {len(data.orgs) - 1})")
    for url in (args.amqp_url, args.redis_url):
        if url:
            register_url(url)  # never printed with its password
    return Plan(cfg, data, args.rounds, args.malicious, args.attack, args.seed, args.round_timeout,
                Servers(args.amqp_url, args.redis_url, args.rpc_url))


async def _until_terminated(simulation: Simulation) -> list[RoundRecord]:
    """Ctrl-C and SIGTERM cancel the run, so that its clean-up runs. Installed here rather than
    left to asyncio.run, which skips SIGINT when the process inherited it ignored (a background
    job of a non-interactive shell)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await simulation.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run(args: argparse.Namespace) -> int:
    from wafl.chain.deploy import DeploymentError

    console = Console(log_path=False, width=None if sys.stdout.isatty() else 140)
    try:
        plan = plan_from(args)
    except (UsageError, DataFileError, ConfigError, ValueError) as exc:
        print(f"wafl simulate: {exc}", file=sys.stderr)
        return 2
    configure_logging("simulate", "local", "info" if args.verbose else "warning")
    started = time.monotonic()
    console.print(f"WaFL simulation: {plan.cfg.name}, {plan.orgs} organisations ({plan.data.source}), "
                  f"{plan.malicious} malicious, {plan.rounds} rounds", highlight=False)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bars:
        rounds_bar = bars.add_task("rounds", total=plan.rounds)
        proofs_bar = bars.add_task("proofs this round", total=plan.honest)
        simulation = Simulation(plan, _hooks(console, bars, rounds_bar, proofs_bar, plan))
        try:
            records = asyncio.run(_until_terminated(simulation))
        except (KeyboardInterrupt, asyncio.CancelledError):
            console.print("interrupted: anvil, provers and connections stopped")
            return 130
        except TimeoutError as exc:
            print(f"wafl simulate: {exc}", file=sys.stderr)
            return 1
        except DeploymentError as exc:
            print(f"wafl simulate: {exc}", file=sys.stderr)
            return 2
    console.print("training the central baseline (float, all data)...")
    central = central_baseline(plan.cfg, plan.data, plan.seed)
    rejections = [vars(r) for r in simulation.rejections]
    result = summary(plan.cfg, plan.data, records, central, plan.malicious, time.monotonic() - started, rejections)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", result)
    write_plot(args.out / "results.png", result)
    print_results(console, result, records)
    console.print(f"results: {args.out / 'results.json'}, plot: {args.out / 'results.png'}")
    return 0


def _hooks(console: Console, bars: Progress, rounds_bar: Any, proofs_bar: Any, plan: Plan) -> Hooks:
    first_org: list[str] = []
    proved = [0]

    def on_event(org: str, event: Message) -> None:
        if not first_org:
            first_org.append(org)
        # Chain events reach every organisation: shown once, from the first.
        if isinstance(event, ChainEvent) and org != first_org[0]:
            return
        line = format_line(event.routing_key, event.model_dump_json().encode(), {}, raw=False, dead_letter=False)
        console.log(f"INFO  {org:>6}  {line}", highlight=False)
        if event.routing_key == "proof.generated":
            proved[0] += 1
            bars.update(proofs_bar, completed=min(plan.honest, proved[0]))

    def on_round(record: RoundRecord) -> None:
        bars.update(rounds_bar, advance=1)
        proved[0] = 0
        bars.update(proofs_bar, completed=0)
        console.log(f"INFO  round {record.round} finalised: accuracy {record.accuracy:.3f}, "
                    f"{record.accepted} accepted, {record.rejected} rejected", highlight=False)

    return Hooks(on_event=on_event, on_round=on_round, on_start=lambda text: console.log(f"INFO  {text}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wafl simulate")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
