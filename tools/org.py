"""Joining a federation: `wafl org init` (an organisation's key and files) and `wafl participants
add` (the admin registers organisations' addresses).

`wafl org init NAME` writes the directory NAME/ that an organisation needs to join:

- ``keystore.json``: a new key as the standard encrypted Ethereum keystore of eth-account
  (version 3 JSON, scrypt), mode 600; the password comes from ``--password-file`` or is asked
  twice, never echoed, and is never written;
- ``address.txt``: the key's address, for the federation's admin to register;
- ``masking.key``: the organisation's masking secret of secure aggregation (wafl/zk/masking.py,
  docs/design.md section 12), mode 600, read by its provers and by `wafl attest` when the
  deployment's configuration has ``secure_aggregation``; always written, a plain federation never
  reads it;
- ``settings/<service>.yaml``: each service's settings as a process on this host
  (`wafl run <service> --settings ...`), secrets left to ``WAFL_AMQP_URL`` and ``WAFL_REDIS_URL``;
- ``.env``: the same settings as an env file for the services' containers under docker compose
  (``env_file:``), the keystore, its password and the masking secret as compose secrets;
- ``kustomization.yaml``, ``namespace.yaml``, ``ceremony/``, ``attest/``: the directory is the
  organisation's Kubernetes overlay of deploy/k8s/base, with its one-shot steps, like
  deploy/k8s/overlays/<org>; the keystore becomes a Secret through a secret generator, and the
  submitter and the attest Job read it with the password from the Secret wafl-keystore-password,
  created out of band (the password never lies beside the keystore); the masking secret becomes
  the Secret wafl-masking-key the same way, mounted by the prover and the attest Job.

The masking secret is never printed, logged or written anywhere but ``masking.key``.
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from services import SERVICE_NAMES
from tools.errors import UsageError
from wafl.bus.secrets import register_secret, register_url, safe_url
from wafl.bus.settings import ServiceSettings
from wafl.zk.masking import SECRET_ENV, generate_secret, write_secret

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

# A DNS label short enough for the namespace wafl-<name> (at most 63 characters).
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,56}[a-z0-9])?")
MIN_PASSWORD = 8
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
# deploy/k8s of the checkout this module runs from (an editable install or the repository itself).
DEFAULT_K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
# The base's placeholder chain (deploy/k8s/base) and a documentation address block (RFC 5737)
# standing for its address until the organisation names its own.
PLACEHOLDER_RPC = "http://chain-rpc.example:8545"
PLACEHOLDER_BLOCK = "203.0.113.10/32"
PLACEHOLDER_MINE = "set-the-hash-your-contribute-job-printed"

KEYSTORE = "keystore.json"
# The Secrets the submitter and the attest Job read the key from: the keystore (generated from
# keystore.json by the overlay) and its password (created by the organisation, never on disk here).
KEYSTORE_SECRET = "wafl-submitter-keystore"
PASSWORD_SECRET = "wafl-keystore-password"
KEY_DIR = "/etc/wafl/key"
PASSWORD_DIR = "/etc/wafl/key-password"
# The masking secret of secure aggregation: its file, the Secret generated from it and where the
# prover and the attest Job mount it.
MASKING_KEY = "masking.key"
MASKING_SECRET = "wafl-masking-key"
MASKING_DIR = "/etc/wafl/masking-key"
# Where compose puts the keystore and its password in the containers (its secrets).
COMPOSE_SECRETS = "/run/secrets"


@dataclass(frozen=True)
class Places:
    """Where the services find their files: on this host, in compose's containers, or in Kubernetes pods."""

    deployment: str
    keys: str
    keystore: str
    password_file: str
    masking_key: str


@dataclass(frozen=True)
class NewOrg:
    """What `wafl org init` made."""

    name: str
    directory: Path
    address: str
    password_file: Path | None
    rpc_url: str
    registry: str


# ---- `wafl org init` --------------------------------------------------------------------------------


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"{name!r} is not an organisation name: lower-case letters, digits and '-', starting and "
                         f"ending with a letter or digit, at most 58 (its namespace is wafl-NAME)")
    return name


def password_from_file(path: Path, flag: str) -> str:
    """The password in `path` (its text without the line ending), registered as a secret."""
    from services.submitter.keys import read_password
    from wafl.bus.service import StartupError

    try:
        password = read_password(path, f"{flag} {path}")
    except StartupError as exc:
        raise UsageError(str(exc)) from None
    return _strong_enough(password, f"the password in {flag} {path}")


