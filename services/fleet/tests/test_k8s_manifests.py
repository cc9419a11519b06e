"""The objects ``KubernetesFleet`` applies, per kind of endpoint, validated offline against the
Kubernetes 1.30 (and the latest) schemas ``kubernetes-validate`` ships (KEDA's ``ScaledObject``
is a CRD those schemas lack: its fields are asserted here instead)."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cormorant.common.endpoints.fleet import Placement
from cormorant.common.endpoints.schemas import EndpointSpec, ReplicasSpec, ResourcesSpec
from cormorant.common.endpoints.snapshot import write_archive
from cormorant.common.endpoints.store import VersionRecord
from cormorant.fleet.kubernetes import fetch
from cormorant.fleet.kubernetes.manifests import (
    HANDOVER_MARGIN_S,
    REPLICA_NATS_SECRET,
    ClusterConfig,
    kafka_secret,
    manifests,
    object_name,
    replica_nats_secret,
)
from cormorant.fleet.kubernetes.render import render_yaml
from cormorant.fleet.settings import FleetSettings

K8S_VERSION = "1.30.0"


def spec_of(kind: str, **changes: Any) -> EndpointSpec:
    """A resolved spec of ``kind`` as the deployer stores it."""
    values: dict[str, Any] = {
        "name": f"a {kind} endpoint",
        "kind": kind,
        "source": "/src/model",
        "commit": None,
        "file": "predict.py",
        "function": "predict",
        "preprocess_file": None,
        "preprocess_function": None,
        "accepts_file": False,
        "env": {"MODEL_FLAVOUR": "small"},
        "server": {"workers": 2},
        "replicas": ReplicasSpec(min=0 if kind == "batch" else 1, max=6, target=4.0),
        "timeout_s": 30.0,
        "resources": ResourcesSpec(memory_mb=768, max_processes=64, open_files=512),
        "kafka": None,
    }
    if kind == "stream":
        values["kafka"] = {
            "bootstrap_servers": "kafka:9092",
            "input_topics": ["clicks", "views"],
            "output_topic": "scores",
            "dlq_topic": None,
            "security": {"sasl_plain_password": "hunter2"},
            "partitions": {"clicks": 2, "views": 2},
        }
    values.update(changes)
    return EndpointSpec.model_validate(values)


def placement_of(kind: str, *, replicas: int = 1, autoscaled: bool = True,
                 number: int = 1, **changes: Any) -> Placement:  # fmt: skip
    """Version ``number`` of a ``kind`` endpoint as the fleet would be given it."""
    return Placement(
        endpoint_id=uuid.UUID(int=7),
        endpoint=f"my-{kind}",
        kind=kind,
        version=VersionRecord(uuid.UUID(int=number), number, "/src/model", None, "ab" * 32),
        spec=spec_of(kind, **changes),
        archive_url=f"s3://archives/blobs/{'ab' * 32}",
        replicas=replicas,
        autoscaled=autoscaled,
    )


CONFIG = ClusterConfig.of(FleetSettings(k8s_namespace="models", k8s_image="reg/cormorant:1"))


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["kind"]: obj for obj in objects}


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("kind", ["web", "batch", "stream"])
def test_every_object_validates_against_the_kubernetes_schemas(kind: str, version: str) -> None:
    objects = manifests(placement_of(kind, replicas=0 if kind == "batch" else 1), CONFIG)
    checked = 0
    for obj in objects:
        if obj["kind"] == "ScaledObject":
            continue
        kubernetes_validate.validate(obj, version, strict=True)
        checked += 1
    assert checked == len(objects) - (kind == "stream") >= 2
    # The printed YAML is the same objects.
    assert list(yaml.safe_load_all(render_yaml(objects))) == objects


def test_an_invalid_object_is_caught_by_the_validation() -> None:
    [deployment, *_] = manifests(placement_of("web"), CONFIG)
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_a_web_endpoint_is_a_hardened_worker_deployment_scaled_by_an_hpa() -> None:
    objects = by_kind(manifests(placement_of("web"), CONFIG))
    assert set(objects) == {"Deployment", "Service", "PodDisruptionBudget",
                            "HorizontalPodAutoscaler"}  # fmt: skip
    deployment = objects["Deployment"]
    assert deployment["metadata"]["namespace"] == "models"
    assert deployment["metadata"]["labels"]["cormorant.dev/endpoint"] == "my-web"
    assert deployment["metadata"]["labels"]["cormorant.dev/version"] == "1"
    assert deployment["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cormorant"
    # The HPA owns the count.
    assert "replicas" not in deployment["spec"]
    template = deployment["spec"]["template"]
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    pod = template["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    [fetch] = pod["initContainers"]
    assert fetch["command"][-2:] == [f"s3://archives/blobs/{'ab' * 32}", "/srv/model"]
    [worker] = pod["containers"]
    assert worker["image"] == "reg/cormorant:1"
    assert worker["command"][:3] == ["python", "-m", "cormorant.worker"]
    command = " ".join(worker["command"])
    assert "--source /srv/model --file predict.py --function predict" in command
    assert "--endpoint my-web --version 1" in command
    assert "--server workers=2" in command
    assert "--env MODEL_FLAVOUR=small" in command
    assert command.endswith("--host 0.0.0.0 --port 8080")
    env = {v["name"]: v.get("value") for v in worker["env"]}
    assert env["CORMORANT_WORKER_MAX_PROCESSES"] == "64"
    assert env["CORMORANT_WORKER_REQUEST_TIMEOUT_S"] == "29.5"
    assert worker["resources"]["limits"]["memory"] == "768Mi"
    security = worker["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert worker["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    mounts = {m["mountPath"]: m for m in worker["volumeMounts"]}
    assert mounts["/srv/model"]["readOnly"] is True
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 6)
    assert {m["type"] for m in hpa["metrics"]} == {"Resource", "Pods"}
    [pods] = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    assert pods["metric"]["name"] == "cormorant_worker_requests_in_flight"
    assert pods["target"]["averageValue"] == "4"


def test_a_version_beside_the_stable_one_runs_a_fixed_count_without_an_hpa() -> None:
    objects = by_kind(
        manifests(placement_of("web", replicas=2, autoscaled=False, number=2), CONFIG)
    )
    assert "HorizontalPodAutoscaler" not in objects
    assert objects["Deployment"]["spec"]["replicas"] == 2
    assert objects["Deployment"]["metadata"]["name"] == "my-web-v2"


def test_a_batch_endpoint_rests_at_zero_replicas() -> None:
    objects = by_kind(manifests(placement_of("batch", replicas=0), CONFIG))
    assert objects["Deployment"]["spec"]["replicas"] == 0
    assert "HorizontalPodAutoscaler" not in objects


def test_a_stream_endpoint_is_kafka_bridges_scaled_by_keda_on_lag() -> None:
    placement = placement_of("stream", replicas=1)
    objects = by_kind(manifests(placement, CONFIG))
    assert set(objects) == {"Deployment", "PodDisruptionBudget", "ScaledObject"}
    [bridge] = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert bridge["command"][:3] == ["python", "-m", "cormorant.kafka_bridge"]
    assert "--input-topic clicks --input-topic views" in " ".join(bridge["command"])
    # The Kafka password is in a Secret, never in the Deployment.
    assert "hunter2" not in yaml.safe_dump(objects["Deployment"])
    [security] = [v for v in bridge["env"] if v["name"] == "CORMORANT_KAFKA_BRIDGE_SECURITY"]
    assert security["valueFrom"]["secretKeyRef"]["name"] == "my-stream-v1-kafka"
    secret = kafka_secret(placement, CONFIG)
    assert secret is not None
    assert "hunter2" in secret["stringData"]["security"]
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    scaled = objects["ScaledObject"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == "my-stream-v1"
    # 4 input partitions: a fifth and sixth replica would sit idle.
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (1, 4)
    assert [t["metadata"]["topic"] for t in spec["triggers"]] == ["clicks", "views"]
    assert {t["type"] for t in spec["triggers"]} == {"kafka"}
    assert spec["triggers"][0]["metadata"]["lagThreshold"] == "4"


def test_a_bridge_pod_hands_its_partitions_over_within_its_grace_period() -> None:
    """A bridge pod's preStop starts the bridge's graceful handover itself (SIGTERM to the
    container's process, then waits for it to exit: a second signal would cut the handover
    short), and its grace period covers the bridge's own stop timeout plus the time to commit
    and leave the group."""
    objects = by_kind(manifests(placement_of("stream", replicas=1), CONFIG))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    [bridge] = pod["containers"]
    command = bridge["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    assert "os.kill(1, signal.SIGTERM)" in command[2]
    compile(command[2], "preStop", "exec")
    env = {v["name"]: v.get("value") for v in bridge["env"]}
    stop_timeout = float(env["CORMORANT_KAFKA_BRIDGE_STOP_TIMEOUT"])
    assert stop_timeout == max(1, round(CONFIG.stop_timeout_s))
    assert pod["terminationGracePeriodSeconds"] >= stop_timeout + HANDOVER_MARGIN_S
    # A web pod keeps its drain: gateways stop routing to it before its SIGTERM.
    web = by_kind(manifests(placement_of("web", replicas=1), CONFIG))["Deployment"]
    [worker] = web["spec"]["template"]["spec"]["containers"]
    assert worker["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


@pytest.mark.parametrize("kind", ["web", "stream"])
@pytest.mark.parametrize("replica_url", [None, "nats://replica:r3pl1ca@nats.platform.svc:4222"])
def test_replicas_get_the_replica_user_never_the_platform_password(
    kind: str, replica_url: str | None
) -> None:
    """A pod's NATS URL comes from a Secret; the platform's password appears nowhere a model
    runs, whether or not the deployer knows the replica user's URL."""
    settings = FleetSettings(
        nats_url="nats://cormorant:pl4tf0rm@nats.platform.svc:4222",
        replica_nats_url=replica_url,
        k8s_namespace="models",
    )
    config = ClusterConfig.of(settings)
    objects = manifests(placement_of(kind), config)
    assert "pl4tf0rm" not in yaml.safe_dump_all(objects)
    [container] = by_kind(objects)["Deployment"]["spec"]["template"]["spec"]["containers"]
    [nats] = [v for v in container["env"] if v["name"] == "CORMORANT_NATS_URL"]
    assert nats["valueFrom"]["secretKeyRef"] == {"name": REPLICA_NATS_SECRET, "key": "url"}
    secret = replica_nats_secret(config)
    kubernetes_validate.validate(secret, K8S_VERSION, strict=True)
    assert secret["metadata"]["namespace"] == "models"
    assert secret["stringData"]["url"] == (replica_url or "nats://nats.platform.svc:4222")


