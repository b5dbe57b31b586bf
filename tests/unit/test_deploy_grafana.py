"""Grafana dashboards as code: the committed JSON is what deploy/grafana/dashboards.py generates,
every panel query is valid PromQL (promtool), the dashboards cover what the issue lists, the
metric names exist in the services, and `push` uploads the datasource and dashboards through
Grafana's HTTP API (a local fake Grafana records the calls)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from tests.support.deploy_helpers import DEPLOY, grafana_module, undefined_metrics
from tools import grafana_push

GRAFANA_DIR = DEPLOY / "grafana"


def test_generated_dashboards_are_up_to_date() -> None:
    dashboards = grafana_module("dashboards")
    assert dashboards.stale() == [], "run: .venv/bin/python deploy/grafana/dashboards.py"


def test_panel_queries_cover_every_panel() -> None:
    queries = grafana_module("queries")
    boards = queries.load_dashboards()
    assert {b["uid"] for b in boards} == {"wafl-federation", "wafl-services"}
    listed = queries.panel_queries()
    for board in boards:
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{board['uid']}: panel ids must be unique"
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert any(q.dashboard == board["uid"] and q.panel_id == panel["id"] for q in listed), panel["title"]
    for q in listed:
        assert "$" not in q.expr.replace("$1", ""), f"unexpanded variable in {q.expr}"
    raw = queries.panel_queries(expand_variables=False)
    assert any("$org" in q.expr for q in raw) and any("$__rate_interval" in q.expr for q in raw)
    with pytest.raises(KeyError, match=r"\$nope"):
        queries.expand('up{x="$nope"}')


def test_federation_overview_shows_what_the_issue_asks_for() -> None:
    queries = grafana_module("queries")
    exprs = " ".join(q.expr for q in queries.panel_queries() if q.dashboard == "wafl-federation")
    for metric in ("wafl_current_round", "wafl_chain_rounds_opened", "wafl_chain_rounds_finalized",
                   "wafl_chain_updates_accepted", "wafl_updates_failed_total", "wafl_chain_reorgs_total",
                   "wafl_chain_reorg_depth_blocks", "wafl_global_model_accuracy", "wafl_global_model_loss",
                   "wafl_tx_gas_used", "wafl_proof_duration_seconds", "rabbitmq_queue_messages_ready",
                   "rabbitmq_queue_messages_unacked", 'up{component="prover"', "wafl_messages_dead_lettered_total",
                   "wafl_chain_rounds_voided", "wafl_chain_members_excluded", "wafl_round_set_size"):
        assert metric in exprs, metric
    assert "prover\\\\.jobs" in exprs


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    queries = grafana_module("queries")
    exprs = [q.expr for q in queries.panel_queries()] + list(queries.variable_queries().values())
    # label_values() is Grafana's, not PromQL: check its selector instead.
    exprs = [re.sub(r"^label_values\((.*), *\w+\)$", r"\1", e) for e in exprs]
    rules = {"groups": [{"name": "panels", "rules": [{"record": f"panel:query{i}", "expr": e}
                                                      for i, e in enumerate(exprs)]}]}
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    proc = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboard_metrics_exist_in_the_services() -> None:
    missing = undefined_metrics(q.expr for q in grafana_module("queries").panel_queries())
    assert not missing, f"dashboard queries use metrics no service defines: {sorted(missing)}"


def test_kubernetes_configmap_lists_every_dashboard() -> None:
    kustomization = yaml.safe_load((GRAFANA_DIR / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    generated = sorted(f"dashboards/{p.name}" for p in (GRAFANA_DIR / "dashboards").glob("*.json"))
    assert sorted(generator["files"]) == generated
    assert kustomization["generatorOptions"]["labels"]["grafana_dashboard"] == "1"


# ---- push ---------------------------------------------------------------------------------------


class FakeGrafana(BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[str, str, Any, str | None]]] = []
    existing: ClassVar[set[str]] = set()

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self.calls.append((method, self.path, body, self.headers.get("Authorization")))
        if method == "GET":
            if self.path in self.existing:
                self._reply(200, {"uid": self.path.rsplit("/", 1)[-1]})
            else:
                self._reply(404, {"message": "not found"})
        else:
            self._reply(200, {"status": "success", "id": 1, "uid": "x"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def grafana() -> Iterator[str]:
    FakeGrafana.calls = []
    FakeGrafana.existing = set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeGrafana)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_push_creates_datasource_folder_and_dashboards(grafana: str) -> None:
    push = grafana_push
    lines: list[str] = []
    push.push(grafana, "test-token", prometheus_url="http://prom:9090", echo=lines.append)
    calls = FakeGrafana.calls
    assert all(auth == "Bearer test-token" for *_, auth in calls)
    posted = {(m, p): b for m, p, b, _ in calls if m != "GET"}
    assert posted["POST", "/api/datasources"]["uid"] == "wafl-prometheus"
    assert posted["POST", "/api/datasources"]["url"] == "http://prom:9090"
    assert posted["POST", "/api/folders"] == {"title": "WaFL", "uid": "wafl"}
    boards = [b for m, p, b, _ in calls if p == "/api/dashboards/db"]
    assert {b["dashboard"]["uid"] for b in boards} == {"wafl-federation", "wafl-services"}
    assert all(b["overwrite"] is True and b["folderUid"] == "wafl" for b in boards)
    assert not any("test-token" in line for line in lines)


def test_push_updates_what_exists(grafana: str) -> None:
    push = grafana_push
    FakeGrafana.existing = {"/api/datasources/uid/wafl-prometheus", "/api/folders/wafl"}
    push.push(grafana, "t")
    methods = {(m, p) for m, p, _, _ in FakeGrafana.calls}
    assert ("PUT", "/api/datasources/uid/wafl-prometheus") in methods
    assert ("POST", "/api/datasources") not in methods and ("POST", "/api/folders") not in methods


def test_push_refuses_without_a_token() -> None:
    with pytest.raises(ValueError, match="GRAFANA_TOKEN"):
        grafana_push.push("http://127.0.0.1:9", "")