def ask_password(name: str) -> str:
    """A new password, typed twice on the terminal and never echoed."""
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask the keystore's password on: pass --password-file FILE")
    first = getpass.getpass(f"password for {name}'s keystore (at least {MIN_PASSWORD} characters): ")
    register_secret(first)
    second = getpass.getpass("the same password again: ")
    if first != second:
        raise UsageError("the two passwords differ: nothing was written")
    return _strong_enough(first, "the password")


def _strong_enough(password: str, what: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"{what} is too short ({len(password)} characters): use at least {MIN_PASSWORD}")
    return password


def check_rpc_url(url: str) -> str:
    register_url(url)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--rpc-url {safe_url(url)} is not an http(s) URL, e.g. http://203.0.113.10:8545")
    return url


def k8s_dir(given: str | None) -> Path:
    """deploy/k8s (base and jobs) the overlay builds on."""
    k8s = Path(given) if given else DEFAULT_K8S
    if not (k8s / "base" / "kustomization.yaml").is_file() or not (k8s / "jobs").is_dir():
        where = f"--k8s {k8s}" if given else f"this installation has no {k8s} (installed from a wheel?)"
        raise UsageError(f"{where}: name the deploy/k8s directory of a WaFL checkout with --k8s DIR")
    return k8s.resolve()


def init_org(name: str, out: Path, password_file: str | None, rpc_url: str | None, registry: str | None,
             k8s: str | None) -> NewOrg:
    """Check everything, make the key, write NAME/ (all of it or nothing); the password is never written."""
    from tools.cli import writable

    check_name(name)
    directory = writable(out, "--out", directory=True) / name
    if directory.exists() or directory.is_symlink():
        raise UsageError(f"{directory} already exists: an organisation is made once (a new key would not be the "
                         "one its federation registered); choose another --out or NAME")
    url = check_rpc_url(rpc_url) if rpc_url else PLACEHOLDER_RPC
    base = k8s_dir(k8s)
    password = password_from_file(Path(password_file), "--password-file") if password_file else ask_password(name)
    from eth_account import Account

    account = Account.create()
    register_secret(account.key.hex())
    keystore = Account.encrypt(account.key, password)
    masking_secret = generate_secret()
    register_secret(str(masking_secret))
    org = NewOrg(name, directory.absolute(), account.address,
                 Path(password_file).absolute() if password_file else None, url,
                 registry or f"registry.example.org/{name}")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out))  # mode 700; a sibling: same relative paths
    try:
        _write_org(staging, org, keystore, masking_secret, base)
        if directory.exists():
            raise UsageError(f"{directory} appeared meanwhile: nothing was written")
        staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return org


