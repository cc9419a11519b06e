"""The Kubernetes API calls of the ``KubernetesFleet`` (kubernetes-asyncio).

Every object is written with server-side apply (``PATCH`` with
``application/apply-patch+yaml``, field manager ``cormorant-deployer``, forced: the deployer
owns the fields it sets, an HPA or KEDA the replica count it leaves out). Pods are listed, then
watched from the list's resource version, and listed again after the watch breaks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from cormorant.common.endpoints.fleet import Placement
from cormorant.common.errors import ServiceUnavailable
from cormorant.fleet.kubernetes.manifests import (
    MANAGER,
    ClusterConfig,
    Manifest,
    hpa_managed,
    kafka_secret,
    manifests,
    object_name,
    replica_nats_secret,
)
from cormorant.fleet.settings import FleetSettings

log = logging.getLogger(__name__)

APPLY = "application/apply-patch+yaml"
HANDOVER = "cormorant-handover"
"""The field manager that takes a Deployment's replica count over when an HPA starts
scaling it (Kubernetes' documented handover: the count is kept rather than reset to 1)."""
WATCH_TIMEOUT_S = 300
"""The API server ends a pod watch after this long; it is then resumed."""

_CUSTOM = {"ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects")}
# Kind → (API class, the snake_case name in its method names).
_TYPED: dict[str, tuple[type[Any], str]] = {
    "Deployment": (client.AppsV1Api, "deployment"),
    "Service": (client.CoreV1Api, "service"),
    "Secret": (client.CoreV1Api, "secret"),
    "PodDisruptionBudget": (client.PolicyV1Api, "pod_disruption_budget"),
    "HorizontalPodAutoscaler": (client.AutoscalingV2Api, "horizontal_pod_autoscaler"),
}
AUTOSCALERS = ("ScaledObject", "HorizontalPodAutoscaler")
"""The kinds that set a Deployment's replica count."""
VERSION_KINDS = ("ScaledObject", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service",
                 "Deployment", "Secret")  # fmt: skip
"""What one version may run as, in the order it is deleted (scalers before their target)."""


class ClusterError(ServiceUnavailable):
    """The Kubernetes API refused a call or could not be reached."""

    code = "cluster_error"


