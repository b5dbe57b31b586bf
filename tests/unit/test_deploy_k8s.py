"""deploy/k8s: every overlay renders with `kubectl kustomize`, every rendered manifest validates
against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields fail) and the
custom resources against their CRD schemas (KEDA, Prometheus Operator: from the cloudcoil model
packages, made strict the same way), and the deployment rules of the issue hold. The same for
each organisation's one-shot steps (overlays/<org>/ceremony: the files pod and the contribute Job
of the setup ceremony; overlays/<org>/attest: the attest Job) and the key volumes they share with
the provers."""

from __future__ import annotations

import ipaddress
import json
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.deploy_helpers import (
    DEPLOY,
    K8S,
    OVERLAYS,
    SERVICES,
    by_kind,
    dns_name,
    named,
    render_overlay,
    require_kubectl,
)


@pytest.fixture(autouse=True, scope="module")
def _kubectl() -> None:
    require_kubectl()  # fails, not skips, where the overlays cannot be rendered

# Kubernetes versions the manifests must be valid for: the oldest we support and the newest schema.
K8S_VERSIONS = ("1.30.0", "1.37.0")
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
# The Deployments of an organisation: one per service of the registry (services.SERVICE_NAMES).
DEPLOYMENTS = {f"wafl-{dns_name(s)}": s for s in SERVICES}
# Each organisation's one-shot steps: kustomizations of their own under its overlay, applied when
# their turn comes (a Job runs once and its pod template cannot change: not part of the overlay).
STEPS = ("ceremony", "attest")


def render_step(org: str, step: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize deploy/k8s/overlays/<org>/<step>``."""
    return render_overlay(f"{org}/{step}")


def test_there_are_two_example_organisations() -> None:
    assert {"org-a", "org-b"} <= set(OVERLAYS)


@pytest.mark.parametrize("org", OVERLAYS)
def test_overlay_renders_into_its_own_namespace(org: str) -> None:
    docs = render_overlay(org)
    namespace = named(docs, "Namespace", f"wafl-{org}")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == f"wafl-{org}", doc["metadata"]["name"]


# ---- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("org", OVERLAYS)
def test_core_manifests_validate_against_kubernetes_schemas(org: str, version: str) -> None:
    import kubernetes_validate

    checked = 0
    for doc in render_overlay(org):
        if doc["apiVersion"].startswith(CUSTOM_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} invalid for Kubernetes {version}: {exc}")
        checked += 1
    assert checked >= 20


def _strict(node: Any) -> Any:
    """A model's JSON schema with unknown fields refused (kubectl's strict field validation)."""
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, from the CRD-generated cloudcoil models
    (cloudcoil-models-keda 2.16.1, cloudcoil-models-prometheus-operator 0.80.1)."""
    from cloudcoil.models.keda import v1alpha1 as keda
    from cloudcoil.models.prometheus_operator import v1 as monitoring
    models = {
        ("keda.sh/v1alpha1", "ScaledObject"): keda.ScaledObject,
        ("keda.sh/v1alpha1", "TriggerAuthentication"): keda.TriggerAuthentication,
        ("monitoring.coreos.com/v1", "PodMonitor"): monitoring.PodMonitor,
        ("monitoring.coreos.com/v1", "PrometheusRule"): monitoring.PrometheusRule,
    }
    return {key: _strict(model.model_json_schema(by_alias=True)) for key, model in models.items()}


@pytest.mark.parametrize("org", OVERLAYS)
def test_custom_resources_validate_against_their_crd_schemas(org: str) -> None:
    schemas = crd_schemas()
    custom = [d for d in render_overlay(org) if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {(d["apiVersion"], d["kind"]) for d in custom} == set(schemas)
    for doc in custom:
        errors = sorted(jsonschema.Draft202012Validator(schemas[doc["apiVersion"], doc["kind"]]).iter_errors(doc),
                        key=str)
        assert not errors, f"{doc['kind']} {doc['metadata']['name']}: " + "; ".join(
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:5])


