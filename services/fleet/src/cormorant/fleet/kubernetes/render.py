"""The manifests of running endpoints as ``cormorant k8s manifests`` prints them.

Rendered from the deployer's picture of every endpoint (the stable version and the versions
beside it), with the same builders the ``KubernetesFleet`` applies, whichever fleet runs: a
team on one machine can review or GitOps what a cluster would run. Kafka credentials are left
out (they live in a Secret the fleet applies and never prints).
"""

from __future__ import annotations

from collections.abc import Iterable

import yaml

from cormorant.common.endpoints.fleet import ManifestsOut, Placement
from cormorant.common.endpoints.snapshot import SnapshotStore
from cormorant.common.endpoints.views import EndpointNotFound
from cormorant.common.errors import Conflict
from cormorant.fleet.kubernetes.manifests import ClusterConfig, Manifest, manifests
from cormorant.fleet.replica import EndpointRuntime
from cormorant.fleet.supervisor import Supervisor


def placement_of_runtime(runtime: EndpointRuntime, archive_url: str) -> Placement:
    """The placement a supervised version stands for (its current desired count)."""
    return Placement(
        endpoint_id=runtime.id,
        endpoint=runtime.slug,
        kind=runtime.kind,
        version=runtime.version,
        spec=runtime.spec,
        archive_url=archive_url,
        replicas=runtime.desired,
        autoscaled=runtime.primary,
    )


def runtime_manifests(
    runtimes: Iterable[EndpointRuntime], snapshots: SnapshotStore, config: ClusterConfig
) -> list[Manifest]:
    """Every object of ``runtimes``, one version after the other."""
    objects: list[Manifest] = []
    for runtime in runtimes:
        archive = snapshots.archive_url(runtime.version.digest)
        objects += manifests(placement_of_runtime(runtime, archive), config)
    return objects


def render_yaml(objects: Iterable[Manifest]) -> str:
    """``objects`` as a multi-document YAML stream (``kubectl apply -f -`` reads it)."""
    return yaml.safe_dump_all(list(objects), sort_keys=False, default_flow_style=False)


def render(
    supervisor: Supervisor,
    snapshots: SnapshotStore,
    config: ClusterConfig,
    slug: str | None = None,
) -> ManifestsOut:
    """The manifests of endpoint ``slug`` (every version it runs), or of every endpoint."""
    primaries = sorted(
        (e for e in supervisor.endpoints.values() if not e.deleted), key=lambda e: e.slug
    )
    if slug is not None:
        primaries = [e for e in primaries if e.slug == slug]
        if not primaries:
            raise EndpointNotFound(slug)
    runtimes: list[EndpointRuntime] = []
    for primary in primaries:
        runtimes.append(primary)
        others = supervisor.others.get(primary.id, {})
        runtimes += [others[label] for label in sorted(others, key=lambda v: (len(v), v))]
    try:
        objects = runtime_manifests(runtimes, snapshots, config)
    except ValueError as exc:  # a stored stream spec without its kafka section
        raise Conflict(f"cannot render the manifests: {exc}") from exc
    return ManifestsOut(
        endpoints=[e.slug for e in primaries], objects=objects, yaml=render_yaml(objects)
    )