def test_long_slugs_make_valid_unique_names() -> None:
    long_a = object_name("x" * 80, "1")
    long_b = object_name("x" * 79 + "y", "1")
    assert len(long_a) <= 52
    assert long_a != long_b


def test_the_init_container_extracts_the_version_archive(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "predict.py").write_text("def predict(x):\n    return x\n")
    archive = tmp_path / "archive.tar.gz"
    with archive.open("wb") as out:
        write_archive(source, out)
    assert fetch.main([archive.as_uri(), str(tmp_path / "model")]) == 0
    assert (tmp_path / "model" / "predict.py").read_text().startswith("def predict")


def test_the_init_container_refuses_an_archive_escaping_its_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"pwned"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert fetch.main([str(archive), str(tmp_path / "model")]) == 1
    assert not (tmp_path / "outside.txt").exists()
    assert "cannot fetch the code archive" in capsys.readouterr().err


REPO = Path(__file__).resolve().parents[3]


def _replica_selectors() -> list[tuple[str, dict[str, str]]]:
    """Every label selector in the platform manifests that is meant for replica pods."""
    found = []
    files = [
        REPO / "deploy/k8s/base/servicemonitors.yaml",
        REPO / "deploy/k8s/base/networkpolicies.yaml",
    ]
    files += sorted((REPO / "deploy/k8s/overlays").glob("*/replicas.yaml"))
    for path in files:
        for obj in yaml.safe_load_all(path.read_text()):
            if not obj:
                continue
            spec = obj.get("spec", {})
            selectors = [spec.get("podSelector", {}), spec.get("selector", {})]
            for rule in spec.get("ingress", []) + spec.get("egress", []):
                for peer in rule.get("from", []) + rule.get("to", []):
                    selectors.append(peer.get("podSelector", {}))
            for selector in selectors:
                labels = selector.get("matchLabels", {})
                if labels.get("app.kubernetes.io/name") == "cormorant-replica" or (
                    path.name == "replicas.yaml"
                    and obj["kind"] == "NetworkPolicy"
                    and labels
                    and selector is spec.get("podSelector")
                ):
                    found.append((f"{path.name}:{obj['metadata']['name']}", labels))
    return found


@pytest.mark.parametrize("kind", ["web", "stream"])
def test_the_platform_policies_select_the_pods_the_fleet_makes(kind: str) -> None:
    """The NetworkPolicies and the PodMonitor in deploy/k8s fence and scrape exactly the pods
    this fleet labels: a renamed label would leave replicas open and unscraped."""
    pod_labels = by_kind(manifests(placement_of(kind), CONFIG))["Deployment"]["spec"]["template"][
        "metadata"
    ]["labels"]
    selectors = _replica_selectors()
    assert len(selectors) >= 5
    for where, labels in selectors:
        assert labels.items() <= pod_labels.items(), where
