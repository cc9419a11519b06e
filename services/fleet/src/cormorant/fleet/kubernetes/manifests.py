"""What a placement becomes on Kubernetes: pure functions from a ``Placement`` to objects.

One version of one endpoint is a Deployment (the worker image; the code fetched from the
version's archive by an init container into an ``emptyDir`` the worker mounts read-only), a
PodDisruptionBudget, and by kind: a web endpoint's stable version a Service and an HPA (CPU and
in-flight requests per pod), a version beside it a Service and a fixed count, a batch endpoint a
Service and the count its demand asks for (0 at rest), a stream endpoint kafka-bridge pods
scaled by a KEDA ``ScaledObject`` on consumer lag. ``cormorant k8s manifests`` prints the same
objects the ``KubernetesFleet`` applies.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cormorant.common.bus.replica import without_credentials
from cormorant.common.endpoints.fleet import Placement
from cormorant.common.endpoints.kafka import stored_kafka
from cormorant.common.web import REPLICA_ENV
from cormorant.fleet.replica import launch_of
from cormorant.fleet.settings import FleetSettings

Manifest = dict[str, Any]

MODEL_DIR = "/srv/model"
"""Where the init container extracts the version's code and the worker reads it."""
SCRATCH_DIR = "/tmp"
FETCH_MODULE = "cormorant.fleet.kubernetes.fetch"
MANAGER = "cormorant-deployer"
"""The ``app.kubernetes.io/managed-by`` label and the server-side apply field manager."""
ENDPOINT_LABEL = "cormorant.dev/endpoint"
VERSION_LABEL = "cormorant.dev/version"
KIND_LABEL = "cormorant.dev/kind"
IN_FLIGHT_METRIC = "cormorant_worker_requests_in_flight"
"""The worker's gauge the HPA averages over the pods (via the Prometheus adapter)."""

_NAME_MAX = 52  # Room for the ReplicaSet's and the pod's suffixes under 63 characters.
_DNS_UNSAFE = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """The settings the manifests depend on (from ``FleetSettings``)."""

    namespace: str
    image: str
    port: int
    run_as_user: int
    cpu_request: str
    cpu_target_percent: int
    archives_secret: str | None
    replica_nats_url: str
    """The NATS URL replicas connect with (the replica user's): it reaches the pods through
    the ``REPLICA_NATS_SECRET`` Secret, never as a literal in a Deployment."""
    log_level: str
    log_json: bool
    otlp_endpoint: str | None
    drain_grace_s: float
    stop_timeout_s: float
    start_timeout_s: float
    scale_down_delay_s: float
    stream_lag_target: float

    @classmethod
    def of(cls, settings: FleetSettings) -> ClusterConfig:
        """The cluster side of ``settings``."""
        return cls(
            namespace=settings.k8s_namespace,
            image=settings.k8s_image,
            port=settings.k8s_replica_port,
            run_as_user=settings.k8s_run_as_user,
            cpu_request=settings.k8s_cpu_request,
            cpu_target_percent=settings.k8s_cpu_target_percent,
            archives_secret=settings.k8s_archives_secret,
            replica_nats_url=_replica_nats_url(settings),
            log_level=settings.log_level,
            log_json=settings.log_json,
            otlp_endpoint=settings.otlp_endpoint,
            drain_grace_s=settings.drain_grace_s,
            stop_timeout_s=settings.stop_timeout_s,
            start_timeout_s=settings.start_timeout_s,
            scale_down_delay_s=settings.scale_down_delay_s,
            stream_lag_target=settings.stream_lag_target,
        )


def object_name(slug: str, version: str) -> str:
    """The name of every object of ``version`` of endpoint ``slug`` (a DNS label)."""
    name = _DNS_UNSAFE.sub("-", f"{slug}-v{version}".lower()).strip("-")
    if len(name) <= _NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _NAME_MAX - 9].rstrip('-')}-{digest}"


def selector(slug: str, version: str | None = None) -> dict[str, str]:
    """The labels that pick the pods of ``slug`` (of one ``version`` when given)."""
    labels = {"app.kubernetes.io/managed-by": MANAGER, ENDPOINT_LABEL: _label_value(slug)}
    if version is not None:
        labels[VERSION_LABEL] = _label_value(version)
    return labels