def _refusal(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"{exc.status} {message or exc.reason}"


class _Missing(Exception):
    """The object to delete was not there."""


async def _call(
    what: str, namespace: str, call: Awaitable[Any], *, missing_ok: bool = False
) -> Any:
    """Await ``call``; a refusal or an unreachable server as a ``ClusterError`` naming
    ``what`` and what to check (a 404 as ``_Missing`` when ``missing_ok``)."""
    try:
        return await call
    except ApiException as exc:
        if exc.status == 404 and missing_ok:
            raise _Missing(what) from exc
        hint = ""
        if exc.status in (401, 403):
            hint = " (check the deployer's RBAC there)"
        elif exc.status == 404:
            hint = " (is the resource's API installed, e.g. KEDA for stream endpoints?)"
        raise ClusterError(
            f"the Kubernetes API refused to {what} in namespace {namespace!r}: "
            f"{_refusal(exc)}{hint}"
        ) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise ClusterError(
            f"the Kubernetes API could not be reached to {what}: {exc}; check the deployer's "
            "kubeconfig or in-cluster credentials"
        ) from exc


async def connect(settings: FleetSettings) -> client.ApiClient:
    """An API client with the kubeconfig of ``settings``, or the pod's service account."""
    configuration = client.Configuration()
    if settings.k8s_kubeconfig is not None:
        await config.load_kube_config(
            config_file=str(settings.k8s_kubeconfig), client_configuration=configuration
        )
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class Cluster:
    """One namespace of one cluster, as the fleet uses it."""

    def __init__(self, api: client.ApiClient, config: ClusterConfig) -> None:
        self.api = api
        self.config = config
        self.namespace = config.namespace
        self.core = client.CoreV1Api(api)

    async def close(self) -> None:
        """Close the API client's connections."""
        await self.api.close()

    async def apply_placement(self, placement: Placement, *, replicas: int | None = None) -> None:
        """Apply every object of ``placement``; drop the HPA a version no longer scales by
        (a stable version that became a retiring one). With ``replicas``, its Deployment is
        held at that count with no autoscaler yet (a stream swap's new version, at the old
        one's count until it takes over: KEDA would scale it meanwhile)."""
        secret = kafka_secret(placement, self.config)
        secrets = [replica_nats_secret(self.config), *([secret] if secret else [])]
        for manifest in [*secrets, *manifests(placement, self.config)]:
            if replicas is not None:
                if manifest["kind"] in AUTOSCALERS:
                    continue
                if manifest["kind"] == "Deployment":
                    manifest["spec"]["replicas"] = replicas
            await self.apply(manifest)
        if placement.kind == "web" and not hpa_managed(placement):
            name = object_name(placement.endpoint, placement.version.label)
            await self.delete("HorizontalPodAutoscaler", name)

    async def apply(self, manifest: Manifest) -> None:
        """Server-side apply ``manifest`` as ``cormorant-deployer``."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        options: dict[str, Any] = {"field_manager": MANAGER, "force": True,
                                   "_content_type": APPLY}  # fmt: skip
        if kind in _CUSTOM:
            group, version, plural = _CUSTOM[kind]
            call = client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
                group, version, self.namespace, plural, name, manifest, **options
            )
        else:
            api_class, noun = _TYPED[kind]
            patch = getattr(api_class(self.api), f"patch_namespaced_{noun}")
            call = patch(name, self.namespace, manifest, **options)
        await _call(f"apply {kind} {name}", self.namespace, call)

    async def hand_over_replicas(self, name: str, replicas: int) -> None:
        """Give Deployment ``name``'s replica count (at ``replicas``) to another field manager,
        so that the next apply, which leaves the count to an HPA, keeps it."""
        body = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {"replicas": replicas},
        }
        options: dict[str, Any] = {"field_manager": HANDOVER, "force": True,
                                   "_content_type": APPLY}  # fmt: skip
        call = client.AppsV1Api(self.api).patch_namespaced_deployment(
            name, self.namespace, body, **options
        )
        await _call(f"hand Deployment {name}'s replicas over", self.namespace, call)

    async def delete(self, kind: str, name: str) -> bool:
        """Delete one object (its pods go with a Deployment); False if there was none."""
        if kind in _CUSTOM:
            group, version, plural = _CUSTOM[kind]
            call = client.CustomObjectsApi(self.api).delete_namespaced_custom_object(
                group, version, self.namespace, plural, name
            )
        else:
            api_class, noun = _TYPED[kind]
            remove = getattr(api_class(self.api), f"delete_namespaced_{noun}")
            call = remove(name, self.namespace, propagation_policy="Background")
        try:
            await _call(f"delete {kind} {name}", self.namespace, call, missing_ok=True)
        except _Missing:
            return False
        return True

    async def delete_version(self, slug: str, version: str) -> None:
        """Delete every object of ``version`` of endpoint ``slug``."""
        name = object_name(slug, version)
        for kind in VERSION_KINDS:
            await self.delete(kind, f"{name}-kafka" if kind == "Secret" else name)

    async def pods(self, selector: str) -> tuple[list[dict[str, Any]], str]:
        """The pods matching ``selector`` (as JSON) and the list's resource version."""
        found = await self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        items = [self.api.sanitize_for_serialization(pod) for pod in found.items]
        return items, found.metadata.resource_version

    async def watch_pods(
        self, selector: str, resource_version: str
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(event type, pod JSON)`` of every change after ``resource_version``, until the
        server ends the watch."""
        async with watch.Watch() as stream:
            async for event in stream.stream(
                self.core.list_namespaced_pod,
                self.namespace,
                label_selector=selector,
                resource_version=resource_version,
                allow_watch_bookmarks=False,
                timeout_seconds=WATCH_TIMEOUT_S,
            ):
                yield event["type"], event["raw_object"]