def test_the_strict_crd_schema_refuses_a_misspelt_field() -> None:
    schema = crd_schemas()["keda.sh/v1alpha1", "ScaledObject"]
    good = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
            "spec": {"scaleTargetRef": {"name": "p"}, "triggers": [{"type": "rabbitmq", "metadata": {}}]}}
    jsonschema.validate(good, schema)
    bad = json.loads(json.dumps(good))
    bad["spec"]["maxReplicas"] = 3  # the field is maxReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


# ---- the prover pool ----------------------------------------------------------------------------


def _config(docs: tuple[dict[str, Any], ...], name: str) -> dict[str, str]:
    matches = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith(name + "-")
               or d["metadata"]["name"] == name]
    assert len(matches) == 1, name
    return dict(matches[0]["data"])


@pytest.mark.parametrize("org", OVERLAYS)
def test_keda_scales_the_prover_on_its_queue_counting_unacked_jobs(org: str) -> None:
    docs = render_overlay(org)
    config = _config(docs, "wafl-config")
    assert config["WAFL_ORG"] == org
    scaled = named(docs, "ScaledObject", "wafl-prover")
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    prover = named(docs, "Deployment", target["name"])
    assert prover["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "prover"
    assert "replicas" not in prover["spec"], "KEDA owns the prover's replica count"
    assert scaled["spec"]["minReplicaCount"] >= 1 and scaled["spec"]["maxReplicaCount"] >= 2
    (trigger,) = scaled["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "rabbitmq"
    assert meta["queueName"] == f"wafl.{config['WAFL_ORG']}.prover.jobs"  # wafl/bus/topology.py
    # Unacknowledged jobs (being proved) count: only the management API (http) reports them, and
    # only while excludeUnacknowledged is false.
    assert meta["protocol"] == "http" and meta["mode"] == "QueueLength"
    assert meta["excludeUnacknowledged"] == "false"
    assert "host" not in meta and "hostFromEnv" not in meta, "credentials come from the TriggerAuthentication"
    auth = named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref == {"parameter": "host", "name": "wafl-rabbitmq", "key": "management-url"}


@pytest.mark.parametrize("org", OVERLAYS)
def test_prover_drains_its_job_within_the_grace_period(org: str) -> None:
    docs = render_overlay(org)
    prover = named(docs, "Deployment", "wafl-prover")["spec"]
    grace = prover["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 300, "the grace period must exceed a proof"
    others = [named(docs, "Deployment", n)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
              for n in DEPLOYMENTS if n != "wafl-prover"]
    assert grace > max(others)
    assert prover["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= prover["template"]["metadata"]["labels"].items()
    assert pdb["spec"].get("maxUnavailable") == 1


# ---- workloads ----------------------------------------------------------------------------------


@pytest.mark.parametrize("org", OVERLAYS)
def test_the_deployments_are_the_registrys_services_each_from_its_own_image(org: str) -> None:
    """Exactly one Deployment per service of services.SERVICE_NAMES, each running its image's
    entrypoint (`wafl run <service>`, test_deploy_images.py) from the image the overlay renames: a
    wafl/<service> image it left alone would be pulled from Docker Hub."""
    docs = render_overlay(org)
    assert {d["metadata"]["name"] for d in by_kind(docs, "Deployment")} == set(DEPLOYMENTS)
    overlay = yaml.safe_load((K8S / "overlays" / org / "kustomization.yaml").read_text())
    renamed = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in overlay["images"] if i["name"].startswith("wafl/")}
    assert set(renamed) == {f"wafl/{dns_name(s)}" for s in SERVICES}
    for name, service in DEPLOYMENTS.items():
        (container,) = named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        assert container["image"] == renamed[f"wafl/{dns_name(service)}"], name
        assert "command" not in container and "args" not in container, f"{name} must run its image's entrypoint"


@pytest.mark.parametrize("org", OVERLAYS)
def test_every_workload_has_resources_probes_and_runs_unprivileged(org: str) -> None:
    docs = render_overlay(org)
    workloads = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        name = workload["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        for container in pod["containers"]:
            assert container["resources"]["requests"].keys() >= {"cpu", "memory"}, name
            assert container["resources"]["limits"].keys() >= {"cpu", "memory"}, name
            assert "livenessProbe" in container and "readinessProbe" in container, name
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
            assert not container["image"].endswith(":latest"), name


@pytest.mark.parametrize("org", OVERLAYS)
def test_services_take_settings_from_configmaps_and_secrets(org: str) -> None:
    docs = render_overlay(org)
    configmaps = {d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")}
    assert not by_kind(docs, "Secret"), "Secrets are created out of band, never committed"
    for name, service in DEPLOYMENTS.items():
        (container,) = named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        for source in container["envFrom"]:
            assert source["configMapRef"]["name"] in configmaps
        env = {e["name"]: e for e in container.get("env", [])}
        for secret_var in ("WAFL_AMQP_URL", "WAFL_REDIS_URL"):
            assert "secretKeyRef" in env[secret_var]["valueFrom"], f"{name}: {secret_var} must come from a Secret"
        assert all("value" not in e or not e["name"].endswith(("_URL", "_KEY")) for e in env.values())
        if service == "submitter":
            assert env["WAFL_KEY_FILE"]["value"].startswith("/etc/wafl/key/")
            volumes = {v["name"]: v for v in named(docs, "Deployment", name)["spec"]["template"]["spec"]["volumes"]}
            assert volumes["key"]["secret"]["secretName"] == "wafl-submitter-key"
        labels = named(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert labels["wafl.io/org"] == org and labels["app.kubernetes.io/component"] == service


# ---- network policies ---------------------------------------------------------------------------


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        value = labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and value is None:
            return False
        if operator == "DoesNotExist" and value is not None:
            return False
    return True


def _pods(docs: tuple[dict[str, Any], ...]) -> dict[str, dict[str, str]]:
    return {w["metadata"]["name"]: w["spec"]["template"]["metadata"]["labels"]
            for w in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")}


def _step_pods(org: str) -> dict[str, tuple[dict[str, str], dict[str, Any]]]:
    """The pods of the org's one-shot steps: name -> (labels, pod spec), Jobs' templates and Pods."""
    pods = {}
    for step in STEPS:
        docs = render_step(org, step)
        for job in by_kind(docs, "Job"):
            template = job["spec"]["template"]
            pods[job["metadata"]["name"]] = (template["metadata"]["labels"], template["spec"])
        for pod in by_kind(docs, "Pod"):
            pods[pod["metadata"]["name"]] = (pod["metadata"]["labels"], pod["spec"])
    return pods


def _egress_peers(docs: tuple[dict[str, Any], ...], labels: dict[str, str]) -> list[dict[str, Any]]:
    peers = []
    for policy in by_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        if "Egress" in spec["policyTypes"] and _selects(spec["podSelector"], labels):
            for rule in spec.get("egress") or []:
                peers += [{**peer, "ports": rule.get("ports")} for peer in rule.get("to") or []]
    return peers


def _ingress_peers(docs: tuple[dict[str, Any], ...], labels: dict[str, str]) -> list[dict[str, Any]]:
    peers = []
    for policy in by_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        if "Ingress" in spec["policyTypes"] and _selects(spec["podSelector"], labels):
            for rule in spec.get("ingress") or []:
                peers += [{**peer, "ports": rule.get("ports")} for peer in rule.get("from") or []]
    return peers


@pytest.mark.parametrize("org", OVERLAYS)
def test_network_policies_deny_by_default(org: str) -> None:
    docs = render_overlay(org)
    deny = named(docs, "NetworkPolicy", "wafl-default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


@pytest.mark.parametrize("org", OVERLAYS)
def test_only_the_submitter_the_chain_watcher_and_the_attest_job_reach_the_chain(org: str) -> None:
    docs = render_overlay(org)
    pods = {**_pods(docs), **{name: labels for name, (labels, _) in _step_pods(org).items()}}
    outside = {name for name, labels in pods.items()
               if any("ipBlock" in peer for peer in _egress_peers(docs, labels))}
    assert outside == {"wafl-submitter", "wafl-chain-watcher", "wafl-attest"}
    for name in outside:
        for peer in _egress_peers(docs, pods[name]):
            if "ipBlock" in peer:
                network = ipaddress.ip_network(peer["ipBlock"]["cidr"])
                assert network.prefixlen >= 16, f"{org}: the chain RPC block {network} is too wide"
                assert peer["ports"], "the chain RPC rule names its port"


@pytest.mark.parametrize("org", OVERLAYS)
def test_only_the_orgs_own_services_reach_its_rabbitmq_and_redis(org: str) -> None:
    docs = render_overlay(org)
    pods = _pods(docs)
    services = {n: pods[n] for n in DEPLOYMENTS}
    for store, port in (("rabbitmq", 5672), ("redis", 6379)):
        peers = [p for p in _ingress_peers(docs, pods[store]) if any(x["port"] == port for x in p["ports"] or [])]
        assert peers, f"nothing reaches {store}:{port}"
        for peer in peers:
            # Same namespace only (no namespaceSelector, no ipBlock) and only the WaFL services.
            assert set(peer) == {"podSelector", "ports"}, peer
            allowed = {n for n, labels in pods.items() if _selects(peer["podSelector"], labels)}
            assert allowed == set(services), (store, allowed)
        # and every service may go there
        for name, labels in services.items():
            assert any(_selects(p.get("podSelector", {"matchLabels": {"-": "-"}}), pods[store])
                       and any(x["port"] == port for x in p["ports"] or [])
                       for p in _egress_peers(docs, labels)), f"{name} cannot reach {store}"
    # Other ports of the broker: KEDA (management API) and Prometheus only, from their namespaces.
    others = [p for p in _ingress_peers(docs, pods["rabbitmq"]) if all(x["port"] != 5672 for x in p["ports"])]
    assert {(p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], p["ports"][0]["port"])
            for p in others} == {("keda", 15672), ("monitoring", 15692)}


# ---- monitoring ---------------------------------------------------------------------------------


@pytest.mark.parametrize("org", OVERLAYS)
def test_pod_monitors_label_targets_with_org_and_component(org: str) -> None:
    docs = render_overlay(org)
    pods = _pods(docs)
    monitors = {m["metadata"]["name"]: m for m in by_kind(docs, "PodMonitor")}
    selector = monitors["wafl-services"]["spec"]["selector"]
    selected = {name for name, labels in pods.items() if _selects(selector, labels)}
    assert selected == set(DEPLOYMENTS)
    for monitor in monitors.values():
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            targets = {r["targetLabel"] for r in endpoint["relabelings"]}
            assert {"org", "component"} <= targets
    (rabbit,) = monitors["wafl-rabbitmq"]["spec"]["podMetricsEndpoints"]
    assert rabbit["path"] == "/metrics/per-object"
    for labels in pods.values():
        assert labels["wafl.io/org"] == org  # the source of the org label


@pytest.mark.parametrize("org", OVERLAYS)
def test_grafana_dashboards_configmap_carries_the_generated_dashboards(org: str) -> None:
    docs = render_overlay(org)
    (configmap,) = [d for d in by_kind(docs, "ConfigMap")
                    if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    generated = {p.name: p.read_text() for p in (DEPLOY / "grafana" / "dashboards").glob("*.json")}
    assert configmap["data"] == generated


# ---- keys and the one-shot steps ----------------------------------------------------------------


def _volumes(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod.get("volumes", [])}


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mount path -> the mount and its volume's name."""
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def _claim_mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """PVC name -> (mount path, read-only) for one container."""
    volumes = _volumes(pod)
    found = {}
    for path, mount in _mounts(container).items():
        claim = volumes[mount["name"]].get("persistentVolumeClaim")
        if claim:
            found[claim["claimName"]] = (path, bool(mount.get("readOnly")) or bool(claim.get("readOnly")))
    return found


def _prover_image(org: str) -> str:
    (container,) = named(render_overlay(org), "Deployment", "wafl-prover")["spec"]["template"]["spec"]["containers"]
    return str(container["image"])


def test_every_organisation_has_its_ceremony_and_attest_steps() -> None:
    for org in OVERLAYS:
        for step in STEPS:
            assert (K8S / "overlays" / org / step / "kustomization.yaml").exists(), f"{org} has no {step} step"


@pytest.mark.parametrize("org", OVERLAYS)
def test_the_overlay_runs_no_one_shot_pod_and_claims_the_key_volumes(org: str) -> None:
    docs = render_overlay(org)
    assert not by_kind(docs, "Job") and not by_kind(docs, "Pod"), "one-shot steps are applied when their turn comes"
    claims = {c["metadata"]["name"]: c["spec"] for c in by_kind(docs, "PersistentVolumeClaim")}
    assert set(claims) == {"wafl-keys", "wafl-ceremony"}
    # Every prover replica mounts the keys, on whatever node it runs.
    assert "ReadWriteMany" in claims["wafl-keys"]["accessModes"] or "ReadOnlyMany" in claims["wafl-keys"]["accessModes"]
    for spec in claims.values():
        assert spec["resources"]["requests"]["storage"]


@pytest.mark.parametrize("org", OVERLAYS)
def test_the_prover_proves_with_the_key_set_mounted_read_only(org: str) -> None:
    docs = render_overlay(org)
    pod = named(docs, "Deployment", "wafl-prover")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert _claim_mounts(pod, container)["wafl-keys"] == (env["WAFL_KEYS"], True)
    # Only the prover mounts the keys among the services; nothing long-lived can write them.
    for name in DEPLOYMENTS:
        other = named(docs, "Deployment", name)["spec"]["template"]["spec"]
        for each in other["containers"]:
            mounted = _claim_mounts(other, each)
            assert "wafl-ceremony" not in mounted
            assert ("wafl-keys" in mounted) == (name == "wafl-prover")


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("org", OVERLAYS)
def test_step_manifests_validate_against_kubernetes_schemas(org: str, step: str, version: str) -> None:
    import kubernetes_validate

    docs = render_step(org, step)
    assert by_kind(docs, "Job"), f"{org}/{step} renders no Job"
    for doc in docs:
        assert doc["metadata"]["namespace"] == f"wafl-{org}", doc["metadata"]["name"]
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} invalid for Kubernetes {version}: {exc}")


@pytest.mark.parametrize("org", OVERLAYS)
def test_one_shot_pods_are_restricted_bounded_and_use_the_prover_image(org: str) -> None:
    image = _prover_image(org)
    pods = _step_pods(org)
    assert set(pods) == {"wafl-ceremony-files", "wafl-ceremony-contribute", "wafl-attest"}
    for name, (labels, pod) in pods.items():
        assert labels["wafl.io/org"] == org and labels["app.kubernetes.io/part-of"] == "wafl", name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        assert pod["restartPolicy"] == "Never", name
        for container in pod["containers"]:
            assert container["image"] == image, name
            assert container["resources"]["requests"].keys() >= {"cpu", "memory"}, name
            assert container["resources"]["limits"].keys() >= {"cpu", "memory"}, name
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"]["drop"] == ["ALL"]
            assert security["readOnlyRootFilesystem"] is True, name
    for step in STEPS:
        for job in by_kind(render_step(org, step), "Job"):
            assert job["spec"]["activeDeadlineSeconds"] > 0 and job["spec"]["backoffLimit"] <= 3


@pytest.mark.parametrize("org", OVERLAYS)
def test_the_contribute_job_takes_the_orgs_turn_on_the_ceremony_volume(org: str) -> None:
    job = named(render_step(org, "ceremony"), "Job", "wafl-ceremony-contribute")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["wafl", "ceremony", "contribute", "--in", "/ceremony/in", "--out", "/ceremony/out",
                                     "--name", "$(WAFL_ORG)"]
    assert {e["name"]: e["value"] for e in container["env"]} == {"WAFL_ORG": org}
    assert _claim_mounts(pod, container) == {"wafl-ceremony": ("/ceremony", False)}
    # Nothing else: no Secret, no settings, no keys (its randomness comes from the OS).
    assert {n for n, v in _volumes(pod).items() if "persistentVolumeClaim" not in v} == {"tmp"}
    assert "envFrom" not in container
    # The files pod reaches both volumes (the operator's kubectl cp in and out).
    files = named(render_step(org, "ceremony"), "Pod", "wafl-ceremony-files")["spec"]
    (helper,) = files["containers"]
    assert _claim_mounts(files, helper) == {"wafl-ceremony": ("/ceremony", False), "wafl-keys": ("/keys", False)}


@pytest.mark.parametrize("org", OVERLAYS)
def test_the_ceremony_pods_have_no_network_at_all(org: str) -> None:
    docs = render_overlay(org)
    isolated = named(docs, "NetworkPolicy", "wafl-ceremony-isolated")["spec"]
    assert set(isolated["policyTypes"]) == {"Ingress", "Egress"}
    assert not isolated.get("ingress") and not isolated.get("egress")
    ceremony = {name: labels for name, (labels, _) in _step_pods(org).items()
                if labels["app.kubernetes.io/component"] == "ceremony"}
    assert set(ceremony) == {"wafl-ceremony-files", "wafl-ceremony-contribute"}
    for name, labels in ceremony.items():
        assert _selects(isolated["podSelector"], labels), name
        assert _egress_peers(docs, labels) == [], f"{name} may reach the network (DNS included)"
        assert _ingress_peers(docs, labels) == [], f"{name} may be reached"


@pytest.mark.parametrize("org", OVERLAYS)
def test_the_attest_job_checks_the_ceremony_and_attests_with_the_participant_key(org: str) -> None:
    docs = render_step(org, "attest")
    job = named(docs, "Job", "wafl-attest")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["wafl", "attest"]
    args = dict(zip(command[2::2], command[3::2], strict=True))
    assert set(args) == {"--deployment", "--rpc-url", "--key-file", "--keys", "--ptau", "--mine"}
    (source,) = container["envFrom"]
    settings = _config(docs, "wafl-attest")
    assert source["configMapRef"]["name"].startswith("wafl-attest")
    expanded = {k: v[2:-1] if v.startswith("$(") else None for k, v in args.items()}
    for flag in ("--rpc-url", "--ptau", "--mine"):
        assert expanded[flag] in settings, f"{flag} comes from the ConfigMap wafl-attest"
    # The chain is the services' chain.
    assert settings[expanded["--rpc-url"]] == _config(render_overlay(org), "wafl-config")["WAFL_RPC_URL"]
    volumes, mounts = _volumes(pod), _mounts(container)

    def volume_at(path: str) -> dict[str, Any]:
        (mount_path,) = [m for m in mounts if path.startswith(m.rstrip("/") + "/")]
        assert mounts[mount_path].get("readOnly") is True, f"{mount_path} must be read-only"
        return volumes[mounts[mount_path]["name"]]

    # The participant key: the submitter's Secret, as a file.
    assert volume_at(args["--key-file"])["secret"]["secretName"] == "wafl-submitter-key"
    submitter = named(render_overlay(org), "Deployment", "wafl-submitter")["spec"]["template"]["spec"]
    assert _volumes(submitter)["key"]["secret"]["secretName"] == "wafl-submitter-key"
    assert volume_at(args["--deployment"])["configMap"]["name"] == "wafl-deployment"
    # The final keys (read-only) and the phase 1 file on the ceremony volume (read-only).
    assert _claim_mounts(pod, container)["wafl-keys"] == (args["--keys"], True)
    assert volume_at(settings[expanded["--ptau"]])["persistentVolumeClaim"]["claimName"] == "wafl-ceremony"


@pytest.mark.parametrize("org", OVERLAYS)
def test_the_attest_job_reaches_the_chain_rpc_and_nothing_else(org: str) -> None:
    docs = render_overlay(org)
    labels, _ = _step_pods(org)["wafl-attest"]
    peers = _egress_peers(docs, labels)
    submitter = _egress_peers(docs, _pods(docs)["wafl-submitter"])
    assert [p for p in peers if "ipBlock" in p] == [p for p in submitter if "ipBlock" in p]
    others = [p for p in peers if "ipBlock" not in p]
    # DNS only, in kube-system: neither RabbitMQ nor Redis.
    assert others and all(p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == "kube-system"
                          for p in others)
    assert _ingress_peers(docs, labels) == []