def _label_value(value: str) -> str:
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", value)[:63]
    return value.strip("-._")


def labels_of(placement: Placement) -> dict[str, str]:
    """Every object's labels: the recommended ``app.kubernetes.io/*`` and ours."""
    component = "kafka-bridge" if placement.kind == "stream" else "worker"
    return {
        "app.kubernetes.io/name": "cormorant-replica",
        "app.kubernetes.io/instance": object_name(placement.endpoint, placement.version.label),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "cormorant",
        "app.kubernetes.io/version": _label_value(placement.version.label),
        KIND_LABEL: placement.kind,
        **selector(placement.endpoint, placement.version.label),
    }


def manifests(placement: Placement, config: ClusterConfig) -> list[Manifest]:
    """Every object ``placement`` runs as, in the order they are applied."""
    objects = [deployment(placement, config)]
    if placement.kind != "stream":
        objects.append(service(placement, config))
    objects.append(disruption_budget(placement, config))
    if placement.kind == "web" and placement.autoscaled:
        objects.append(autoscaler(placement, config))
    if placement.kind == "stream":
        objects.append(scaled_object(placement, config))
    return objects


def _metadata(placement: Placement, config: ClusterConfig) -> dict[str, Any]:
    return {
        "name": object_name(placement.endpoint, placement.version.label),
        "namespace": config.namespace,
        "labels": labels_of(placement),
        "annotations": {"cormorant.dev/endpoint-id": str(placement.endpoint_id)},
    }


def hpa_managed(placement: Placement) -> bool:
    """Whether an autoscaler (HPA or KEDA), not the deployer, sets the replica count."""
    return placement.kind == "stream" or (placement.kind == "web" and placement.autoscaled)


def deployment(placement: Placement, config: ClusterConfig) -> Manifest:
    """The version's pods: init container fetching the code, the worker (or kafka-bridge)."""
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(placement.endpoint, placement.version.label)},
        # A new pod serves before an old one stops (a spec change, a node drain).
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "template": {
            "metadata": {
                "labels": labels_of(placement),
                "annotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(config.port),
                    "prometheus.io/path": "/metrics",
                },
            },
            "spec": _pod_spec(placement, config),
        },
    }
    if not hpa_managed(placement):
        spec["replicas"] = placement.replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(placement, config),
        "spec": spec,
    }


def _pod_spec(placement: Placement, config: ClusterConfig) -> dict[str, Any]:
    drain = max(1, round(config.drain_grace_s))
    fetch = {
        "name": "fetch-code",
        "image": config.image,
        "command": ["python", "-m", FETCH_MODULE, placement.archive_url, MODEL_DIR],
        "volumeMounts": [{"name": "model", "mountPath": MODEL_DIR}],
        "securityContext": _container_security(),
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "256Mi"},
        },
    }
    if config.archives_secret:
        # Object-store credentials for the archive (AWS_* variables): never in the worker.
        fetch["envFrom"] = [{"secretRef": {"name": config.archives_secret}}]
    return {
        # User code is hostile: no API credentials, no service links, no host namespaces.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": config.run_as_user,
            "runAsGroup": config.run_as_user,
            "fsGroup": config.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # In-flight requests get the stop timeout after the drain; a bridge is not routed
        # to (no drain): the stop timeout is its handover's, then its commit and leave.
        "terminationGracePeriodSeconds": _stop_grace(config)
        if placement.kind == "stream"
        else drain + max(1, round(config.stop_timeout_s)),
        "initContainers": [fetch],
        "containers": [_replica_container(placement, config, drain)],
        "volumes": [
            {"name": "model", "emptyDir": {}},
            {"name": "scratch", "emptyDir": {}},
        ],
    }


def _container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


REPLICA_NATS_SECRET = "cormorant-replica-nats"
"""The Secret in the replicas' namespace holding the replica user's NATS URL (key ``url``)."""


def _replica_nats_url(settings: FleetSettings) -> str:
    """The replica user's URL; without one, the services' URL with its credentials dropped,
    so the platform's password never reaches a pod (a server that takes passwords then
    refuses the replicas' logging, loudly, rather than trusting user code with its own)."""
    if settings.replica_nats_url is not None:
        return settings.replica_nats_url.get_secret_value()
    return without_credentials(settings.nats_url)