def _write_org(target: Path, org: NewOrg, keystore: dict[str, Any], masking_secret: int, k8s: Path) -> None:
    descriptor = os.open(target / KEYSTORE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(keystore, file)
    write_secret(target / MASKING_KEY, masking_secret)  # mode 600, a new file
    (target / "address.txt").write_text(org.address + "\n")
    host = Places(deployment=str(org.directory / "deployment.json"), keys=str(org.directory / "keys"),
                  keystore=str(org.directory / KEYSTORE),
                  password_file=str(org.password_file or org.directory / "keystore-password"),
                  masking_key=str(org.directory / MASKING_KEY))
    settings = target / "settings"
    settings.mkdir()
    for service, values in service_settings(org, host).items():
        (settings / f"{service}.yaml").write_text(
            f"# {org.name}'s {service}: wafl run {service} --settings {org.directory / 'settings' / service}.yaml\n"
            "# WAFL_AMQP_URL and WAFL_REDIS_URL (they hold passwords) come from the environment.\n"
            + yaml.safe_dump(values, sort_keys=False))
    (target / ".env").write_text(compose_env(org))
    for relative, text in overlay_files(org, target, k8s).items():
        (target / relative).parent.mkdir(exist_ok=True)
        (target / relative).write_text(text)


def settings_class(service: str) -> type[ServiceSettings]:
    """The settings a service reads: the ServiceSettings class of services/<service>/settings.py (the
    service's own module, without the service: the trainer's would import torch)."""
    module = import_module(f"services.{service}.settings")
    (cls,) = [v for v in vars(module).values()
              if isinstance(v, type) and issubclass(v, ServiceSettings) and v.__module__ == module.__name__]
    return cls


def org_values(org: NewOrg, places: Places) -> dict[str, str | int]:
    """Every setting `org init` knows, by field name, with files where `places` puts them."""
    return {"org": org.name, "rpc_url": org.rpc_url, "deployment": places.deployment, "log_level": "info",
            "participant": org.address, "org_index": 0, "org_count": 1, "keys": places.keys,
            "keystore": places.keystore, "keystore_password_file": places.password_file,
            "masking_key_file": places.masking_key}


def service_settings(org: NewOrg, places: Places) -> dict[str, dict[str, str | int]]:
    """Per service, the settings of `org_values` it reads."""
    values = org_values(org, places)
    return {s: {k: v for k, v in values.items() if k in settings_class(s).model_fields} for s in SERVICE_NAMES}


def compose_env(org: NewOrg) -> str:
    """The env file of the organisation's service containers under docker compose."""
    places = Places(deployment="/deployments/deployment.json", keys="/keys",
                    keystore=f"{COMPOSE_SECRETS}/keystore", password_file=f"{COMPOSE_SECRETS}/keystore_password",
                    masking_key=f"{COMPOSE_SECRETS}/masking_key")
    values = org_values(org, places)
    return (
        f"# {org.name}'s WaFL services under docker compose: `env_file: {org.name}/.env` on each of them.\n"
        "# The keystore, its password (the submitter's) and the masking secret (the prover's, read with secure\n"
        "# aggregation only) reach the containers as compose secrets (files under /run/secrets):\n"
        f"#   secrets: keystore (file: {org.name}/{KEYSTORE}), keystore_password (file: your password file),\n"
        f"#            masking_key (file: {org.name}/{MASKING_KEY})\n"
        "# WAFL_AMQP_URL and WAFL_REDIS_URL hold passwords: set them in the compose file from your own .env.\n"
        "# WAFL_DEPLOYMENT is the artifact the federation's admin sends; WAFL_KEYS the final key set (prover).\n"
        + "".join(f"WAFL_{key.upper()}={value}\n" for key, value in values.items())
        + "WAFL_METRICS_PORT=9100\n"
    )


# ---- the Kubernetes overlay ----------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (inline patches) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _represent_str)


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def _patch(data: Any) -> str:
    """An inline patch of a kustomization (a literal block without a trailing newline)."""
    return _yaml(data).rstrip("\n")


def _egress(rpc_url: str) -> tuple[str, int]:
    """The address block and port of the chain RPC (a placeholder block for a host name)."""
    parts = urlsplit(rpc_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        address = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return PLACEHOLDER_BLOCK, port
    return f"{address}/{address.max_prefixlen}", port


def _secret_volume(volume: str, secret: str, key: str) -> dict[str, Any]:
    """A volume of one file, `key` of the Secret, readable by the pod's group (fsGroup) only."""
    return {"name": volume, "secret": {"secretName": secret, "defaultMode": 0o440,
                                       "items": [{"key": key, "path": key}]}}


def _workload_patch(api_version: str, kind: str, name: str, container: str, env: list[dict[str, str]],
                    mounts: list[dict[str, Any]], volumes: list[dict[str, Any]]) -> str:
    """A strategic merge patch of a workload's pod: its container's variables and mounts, its volumes."""
    return _patch({
        "apiVersion": api_version, "kind": kind, "metadata": {"name": name},
        "spec": {"template": {"spec": {
            "containers": [{"name": container, "env": env, "volumeMounts": mounts}],
            "volumes": volumes,
        }}},
    })


def _keystore_patch(api_version: str, kind: str, name: str, container: str) -> str:
    """A strategic merge patch: the workload reads the keystore and its password instead of a key file
    (the base mounts the volume key at KEY_DIR already)."""
    return _workload_patch(
        api_version, kind, name, container,
        env=[{"name": "WAFL_KEY_FILE", "$patch": "delete"},
             {"name": "WAFL_KEYSTORE", "value": f"{KEY_DIR}/{KEYSTORE}"},
             {"name": "WAFL_KEYSTORE_PASSWORD_FILE", "value": f"{PASSWORD_DIR}/password"}],
        mounts=[{"name": "key-password", "mountPath": PASSWORD_DIR, "readOnly": True}],
        volumes=[_secret_volume("key", KEYSTORE_SECRET, KEYSTORE),
                 _secret_volume("key-password", PASSWORD_SECRET, "password")],
    )


def _masking_patch(api_version: str, kind: str, name: str, container: str) -> str:
    """A strategic merge patch: the workload reads the masking secret (WAFL_MASKING_KEY_FILE), a
    read-only mount of the Secret generated from masking.key."""
    return _workload_patch(
        api_version, kind, name, container,
        env=[{"name": SECRET_ENV, "value": f"{MASKING_DIR}/{MASKING_KEY}"}],
        mounts=[{"name": "masking-key", "mountPath": MASKING_DIR, "readOnly": True}],
        volumes=[_secret_volume("masking-key", MASKING_SECRET, MASKING_KEY)],
    )


def _images(org: NewOrg, services: Sequence[str]) -> list[dict[str, str]]:
    try:
        tag = version("wafl")
    except PackageNotFoundError:  # a checkout on the path, not installed
        tag = "0.1.0"
    return [{"name": f"wafl/{s}", "newName": f"{org.registry}/wafl-{s}", "newTag": tag} for s in services]


def _labels(org: NewOrg) -> list[dict[str, Any]]:
    return [{"pairs": {"wafl.io/org": org.name}, "includeSelectors": False, "includeTemplates": True}]


def overlay_files(org: NewOrg, target: Path, k8s: Path) -> dict[str, str]:
    """kustomization.yaml, namespace.yaml and the one-shot steps, by path relative to the overlay."""
    base = os.path.relpath(k8s / "base", target)
    jobs = os.path.relpath(k8s / "jobs", target / "attest")
    namespace = f"wafl-{org.name}"
    block, port = _egress(org.rpc_url)
    placeholders = [] if org.rpc_url != PLACEHOLDER_RPC and block != PLACEHOLDER_BLOCK else [
        "# Replace the placeholders: the chain RPC (WAFL_RPC_URL, also in attest/) and its address block below."]
    header = "\n".join([
        f"# WaFL for the organisation {org.name}, made by `wafl org init` from deploy/k8s/base:",
        f"#   kubectl -n {namespace} create secret generic {PASSWORD_SECRET} --from-file=password=PASSWORD_FILE",
        f"#   kubectl kustomize {org.name} | kubectl apply -f -",
        "# Create the Secrets wafl-rabbitmq and wafl-redis and the ConfigMap wafl-deployment first",
        "# (deploy/README.md). The submitter and the attest Job sign with the keystore (Secret",
        f"# {KEYSTORE_SECRET}, generated from {KEYSTORE}: encrypted) opened with the password of the",
        f"# Secret {PASSWORD_SECRET}. The prover and the attest Job read the masking secret (Secret",
        f"# {MASKING_SECRET}, generated from {MASKING_KEY}) when the federation uses secure aggregation.",
        "# One-shot steps, applied when their turn comes: ceremony/, attest/.",
        *placeholders,
    ])
    services = [s.replace("_", "-") for s in SERVICE_NAMES]
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": ["namespace.yaml", base],
        "labels": _labels(org),
        "configMapGenerator": [
            {"name": "wafl-config", "behavior": "merge",
             "literals": [f"WAFL_ORG={org.name}", f"WAFL_RPC_URL={org.rpc_url}"]},
            {"name": "wafl-org-config", "behavior": "merge",
             "literals": [f"WAFL_PARTICIPANT={org.address}", "WAFL_ORG_INDEX=0", "WAFL_ORG_COUNT=1"]},
        ],
        # Fixed names: the attest step (another kustomization) mounts them too.
        "secretGenerator": [{"name": secret, "files": [file], "options": {"disableNameSuffixHash": True}}
                            for secret, file in ((KEYSTORE_SECRET, KEYSTORE), (MASKING_SECRET, MASKING_KEY))],
        "images": _images(org, services),
        "replacements": [{
            # The prover queue KEDA watches is wafl.<WAFL_ORG>.prover.jobs (wafl/bus/topology.py).
            "source": {"kind": "ConfigMap", "name": "wafl-config", "fieldPath": "data.WAFL_ORG"},
            "targets": [{"select": {"kind": "ScaledObject", "name": "wafl-prover"},
                         "fieldPaths": ["spec.triggers.0.metadata.queueName"],
                         "options": {"delimiter": ".", "index": 1}}],
        }],
        "patches": [
            {"target": {"kind": "NetworkPolicy", "name": "wafl-chain-rpc-egress"},
             "patch": _patch([{"op": "replace", "path": "/spec/egress", "value": [
                 {"to": [{"ipBlock": {"cidr": block}}], "ports": [{"protocol": "TCP", "port": port}]}]}])},
            {"patch": _keystore_patch("apps/v1", "Deployment", "wafl-submitter", "submitter")},
            {"patch": _masking_patch("apps/v1", "Deployment", "wafl-prover", "prover")},
        ],
    }
    namespace_doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}}}
    prover_image = _images(org, ["prover"])
    ceremony = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [f"{jobs}/ceremony"], "labels": _labels(org), "images": prover_image,
        "patches": [{"patch": _patch({
            # The organisation's name in the ceremony's transcript.
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "wafl-ceremony-contribute"},
            "spec": {"template": {"spec": {"containers": [
                {"name": "contribute", "env": [{"name": "WAFL_ORG", "value": org.name}]}]}}},
        })}],
    }
    command = "/spec/template/spec/containers/0/command"
    attest = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
        "resources": [f"{jobs}/attest"], "labels": _labels(org), "images": prover_image,
        "configMapGenerator": [{"name": "wafl-attest", "behavior": "merge", "literals": [
            f"WAFL_RPC_URL={org.rpc_url}", f"WAFL_CEREMONY_MINE={PLACEHOLDER_MINE}"]}],
        "patches": [
            # `wafl attest` reads the keystore as the submitter does ($WAFL_KEYSTORE), not --key-file.
            {"target": {"kind": "Job", "name": "wafl-attest"}, "patch": _patch([
                {"op": "test", "path": f"{command}/6", "value": "--key-file"},
                {"op": "remove", "path": f"{command}/6"},
                {"op": "remove", "path": f"{command}/6"},
            ])},
            {"patch": _keystore_patch("batch/v1", "Job", "wafl-attest", "attest")},
            # With secure aggregation `wafl attest` registers the masking key first ($WAFL_MASKING_KEY_FILE).
            {"patch": _masking_patch("batch/v1", "Job", "wafl-attest", "attest")},
        ],
    }
    step_header = (f"# {org.name}'s {{step}} (made by `wafl org init`; deploy/README.md):\n"
                   f"#   kubectl kustomize {org.name}/{{step}} | kubectl apply -f -\n")
    return {
        "kustomization.yaml": header + "\n" + _yaml(overlay),
        "namespace.yaml": _yaml(namespace_doc),
        "ceremony/kustomization.yaml": step_header.format(step="ceremony") + _yaml(ceremony),
        "attest/kustomization.yaml": step_header.format(step="attest")
        + "# Set WAFL_CEREMONY_MINE to the hash your contribute Job printed.\n" + _yaml(attest),
    }


