"""Prometheus configuration and alert rules, checked with promtool (Debian's prometheus package):
the scrape configuration parses, the rules parse and fire as intended on synthetic series
(deploy/prometheus/alerts_test.yml), and the Kubernetes PrometheusRule carries the same rules."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.support.deploy_helpers import DEPLOY, undefined_metrics

PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (apt-get install prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=PROMETHEUS_DIR)


@needs_promtool
def test_scrape_configuration_is_valid() -> None:
    proc = promtool("check", "config", "prometheus.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_alert_rules_are_valid() -> None:
    proc = promtool("check", "rules", "alerts.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_alert_rules_fire_as_intended() -> None:
    proc = promtool("test", "rules", "alerts_test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_issue_s_alerts_exist() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {"WaflProofsFailing", "WaflProverQueueBackingUp", "WaflNoRoundFinalized", "WaflChainReorged",
            "WaflMemberExcluded"} <= alerts
    tested = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    covered = {t["alertname"] for test in tested["tests"] for t in test["alert_rule_test"]}
    assert alerts - {"WaflDeadLetters"} <= covered


def test_alert_metrics_exist_in_the_services() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    missing = undefined_metrics(r["expr"] for g in rules["groups"] for r in g["rules"])
    assert not missing, f"alert rules use metrics no service defines: {sorted(missing)}"


def test_kubernetes_prometheus_rule_matches_the_rule_file() -> None:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    k8s = yaml.safe_load((DEPLOY / "k8s" / "base" / "prometheusrule.yaml").read_text())
    assert k8s["kind"] == "PrometheusRule"
    assert k8s["spec"]["groups"] == rules["groups"], "copy alerts.yml's groups into k8s/base/prometheusrule.yaml"