def replica_nats_secret(config: ClusterConfig) -> Manifest:
    """The Secret every replica pod reads its NATS URL from; never printed by
    ``cormorant k8s manifests``."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": REPLICA_NATS_SECRET,
            "namespace": config.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": MANAGER,
                "app.kubernetes.io/part-of": "cormorant",
            },
        },
        "type": "Opaque",
        "stringData": {"url": config.replica_nats_url},
    }


HANDOVER_MARGIN_S = 5
"""Seconds a kafka-bridge keeps, after its in-flight batches' stop timeout, to commit and
leave its group before the pod's grace period ends (the local fleet grants the same)."""

# The bridge's graceful handover starts on SIGTERM, and a second signal makes it exit at once:
# so the hook sends the first one itself and then waits for the bridge (the container's PID 1)
# to exit, which ends the container and the hook with it; the kubelet's own SIGTERM, sent once
# the hook returns, never comes while the handover runs.
BRIDGE_PRE_STOP = (
    "import os, signal, time\nos.kill(1, signal.SIGTERM)\nwhile True:\n    time.sleep(0.5)\n"
)


def _stop_grace(config: ClusterConfig) -> int:
    """A bridge pod's termination grace period: its stop timeout plus the margin."""
    return max(1, round(config.stop_timeout_s)) + HANDOVER_MARGIN_S


def bridge_stop_timeout(config: ClusterConfig) -> int:
    """The kafka-bridge's own ``stop_timeout`` (finishing its in-flight batches) in a pod."""
    return max(1, round(config.stop_timeout_s))


def _replica_container(placement: Placement, config: ClusterConfig, drain: int) -> Manifest:
    spec = placement.spec
    launch = launch_of(
        spec,
        replica_id="",
        endpoint=placement.endpoint,
        endpoint_id=placement.endpoint_id,
        version=placement.version.label,
        source=Path(MODEL_DIR),
    )
    everywhere = "0.0.0.0"
    env: dict[str, str] = {
        "CORMORANT_LOG_LEVEL": config.log_level,
        "CORMORANT_LOG_JSON": "true" if config.log_json else "false",
    }
    if config.otlp_endpoint:
        env["CORMORANT_OTLP_ENDPOINT"] = config.otlp_endpoint
    if launch.bridge is not None:
        command = ["python", "-m", "cormorant.kafka_bridge", *launch.bridge_args(),
                   "--metrics-host", everywhere, "--metrics-port", str(config.port)]  # fmt: skip
        # The Kafka credentials come from the version's Secret, never from the manifest.
        bridge_env = {k: v for k, v in launch.bridge.environment().items()
                      if k != "CORMORANT_KAFKA_BRIDGE_SECURITY"}  # fmt: skip
        env.update(bridge_env)
        env["CORMORANT_KAFKA_BRIDGE_STOP_TIMEOUT"] = str(bridge_stop_timeout(config))
    else:
        command = ["python", "-m", "cormorant.worker", *launch.worker_args(),
                   "--host", everywhere, "--port", str(config.port)]  # fmt: skip
        env.update(launch.worker_settings())
    variables: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(env.items())]
    # The replica's id is its pod's name (local replicas get one from the deployer).
    variables.append(
        {"name": REPLICA_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    )
    variables.append(
        {
            "name": "CORMORANT_NATS_URL",
            "valueFrom": {"secretKeyRef": {"name": REPLICA_NATS_SECRET, "key": "url"}},
        }
    )
    if launch.bridge is not None and launch.bridge.security:
        variables.append(
            {
                "name": "CORMORANT_KAFKA_BRIDGE_SECURITY",
                "valueFrom": {
                    "secretKeyRef": {"name": kafka_secret_name(placement), "key": "security"}
                },
            }
        )
    if launch.bridge is not None:
        pre_stop = ["python", "-c", BRIDGE_PRE_STOP]
    else:
        # Gateways drop the pod once it is not ready; requests routed before still land.
        pre_stop = ["sleep", str(drain)]
    memory = f"{spec.resources.memory_mb}Mi"
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5,
             "timeoutSeconds": 2}  # fmt: skip
    return {
        "name": "kafka-bridge" if launch.bridge is not None else "worker",
        "image": config.image,
        "command": command,
        "env": variables,
        "ports": [{"name": "http", "containerPort": config.port, "protocol": "TCP"}],
        "readinessProbe": {**probe, "failureThreshold": 2},
        "livenessProbe": {**probe, "failureThreshold": 6},
        # A slow model import is not a dead replica: liveness waits for the first 200.
        "startupProbe": {
            **probe,
            "failureThreshold": max(1, round(config.start_timeout_s / 5)),
        },
        "lifecycle": {"preStop": {"exec": {"command": pre_stop}}},
        "resources": {
            "requests": {"cpu": config.cpu_request, "memory": memory},
            "limits": {"memory": memory},
        },
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
            {"name": "scratch", "mountPath": SCRATCH_DIR},
        ],
    }