def next_steps(org: NewOrg, shown: str) -> str:
    """What `wafl org init` prints after the address: the way from here to the first round."""
    password = str(org.password_file) if org.password_file else "PASSWORD_FILE"
    lines = [
        f"organisation {org.name} in {shown}: keystore.json (encrypted, mode 600), {MASKING_KEY} (the masking "
        "secret of secure aggregation, mode 600), address.txt, settings/, .env, and its Kubernetes overlay "
        "(kustomization.yaml, ceremony/, attest/)",
        "Keep the password: nothing here can recover it, and without it the keystore is useless.",
        f"Keep {MASKING_KEY} too: the provers and `wafl attest` read it when the federation uses secure "
        "aggregation; a plain federation never reads it.",
        "Next:",
        f"  1. send the address ({shown}/address.txt) to the federation's admin, who registers it:",
        f"       wafl participants add --deployment DEPLOYMENT --rpc-url URL --key-file ADMIN_KEY {org.address}",
        f"     and sends back the deployment artifact (put it at {shown}/deployment.json for processes).",
        f"  2. take your turn in the setup ceremony: wafl ceremony contribute --in STEP --out NEXT --name {org.name}",
        "     (on Kubernetes: the Job of ceremony/); keep the hash it prints.",
        "  3. attest the final keys: wafl attest --deployment DEPLOYMENT --rpc-url URL --keys KEYS --ptau PTAU "
        "--mine HASH",
        f"     with WAFL_KEYSTORE={shown}/{KEYSTORE} WAFL_KEYSTORE_PASSWORD_FILE={password} (on Kubernetes: attest/);",
        f"     with secure aggregation also --masking-key {shown}/{MASKING_KEY}, which registers its public key.",
        "  4. start the services:",
        f"       Kubernetes: kubectl -n wafl-{org.name} create secret generic {PASSWORD_SECRET} "
        f"--from-file=password={password}",
        f"                   kubectl kustomize {shown} | kubectl apply -f -",
        f"       compose:    env_file: {shown}/.env (secrets keystore, keystore_password and masking_key)",
        f"       processes:  wafl run submitter --settings {shown}/settings/submitter.yaml (and the other four)",
    ]
    if org.password_file is None:
        lines.append(f"       (the settings expect the password in {shown}/keystore-password, mode 600: write it there "
                     "or change keystore_password_file)")
    if org.rpc_url == PLACEHOLDER_RPC or _egress(org.rpc_url)[0] == PLACEHOLDER_BLOCK:
        lines.append(f"Before that, replace the chain RPC placeholders ({safe_url(org.rpc_url)}, address block "
                     f"{_egress(org.rpc_url)[0]}) in {shown}/kustomization.yaml, attest/, settings/ and .env, "
                     "or run init again with --rpc-url.")
    return "\n".join(lines)


