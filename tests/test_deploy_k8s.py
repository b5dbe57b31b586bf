"""deploy/k8s: every overlay renders with `kubectl kustomize`, every rendered manifest validates
against the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields fail) and the
custom resources against their CRD schemas (KEDA, Prometheus Operator: from the cloudcoil model
packages, made strict the same way), and the deployment rules of the issue hold."""

from __future__ import annotations

import ipaddress
import json
from functools import cache
from typing import Any

import jsonschema
import pytest

from tests.deploy_helpers import DEPLOY, OVERLAYS, SERVICES, by_kind, kubectl, named, render_overlay

pytestmark = pytest.mark.skipif(kubectl() is None, reason="kubectl is not installed (needed to render overlays)")

# Kubernetes versions the manifests must be valid for: the oldest we support and the newest schema.
K8S_VERSIONS = ("1.30.0", "1.37.0")
CUSTOM_GROUPS = ("keda.sh/", "monitoring.coreos.com/")
DEPLOYMENTS = {f"wafl-{s.replace('_', '-')}": s for s in SERVICES}


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
    keda = pytest.importorskip("cloudcoil.models.keda.v1alpha1")
    monitoring = pytest.importorskip("cloudcoil.models.prometheus_operator.v1")
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
    assert meta["queueName"] == f"wafl.{config['WAFL_ORG']}.prover.jobs"  # wafl/topology.py
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
def test_every_workload_has_resources_probes_and_runs_unprivileged(org: str) -> None:
    docs = render_overlay(org)
    workloads = by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet")
    assert {d["metadata"]["name"] for d in by_kind(docs, "Deployment")} == set(DEPLOYMENTS)
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
def test_only_the_submitter_and_the_chain_watcher_reach_the_chain(org: str) -> None:
    docs = render_overlay(org)
    outside = {name for name, labels in _pods(docs).items()
               if any("ipBlock" in peer for peer in _egress_peers(docs, labels))}
    assert outside == {"wafl-submitter", "wafl-chain-watcher"}
    for name in outside:
        for peer in _egress_peers(docs, _pods(docs)[name]):
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
