"""`wafl model export` and `wafl model evaluate` (the work: tools/model.py).

Building the parser imports nothing heavy: torch, web3, onnx and safetensors are imported by the
commands when they run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    from tools.cli import connect, load_deployment, writable
    from tools.model import check_out

    # The cheap checks first: the file to write, the artifact; then the node.
    out = Path(args.out)
    check_out(out)
    writable(out, "--out")
    deployment = load_deployment(Path(args.deployment))
    w3 = connect(args.rpc_url)
    from tools.model import export_model

    print(json.dumps(export_model(w3, deployment, args.round, out)))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tools.model import evaluate_model

    result = evaluate_model(Path(args.model), Path(args.data), args.config, args.standardised)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"accuracy {result['accuracy']:.4f}, loss {result['loss']:.4f} on {result['rows']} rows of "
              f"{result['data']}: {result['config']} after round {result['round']} of {result['contract']} "
              f"(chain {result['chain_id']}, block {result['block_number']}); standardisation "
              f"{result['standardisation']}")
    return 0


def _round(text: str) -> int:
    from tools.cli import at_least  # here: tools.cli imports this module as it starts

    return at_least(1)(text)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `wafl model export` and `wafl model evaluate` to the `wafl` parser."""
    model = sub.add_parser("model", help="the federation's model: export it from the chain, evaluate it on data")
    commands = model.add_subparsers(dest="model", required=True)

    p = commands.add_parser("export", help="the global model after a finalised round, read from the chain, "
                            "as .pt (torch state_dict), .safetensors or .onnx, with its provenance")
    p.add_argument("--deployment", required=True, help="the deployment artifact (`wafl deploy --out`)")
    p.add_argument("--rpc-url", required=True, help="an Ethereum node of the deployment's chain")
    p.add_argument("--round", type=_round, help="export the global model after this round "
                   "(default: the last finalised)")
    p.add_argument("--out", required=True, help="the file to write; its suffix picks the format "
                   "(.pt, .safetensors, .onnx)")
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("evaluate", help="accuracy and loss of an exported model on a CSV or NPZ data file")
    p.add_argument("--model", required=True, help="a file `wafl model export` wrote")
    p.add_argument("--data", required=True, help="features and labels, as `wafl simulate --data` takes them "
                   "(raw: standardised as the federation did)")
    p.add_argument("--config", help="refuse a model of any other configuration (a bundled name or a YAML file)")
    p.add_argument("--standardised", action="store_true",
                   help="the features are already standardised: use them as they are")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(func=cmd_evaluate)