def keystore_signer(keystore: str, password_file: str | None, flag: str = "--keystore") -> LocalAccount:
    """The account of an encrypted keystore opened with the password in `password_file` (for the
    commands that sign as the organisation, as the submitter does); UsageError says what is wrong."""
    from services.submitter.keys import decrypt_keystore, read_password, read_secret_file
    from wafl.bus.service import StartupError

    if not password_file:
        raise UsageError(f"{flag} {keystore} needs its password: pass --password-file or set "
                         "WAFL_KEYSTORE_PASSWORD_FILE")
    source, password_source = f"keystore {keystore}", f"password file {password_file}"
    try:
        raw = read_secret_file(Path(keystore), source, "keystore")
        return decrypt_keystore(raw, read_password(Path(password_file), password_source), source, password_source)
    except StartupError as exc:
        raise UsageError(str(exc)) from None


# ---- `wafl participants add` -----------------------------------------------------------------------


def checksum_addresses(addresses: Sequence[str]) -> list[str]:
    """Each address once, checksummed; UsageError for one that is not an address."""
    from eth_utils.address import to_checksum_address

    checked: list[str] = []
    for text in addresses:
        if not ADDRESS.fullmatch(text):
            raise UsageError(f"{text!r} is not an Ethereum address (0x and 40 hexadecimal digits)")
        address = to_checksum_address(text)
        if text[2:] not in (text[2:].lower(), text[2:].upper()) and text != address:
            raise UsageError(f"{text} fails its checksum (mixed case): was it copied whole? "
                             f"(address.txt of `wafl org init` has it)")
        if address not in checked:
            checked.append(address)
    return checked