def kafka_secret_name(placement: Placement) -> str:
    """The Secret holding a stream version's Kafka security options."""
    return f"{object_name(placement.endpoint, placement.version.label)}-kafka"


def kafka_secret(placement: Placement, config: ClusterConfig) -> Manifest | None:
    """The Secret of a stream version's Kafka credentials (None without any); never printed
    by ``cormorant k8s manifests``."""
    if placement.kind != "stream":
        return None
    security = stored_kafka(placement.spec.kafka).security
    if not security:
        return None
    metadata = _metadata(placement, config)
    metadata["name"] = kafka_secret_name(placement)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {"security": json.dumps(security)},
    }


def service(placement: Placement, config: ClusterConfig) -> Manifest:
    """A ClusterIP Service over the version's ready pods (for tooling; the gateway routes to
    pod addresses from the routing feed, as to local replicas)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(placement, config),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(placement.endpoint, placement.version.label),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def disruption_budget(placement: Placement, config: ClusterConfig) -> Manifest:
    """At most one pod of the version evicted at a time by a node drain."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(placement, config),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(placement.endpoint, placement.version.label)},
        },
    }


def autoscaler(placement: Placement, config: ClusterConfig) -> Manifest:
    """The stable web version's HPA: CPU, and in-flight requests per pod at the spec's target."""
    replicas = placement.spec.replicas
    low = max(1, replicas.min)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(placement, config),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": object_name(placement.endpoint, placement.version.label),
            },
            "minReplicas": low,
            "maxReplicas": max(low, replicas.max),
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": config.cpu_target_percent,
                        },
                    },
                },
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": IN_FLIGHT_METRIC},
                        "target": {
                            "type": "AverageValue",
                            "averageValue": _quantity(replicas.target),
                        },
                    },
                },
            ],
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": max(0, round(config.scale_down_delay_s)),
                }
            },
        },
    }


def _quantity(value: float) -> str:
    """``value`` as a Kubernetes quantity (milli-units when fractional)."""
    if float(value).is_integer():
        return str(int(value))
    return f"{round(value * 1000)}m"


def scaled_object(placement: Placement, config: ClusterConfig) -> Manifest:
    """A stream version's KEDA ``ScaledObject``: replicas by consumer lag, at most one per
    input partition (more would sit idle in the group)."""
    kafka = stored_kafka(placement.spec.kafka)
    replicas = placement.spec.replicas
    partitions = kafka.partition_count
    most = min(replicas.max, partitions) if partitions else replicas.max
    target = replicas.target or config.stream_lag_target
    group = launch_of(
        placement.spec,
        replica_id="",
        endpoint=placement.endpoint,
        endpoint_id=placement.endpoint_id,
        version=placement.version.label,
        source=Path(MODEL_DIR),
    ).bridge
    assert group is not None
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": _metadata(placement, config),
        "spec": {
            "scaleTargetRef": {"name": object_name(placement.endpoint, placement.version.label)},
            "minReplicaCount": min(replicas.min, most),
            "maxReplicaCount": most,
            "cooldownPeriod": max(0, round(config.scale_down_delay_s)),
            "triggers": [
                {
                    "type": "kafka",
                    "metadata": {
                        "bootstrapServers": kafka.bootstrap_servers,
                        "consumerGroup": group.group,
                        "topic": topic,
                        "lagThreshold": str(round(target)),
                        "offsetResetPolicy": "latest",
                    },
                }
                for topic in kafka.input_topics
            ],
        },
    }
