"""What the federation tests read back from a running federation (tools/localnet.py): a metrics
service's Prometheus samples, the updates the chain accepted per round, and whether the metrics
agree with the chain."""

from __future__ import annotations

import time
import urllib.request

from tools.localnet import Federation


def scrape(port: int) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return value
    return 0.0


def wait_for_metric(port: int, name: str, at_least: float, timeout: float = 60.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = metric(scrape(port), name, **labels)
        if value >= at_least:
            return value
        time.sleep(0.5)
    return value


def accepted_per_round(fed: Federation) -> dict[int, list[str]]:
    """round -> the participants whose update the chain accepted in it, once per UpdateAccepted."""
    logs = fed.aggregator.contract.events.UpdateAccepted().get_logs(from_block=fed.deployment.start_block)
    rounds: dict[int, list[str]] = {}
    for log in logs:
        rounds.setdefault(int(log["args"]["round"]), []).append(log["args"]["participant"])
    return rounds


def chain_totals(fed: Federation) -> tuple[int, int]:
    """(rounds finalised, updates accepted) as the chain has them now."""
    contract = fed.aggregator.contract
    finalized = contract.events.RoundFinalized().get_logs(from_block=fed.deployment.start_block)
    accepted = contract.events.UpdateAccepted().get_logs(from_block=fed.deployment.start_block)
    return len(finalized), len(accepted)


def metrics_agree_with_chain(fed: Federation, port: int, timeout: float = 60.0) -> tuple[int, int]:
    """Until the metrics service on ``port`` reports the chain's totals (wafl_chain_rounds_finalized,
    wafl_chain_updates_accepted); those totals. The chain is read before and after the metrics, so
    a federation still running (a round finalised meanwhile) is not taken for a disagreement."""
    deadline = time.monotonic() + timeout
    while True:
        before = chain_totals(fed)
        samples = scrape(port)
        seen = (int(metric(samples, "wafl_chain_rounds_finalized")),
                int(metric(samples, "wafl_chain_updates_accepted")))
        if before == seen == chain_totals(fed):
            return seen
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics on :{port} say (finalised, accepted) = {seen}, "
                                 f"the chain {chain_totals(fed)}")
        time.sleep(0.5)