def add_participants(deployment_file: str, rpc_url: str, key_file: str | None,
                     addresses: Sequence[str]) -> dict[str, Any]:
    """Register the addresses that are not participants yet, with the admin's key; what was done."""
    from tools.cli import connect, load_deployment, signer

    wanted = checksum_addresses(addresses)
    deployment = load_deployment(Path(deployment_file))
    admin = signer("admin key", key_file, key_env="WAFL_DEPLOYER_KEY")
    w3 = connect(rpc_url)
    if w3.eth.chain_id != deployment.chain_id:
        raise UsageError(f"the node at {safe_url(rpc_url)} runs chain {w3.eth.chain_id}, the deployment "
                         f"{deployment_file} is on chain {deployment.chain_id}")
    if not w3.eth.get_code(w3.to_checksum_address(deployment.address)):
        raise UsageError(f"no contract at {deployment.address} on {safe_url(rpc_url)}: is it the deployment's chain?")
    from wafl.chain.aggregator import AggregatorClient
    from wafl.chain.tx import ContractRevertError

    aggregator = AggregatorClient(w3, deployment)
    functions = aggregator.contract.functions
    role = functions.PARTICIPANT_ROLE().call()
    new = [a for a in wanted if not functions.hasRole(role, a).call()]
    tx = None
    if new:
        try:
            receipt = aggregator.register(admin, new)
        except ContractRevertError as exc:
            if exc.name == "AccessControlUnauthorizedAccount":
                reason = f"{admin.address} is not its admin: use the key that deployed it"
            elif exc.name == "Wafl__TooManyParticipants":
                reason = f"its model configuration has room for {exc.args_[0]} participants"
            else:
                reason = str(exc)
            raise UsageError(f"the aggregator at {deployment.address} refused to register them ({exc.name}): "
                             f"{reason}") from None
        tx = "0x" + bytes(receipt["transactionHash"]).hex()
    return {"aggregator": deployment.address, "registered": new,
            "already_registered": [a for a in wanted if a not in new], "tx": tx}
