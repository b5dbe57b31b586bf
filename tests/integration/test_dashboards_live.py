"""Every panel of every committed dashboard shows data: a real Prometheus (Debian's package)
scrapes a short federation run (every service a process) and RabbitMQ's own Prometheus endpoint,
then each panel's query goes to its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tools.localnet import Federation, federation
from wafl.chain.anvil import free_port
from wafl.core.config import load_config
from wafl.zk.build import build_circuit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "deploy" / "grafana"))
from queries import PanelQuery, panel_queries  # noqa: E402

CONFIG = "wine-13x3-b16"
RABBITMQ_METRICS = "127.0.0.1:15692"  # the rabbitmq_prometheus plugin (`make setup` enables it)


def get_json(url: str) -> Any:
    return json.loads(urllib.request.urlopen(url, timeout=10).read())


def scrape_config(fed: Federation) -> dict[str, Any]:
    """What deploy/prometheus/prometheus.yml and the PodMonitors do: org and component labels."""
    targets = [
        {"targets": [f"127.0.0.1:{p.metrics_port}"], "labels": {"org": p.org, "component": p.service}}
        for org in fed.orgs for p in org.processes
    ]
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "wafl", "static_configs": targets},
            {"job_name": "rabbitmq", "metrics_path": "/metrics/per-object",
             "static_configs": [{"targets": [RABBITMQ_METRICS], "labels": {"component": "broker"}}]},
        ],
    }


@pytest.fixture()
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    binary = shutil.which("prometheus")
    assert binary, "Debian's prometheus package is not installed (`make setup` installs it)"
    try:
        urllib.request.urlopen(f"http://{RABBITMQ_METRICS}/metrics", timeout=5).read()
    except OSError as exc:
        pytest.fail(f"RabbitMQ's Prometheus endpoint is not reachable ({exc}): "
                    "`rabbitmq-plugins enable rabbitmq_prometheus` (`make setup` does it)")
    config = tmp_path / "prometheus.yml"
    config.write_text("scrape_configs: []\n")
    port = free_port()
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((tmp_path / "prometheus.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        yield url, config
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def query(url: str, q: PanelQuery) -> list[Any]:
    answer = get_json(f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": q.expr}))
    assert answer["status"] == "success", answer
    result: list[Any] = answer["data"]["result"]
    return result


@pytest.mark.slow
def test_every_dashboard_panel_returns_data(prometheus: tuple[str, Path], tmp_path: Path) -> None:
    url, config = prometheus
    build_circuit(load_config(CONFIG))
    queries = panel_queries()
    assert len(queries) >= 30
    with federation(load_config(CONFIG), tmp_path, org_count=2) as fed:
        fed.start_all()
        config.write_text(yaml.safe_dump(scrape_config(fed)))
        urllib.request.urlopen(urllib.request.Request(f"{url}/-/reload", method="POST"), timeout=10)
        fed.wait_for_round(1, 240)
        fed.wait_for_round(2, 240)
        deadline = time.monotonic() + 60
        while True:
            empty = [q for q in queries if not query(url, q)]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(2)
        targets = get_json(f"{url}/api/v1/targets")["data"]["activeTargets"]
    assert all(t["health"] == "up" for t in targets), [(t["labels"], t["lastError"]) for t in targets]
    assert len(targets) == 2 * 5 + 1
    assert not empty, "panels without data:\n" + "\n".join(f"{q.dashboard} / {q.panel}: {q.expr}" for q in empty)
