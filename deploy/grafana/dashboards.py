"""WaFL's Grafana dashboards as code, with grafana-foundation-sdk (Grafana's own, pinned in pyproject's
dev extras). Regenerate the committed JSON after a change:

    .venv/bin/python deploy/grafana/dashboards.py           # writes deploy/grafana/dashboards/*.json
    .venv/bin/python deploy/grafana/dashboards.py --check   # exit 1 when the JSON is stale

Two dashboards, both with a Prometheus datasource variable (so they work with the provisioned
``wafl-prometheus`` datasource of docker-compose and with any Prometheus on Kubernetes) and an
``org`` variable:

- ``wafl-federation`` (federation overview): round, accepted and failed updates, global model
  accuracy and loss, gas per update, chain reorganisations, secure aggregation's voided rounds and
  exclusions, proof / training / queue-wait durations, prover queue depth and replicas, dead letters;
- ``wafl-services`` (per service): targets up, FastStream message rates, statuses, latencies and
  exceptions, WaFL handler counters, the service's queues, CPU and memory.

Labels the queries rely on: ``org`` and ``component`` are target labels set by the scrape
configuration (deploy/prometheus/prometheus.yml, the Kubernetes PodMonitors); ``service``, ``kind``,
``reason``... come from the services' own metrics; ``app_name`` from FastStream's middleware
(the service name); ``queue`` from RabbitMQ's per-object metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as common_builder
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog import variants
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    VariableOption,
    VariableRefresh,
    VariableSort,
)

from services import SERVICE_NAMES

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# ---- metric names (the services' prometheus-client metrics; counters get _total) ---------------

# Chain facts: gauges equal to the canonical chain's totals, so a reorganisation can lower them
# (per interval: delta, which may be negative; totals: max by org, one fact however many replicas).
ROUNDS_OPENED = "wafl_chain_rounds_opened"  # gauge
ROUNDS_FINALIZED = "wafl_chain_rounds_finalized"  # gauge
UPDATES_ACCEPTED = "wafl_chain_updates_accepted"  # gauge
REORGS = "wafl_chain_reorgs_total"  # reorganisations deeper than the confirmation depth
REORG_DEPTH = "wafl_chain_reorg_depth_blocks"  # histogram
# Secure aggregation (0 without): voided rounds and exclusions are chain facts like the above.
ROUNDS_VOIDED = "wafl_chain_rounds_voided"  # gauge
MEMBERS_EXCLUDED = "wafl_chain_members_excluded"  # gauge
ROUND_SET_SIZE = "wafl_round_set_size"  # gauge, the open round's set
CURRENT_ROUND = "wafl_current_round"
UPDATES_FAILED = "wafl_updates_failed_total"
GLOBAL_ACCURACY = "wafl_global_model_accuracy"
GLOBAL_LOSS = "wafl_global_model_loss"
TX_GAS = "wafl_tx_gas_used"  # histogram
PROOF_SECONDS = "wafl_proof_duration_seconds"  # histogram
TRAIN_SECONDS = "wafl_train_duration_seconds"  # histogram
QUEUE_SECONDS = "wafl_proof_queue_seconds"  # histogram
DEAD_LETTERED = "wafl_messages_dead_lettered_total"
HANDLED = "wafl_messages_handled_total"
DUPLICATES = "wafl_duplicates_skipped_total"

SERVICES = SERVICE_NAMES
SERVICE_RE = "|".join(SERVICES)

ORG = 'org=~"$org"'
COMPONENT = 'component=~"$component"'
PROVER_JOBS_QUEUE = r'queue=~"wafl\\.($org)\\.prover\\.jobs"'
DEAD_LETTER_QUEUE = r'queue=~"wafl\\.($org)\\.dead-letters"'
SERVICE_QUEUES = r'queue=~"wafl\\.($org)\\.($component)\\..+"'
RATE = "$__rate_interval"

DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")


def chain_delta(gauge: str) -> str:
    """Net change of a chain-fact gauge per interval, by organisation (negative when a
    reorganisation dropped facts)."""
    return f"max by (org) (delta({gauge}{{{ORG}}}[{RATE}]))"


def or_zero(expr: str) -> str:
    """``expr``, or a single 0 while it has no series yet (labelled counters of events that have
    not happened: failures, dead letters, duplicates)."""
    return f"({expr}) or on() vector(0)"


# ---- panel helpers ------------------------------------------------------------------------------


def _query(expr: str, legend: str, ref: str, *, instant: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)
    return query.instant() if instant else query.range()


def _targets(queries: Sequence[tuple[str, str]], *, instant: bool = False) -> list[Builder[variants.Dataquery]]:
    return [_query(expr, legend, chr(ord("A") + i), instant=instant) for i, (expr, legend) in enumerate(queries)]


def ts(title: str, description: str, queries: Sequence[tuple[str, str]], *, unit: str = "short",
       span: int = 12, height: int = 8, minimum: float | None = None, maximum: float | None = None,
       bars: bool = False) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .unit(unit)
        .span(span)
        .height(height)
        .legend(common_builder.VizLegendOptions().show_legend(True).display_mode(common.LegendDisplayMode.LIST)
                .placement(common.LegendPlacement.BOTTOM))
        .tooltip(common_builder.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI))
        .fill_opacity(10)
        .line_width(1)
    )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    if minimum is not None:
        panel = panel.min(minimum)
    if maximum is not None:
        panel = panel.max(maximum)
    return panel


def single(title: str, description: str, queries: Sequence[tuple[str, str]], *, unit: str = "short",
           span: int = 6, height: int = 4, decimals: float | None = None) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries, instant=True))
        .unit(unit)
        .span(span)
        .height(height)
        .graph_mode(common.BigValueGraphMode.NONE)
        .reduce_options(common_builder.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if decimals is not None:
        panel = panel.decimals(decimals)
    return panel


def _datasource_variable() -> dash.DatasourceVariable:
    return dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def _org_variable() -> dash.QueryVariable:
    return (
        dash.QueryVariable("org")
        .label("Organisation")
        .description("Participant organisation (the org target label)")
        .datasource(DATASOURCE)
        .query({"query": f'label_values(up{{component=~"{SERVICE_RE}"}}, org)', "refId": "org"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def _base(uid: str, title: str, description: str) -> dash.Dashboard:
    return (
        dash.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["wafl"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .with_variable(_datasource_variable())
        .with_variable(_org_variable())
    )


# ---- the dashboards -----------------------------------------------------------------------------


def federation_overview() -> dash.Dashboard:
    d = _base(
        "wafl-federation",
        "WaFL federation",
        "Progress of the federation as seen by each participant organisation: rounds, updates, the "
        "global model's quality, gas, secure aggregation's voided rounds and exclusions, proofs, the prover pool and "
        "dead letters.",
    )
    d = d.with_row(dash.Row("Rounds and updates"))
    d = d.with_panel(single("Current round", "The aggregator's current round.",
                            [(f"max by (org) ({CURRENT_ROUND}{{{ORG}}})", "{{org}}")], decimals=0))
    d = d.with_panel(single("Rounds finalised", "Rounds finalised on the canonical chain.",
                            [(f"max by (org) ({ROUNDS_FINALIZED}{{{ORG}}})", "{{org}}")], decimals=0))
    d = d.with_panel(single("Updates accepted", "Updates accepted on the canonical chain (every participant's).",
                            [(f"max by (org) ({UPDATES_ACCEPTED}{{{ORG}}})", "{{org}}")], decimals=0))
    d = d.with_panel(single("Updates failed", "Updates of this organisation that failed, all reasons.",
                            [(or_zero(f"sum by (org) ({UPDATES_FAILED}{{{ORG}}})"), "{{org}}")], decimals=0))
    d = d.with_panel(ts(
        "Rounds opened and finalised", "Rounds opened and finalised on the canonical chain per interval "
        "(negative when a reorganisation dropped some).",
        [(chain_delta(ROUNDS_OPENED), "{{org}} opened"),
         (chain_delta(ROUNDS_FINALIZED), "{{org}} finalised")],
        span=8, bars=True))
    d = d.with_panel(ts(
        "Accepted and failed updates", "Updates accepted on the canonical chain (negative when a reorganisation "
        "dropped some) and update.failed events by reason, per interval.",
        [(chain_delta(UPDATES_ACCEPTED), "{{org}} accepted"),
         (or_zero(f"sum by (org, reason) (increase({UPDATES_FAILED}{{{ORG}}}[{RATE}]))"),
          "{{org}} failed: {{reason}}")],
        span=16, bars=True))

    d = d.with_row(dash.Row("Global model"))
    d = d.with_panel(ts(
        "Global model accuracy", "Accuracy of each finalised global model on the organisation's held-out data.",
        [(f"max by (org) ({GLOBAL_ACCURACY}{{{ORG}}})", "{{org}}")], unit="percentunit", minimum=0, maximum=1))
    d = d.with_panel(ts(
        "Global model loss", "Loss of each finalised global model on the organisation's held-out data.",
        [(f"max by (org) ({GLOBAL_LOSS}{{{ORG}}})", "{{org}}")], minimum=0))

    d = d.with_row(dash.Row("Chain"))
    d = d.with_panel(single(
        "Mean gas per update", "Mean gas of this organisation's mined submitUpdate transactions.",
        [(f'sum by (org) ({TX_GAS}_sum{{{ORG}, kind="update"}})'
          f' / sum by (org) ({TX_GAS}_count{{{ORG}, kind="update"}})', "{{org}}")],
        unit="none", span=6, height=8, decimals=0))
    d = d.with_panel(ts(
        "Gas per transaction", "Median and 95th percentile of the gas of mined transactions, by kind.",
        [(f"histogram_quantile(0.5, sum by (le, org, kind) (rate({TX_GAS}_bucket{{{ORG}}}[{RATE}])))",
          "{{org}} {{kind}} p50"),
         (f"histogram_quantile(0.95, sum by (le, org, kind) (rate({TX_GAS}_bucket{{{ORG}}}[{RATE}])))",
          "{{org}} {{kind}} p95")],
        unit="none", span=10))
    d = d.with_panel(ts(
        "Chain reorganisations", "Reorganisations deeper than the confirmation depth seen by the chain watcher, "
        "per interval, and their mean depth in blocks (its log line chain_reorged names the fork block).",
        [(or_zero(f"sum by (org) (increase({REORGS}{{{ORG}}}[{RATE}]))"), "{{org}} reorganisations"),
         (or_zero(f"sum by (org) (increase({REORG_DEPTH}_sum{{{ORG}}}[{RATE}]))"
                  f" / clamp_min(sum by (org) (increase({REORG_DEPTH}_count{{{ORG}}}[{RATE}])), 1)"),
          "{{org}} mean depth (blocks)")],
        span=8, bars=True))

    d = d.with_row(dash.Row("Secure aggregation"))
    d = d.with_panel(ts(
        "Secure aggregation: voided rounds and exclusions", "Rounds voided on the canonical chain (members of the "
        "round's set missing at the deadline: the model is unchanged), exclusions from the round sets (a member "
        "stays out until its submitter calls rejoin(): log rejoined), and the open round's set size. All 0 "
        "without secure aggregation.",
        [(f"max by (org) ({ROUNDS_VOIDED}{{{ORG}}})", "{{org}} rounds voided"),
         (f"max by (org) ({MEMBERS_EXCLUDED}{{{ORG}}})", "{{org}} exclusions"),
         (f"max by (org) ({ROUND_SET_SIZE}{{{ORG}}})", "{{org}} round set size")],
        unit="none", span=24, minimum=0))

    d = d.with_row(dash.Row("Proofs and the prover pool"))
    d = d.with_panel(ts(
        "Proof duration", "Witness + Groth16 proof time per job (median, 95th percentile).",
        [(f"histogram_quantile(0.5, sum by (le, org) (rate({PROOF_SECONDS}_bucket{{{ORG}}}[{RATE}])))",
          "{{org}} p50"),
         (f"histogram_quantile(0.95, sum by (le, org) (rate({PROOF_SECONDS}_bucket{{{ORG}}}[{RATE}])))",
          "{{org}} p95")],
        unit="s"))
    d = d.with_panel(ts(
        "Training and queue wait", "Median training time per round and median wait of a job in the prover queue.",
        [(f"histogram_quantile(0.5, sum by (le, org) (rate({TRAIN_SECONDS}_bucket{{{ORG}}}[{RATE}])))",
          "{{org}} training p50"),
         (f"histogram_quantile(0.5, sum by (le, org) (rate({QUEUE_SECONDS}_bucket{{{ORG}}}[{RATE}])))",
          "{{org}} queue wait p50")],
        unit="s"))
    d = d.with_panel(ts(
        "Prover queue depth", "Jobs waiting (ready) and being proved (unacknowledged) in wafl.<org>.prover.jobs; "
        "KEDA scales the provers on their sum.",
        [(f"sum by (queue) (rabbitmq_queue_messages_ready{{{PROVER_JOBS_QUEUE}}})", "{{queue}} ready"),
         (f"sum by (queue) (rabbitmq_queue_messages_unacked{{{PROVER_JOBS_QUEUE}}})", "{{queue}} unacked")]))
    d = d.with_panel(ts(
        "Prover replicas", "Prover replicas up (scraped), per organisation.",
        [(f'sum by (org) (up{{component="prover", {ORG}}})', "{{org}}")], unit="none", minimum=0))

    d = d.with_row(dash.Row("Dead letters"))
    d = d.with_panel(ts(
        "Dead-lettered messages", "Messages a service dead-lettered, by service and kind "
        "(invalid, rejected, failed after the delivery limit).",
        [(or_zero(f"sum by (org, service, kind) (increase({DEAD_LETTERED}{{{ORG}}}[{RATE}]))"),
          "{{org}} {{service}} {{kind}}")], bars=True))
    d = d.with_panel(ts(
        "Dead-letter queue", "Messages held in wafl.<org>.dead-letters (inspect with `wafl tail --dead-letters`).",
        [(f"sum by (queue) (rabbitmq_queue_messages_ready{{{DEAD_LETTER_QUEUE}}})", "{{queue}}")]))
    return d


def _component_variable() -> dash.QueryVariable:
    return (
        dash.QueryVariable("component")
        .label("Service")
        .datasource(DATASOURCE)
        .query({"query": f'label_values(up{{component=~"{SERVICE_RE}", {ORG}}}, component)', "refId": "component"})
        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".+")
        .current(VariableOption(selected=True, text="All", value="$__all"))
    )


def service_view() -> dash.Dashboard:
    d = _base(
        "wafl-services",
        "WaFL services",
        "Each WaFL service of an organisation: scrape status, FastStream message rates and latencies, "
        "WaFL handler counters, the service's queues and its process resources.",
    ).with_variable(_component_variable())
    app = 'app_name=~"$component"'
    svc = 'service=~"$component"'
    d = d.with_row(dash.Row("Health"))
    d = d.with_panel(ts(
        "Targets up", "Scraped replicas per service (1 per healthy replica).",
        [(f"sum by (org, component) (up{{{ORG}, {COMPONENT}}})", "{{org}} {{component}}")], span=12, minimum=0))
    d = d.with_panel(ts(
        "Messages in process", "Messages being handled right now.",
        [(f"sum by (org, app_name) (faststream_received_messages_in_process{{{ORG}, {app}}})",
          "{{org}} {{app_name}}")], span=12, minimum=0))

    d = d.with_row(dash.Row("Messages (FastStream)"))
    d = d.with_panel(ts(
        "Messages received", "Messages received per second, by handler.",
        [(f"sum by (org, app_name, handler) (rate(faststream_received_messages_total{{{ORG}, {app}}}[{RATE}]))",
          "{{org}} {{app_name}} {{handler}}")], unit="reqps"))
    d = d.with_panel(ts(
        "Messages processed by status", "acked, nacked, rejected, skipped, error per second.",
        [("sum by (org, app_name, status) "
          f"(rate(faststream_received_processed_messages_total{{{ORG}, {app}}}[{RATE}]))",
          "{{org}} {{app_name}} {{status}}")], unit="reqps"))
    d = d.with_panel(ts(
        "Processing time", "95th percentile of the handlers' processing time.",
        [("histogram_quantile(0.95, sum by (le, org, app_name, handler) "
          f"(rate(faststream_received_processed_messages_duration_seconds_bucket{{{ORG}, {app}}}[{RATE}])))",
          "{{org}} {{app_name}} {{handler}} p95")], unit="s"))
    d = d.with_panel(ts(
        "Handler exceptions", "Exceptions raised by handlers, by type.",
        [(or_zero("sum by (org, app_name, exception_type) "
                  f"(increase(faststream_received_processed_messages_exceptions_total{{{ORG}, {app}}}[{RATE}]))"),
          "{{org}} {{app_name}} {{exception_type}}")], bars=True))
    d = d.with_panel(ts(
        "Messages published", "Messages published per second, by destination.",
        [(f"sum by (org, app_name, destination) (rate(faststream_published_messages_total{{{ORG}, {app}}}[{RATE}]))",
          "{{org}} {{app_name}} → {{destination}}")], unit="reqps", span=24))

    d = d.with_row(dash.Row("WaFL handlers"))
    d = d.with_panel(ts(
        "Handled", "Messages a WaFL handler processed successfully, by queue.",
        [(f"sum by (org, service, queue) (rate({HANDLED}{{{ORG}, {svc}}}[{RATE}]))", "{{org}} {{queue}}")],
        unit="reqps", span=8))
    d = d.with_panel(ts(
        "Duplicates skipped", "Redeliveries recognised by their idempotency key and not redone.",
        [(or_zero(f"sum by (org, service, stage) (increase({DUPLICATES}{{{ORG}, {svc}}}[{RATE}]))"),
          "{{org}} {{service}} {{stage}}")], span=8, bars=True))
    d = d.with_panel(ts(
        "Dead letters", "Messages dead-lettered, by queue and kind.",
        [(or_zero(f"sum by (org, service, queue, kind) (increase({DEAD_LETTERED}{{{ORG}, {svc}}}[{RATE}]))"),
          "{{org}} {{queue}} {{kind}}")], span=8, bars=True))

    d = d.with_row(dash.Row("Queues and resources"))
    d = d.with_panel(ts(
        "Service queues", "Ready and unacknowledged messages in the queues the service consumes "
        "(wafl.<org>.<service>.<topic>, wafl.<org>.prover.jobs).",
        [(f"sum by (queue) (rabbitmq_queue_messages_ready{{{SERVICE_QUEUES}}})", "{{queue}} ready"),
         (f"sum by (queue) (rabbitmq_queue_messages_unacked{{{SERVICE_QUEUES}}})", "{{queue}} unacked")], span=8))
    d = d.with_panel(ts(
        "CPU", "CPU seconds per second, per replica.",
        [(f"sum by (org, component, instance) (rate(process_cpu_seconds_total{{{ORG}, {COMPONENT}}}[{RATE}]))",
          "{{org}} {{component}} {{instance}}")], unit="percentunit", span=8, minimum=0))
    d = d.with_panel(ts(
        "Resident memory", "Resident memory per replica.",
        [(f"sum by (org, component, instance) (process_resident_memory_bytes{{{ORG}, {COMPONENT}}})",
          "{{org}} {{component}} {{instance}}")], unit="bytes", span=8, minimum=0))
    return d


DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "wafl-federation.json": federation_overview,
    "wafl-services.json": service_view,
}


def _numbered(builder: dash.Dashboard) -> object:
    """The dashboard model with stable panel ids 1..n in layout order (links use them)."""
    model = builder.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    return model


def render() -> dict[str, str]:
    """File name -> dashboard JSON text, as committed."""
    return {
        name: json.dumps(_numbered(build()), cls=JSONEncoder, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def stale(directory: Path = DASHBOARD_DIR) -> list[str]:
    """Names of the committed dashboard files that differ from the code (or are missing or extra)."""
    rendered = render()
    present = {p.name for p in directory.glob("*.json")}
    out = sorted(
        name for name, text in rendered.items()
        if not (directory / name).exists() or (directory / name).read_text() != text
    )
    return out + sorted(present - set(rendered))


def write(directory: Path = DASHBOARD_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render().items():
        path = directory / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            written.append(path)
    for extra in set(directory.glob("*.json")) - {directory / n for n in DASHBOARDS}:
        extra.unlink()
        written.append(extra)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate WaFL's Grafana dashboards (JSON).")
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed JSON is stale")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR)
    args = parser.parse_args(argv)
    if args.check:
        names = stale(args.out)
        if names:
            print("stale dashboards (run deploy/grafana/dashboards.py): " + ", ".join(names), file=sys.stderr)
            return 1
        return 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
