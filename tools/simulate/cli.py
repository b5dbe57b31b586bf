"""`wafl simulate`: the run, the live display (rich) and the results on disk (arguments: args.py)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tools.errors import UsageError
from tools.simulate.args import config_name
from tools.simulate.federation import Plan, RoundRecord, Servers, Simulation
from tools.simulate.federation import Progress as Hooks
from tools.simulate.report import central_baseline, print_results, summary, write_json, write_plot
from tools.tail import format_line
from wafl.bus.logs import configure_logging
from wafl.bus.messages import ChainEvent, Message
from wafl.core.config import load_config
from wafl.data.fedsplit import FederationData, bundled, from_files


def plan_from(args: argparse.Namespace) -> Plan:
    """The run that arguments checked by `check_arguments` ask for; DataFileError (UsageError) for
    data that cannot be used."""
    cfg = load_config(config_name(args))
    data: FederationData
    if args.data:
        data = from_files(cfg, list(args.data), args.seed)
    else:
        dataset = args.dataset or cfg.dataset
        assert dataset is not None, "check_arguments refuses a configuration without a dataset"
        try:
            data = bundled(cfg, dataset, args.orgs, args.alpha, args.seed)
        except ValueError as exc:  # wafl.data.datasets says so in a plain ValueError: a dataset that does not fit
            raise UsageError(str(exc)) from None
    # A running chain outlives the run: its accounts' keys are kept in --out, for the next run to
    # find them funded (a node without a cheat code is funded by hand between the two).
    return Plan(cfg, data, args.rounds, args.malicious, args.attack, args.seed, args.round_timeout,
                Servers(args.amqp_url, args.redis_url, args.rpc_url),
                accounts=args.out / "keys" if args.rpc_url else None)


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
    """The simulation of arguments `check_arguments` passed (`wafl simulate` checks them first); bad
    data is raised for the command line to report."""
    console = Console(log_path=False, width=None if sys.stdout.isatty() else 140)
    plan = plan_from(args)
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
        finally:
            # The artifact of the run's chain, kept whatever the outcome: `wafl model export` reads
            # the global model of its finalised rounds from a chain that outlives the run (--rpc-url).
            if simulation.deployment is not None:
                simulation.deployment.save(args.out / "deployment.json")
    console.print("training the central baseline (float, all data)...")
    central = central_baseline(plan.cfg, plan.data, plan.seed)
    rejections = [vars(r) for r in simulation.rejections]
    result = summary(plan.cfg, plan.data, records, central, plan.malicious, time.monotonic() - started, rejections)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", result)
    write_plot(args.out / "results.png", result)
    print_results(console, result, records)
    console.print(f"results: {args.out / 'results.json'}, plot: {args.out / 'results.png'}, "
                  f"deployment: {args.out / 'deployment.json'}")
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
    """`python -m tools.simulate.cli ...`: `wafl simulate ...`."""
    from tools.cli import main as wafl

    return wafl(["simulate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
