"""A stream endpoint's model swap on a cluster: one version's bridge Deployment after the other.

The new version's Deployment is applied at the count the old version runs now (its
ScaledObject only once it takes over: KEDA would scale it while it warms up), while the old
pods keep consuming; its pods join the endpoint's consumer group and
answer ``/healthz`` only once joined, and the pod watch reports them ready as for any
replica. Once all are ready the new version becomes the stable one and the old version's
objects are deleted: its pods get their preStop and SIGTERM, on which a kafka-bridge finishes
its in-flight batches, commits and leaves the group, so the new pods resume at the committed
offsets (no gap, no duplicate). If they do not all get ready within the start timeout, the new
version's objects are deleted and the old one keeps consuming (``SwapRefused``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from cormorant.common.endpoints.schemas import EndpointSpec
from cormorant.common.endpoints.store import VersionRecord
from cormorant.common.errors import BadRequest
from cormorant.fleet.kubernetes.client import ClusterError
from cormorant.fleet.kubernetes.manifests import object_name
from cormorant.fleet.kubernetes.render import placement_of_runtime
from cormorant.fleet.lag import StreamAutoscaler
from cormorant.fleet.replica import EndpointRuntime
from cormorant.fleet.swap import SwapRefused

if TYPE_CHECKING:
    from cormorant.fleet.kubernetes.fleet import ClusterSupervisor, PodReplica

log = logging.getLogger(__name__)


async def swap_cluster_version(
    supervisor: ClusterSupervisor,
    endpoint: EndpointRuntime,
    version: VersionRecord,
    spec: EndpointSpec,
    scaler: StreamAutoscaler,
) -> None:
    """Hand ``endpoint``'s consumer group from its current version's pods to ``version``'s
    (run with ``spec``); ``SwapRefused`` naming what did not get ready, the old version still
    consuming, when they do not."""
    if endpoint.kind != "stream":
        raise BadRequest(f"endpoint {endpoint.slug!r} is not a stream endpoint")
    if version.id == endpoint.version.id:
        raise SwapRefused(f"version {version.label} of {endpoint.slug!r} already serves")
    if endpoint.id in scaler.swapping:
        raise SwapRefused(f"a model swap of {endpoint.slug!r} is already running")
    scaler.swapping.add(endpoint.id)
    try:
        await _swap(supervisor, endpoint, version, spec)
    finally:
        scaler.swapping.discard(endpoint.id)


async def _swap(
    supervisor: ClusterSupervisor,
    endpoint: EndpointRuntime,
    version: VersionRecord,
    spec: EndpointSpec,
) -> None:
    # The pods the old version runs now (KEDA may have scaled it past its minimum).
    serving = sum(1 for r in endpoint.replicas.values() if r.state != "stopped")
    count = max(serving, endpoint.desired, endpoint.spec.replicas.min, 1)
    snapshot = await supervisor.snapshots.extracted(version.digest)
    incoming = EndpointRuntime(
        id=endpoint.id,
        slug=endpoint.slug,
        kind=endpoint.kind,
        spec=spec,
        version=version,
        source_dir=snapshot.directory,
        desired=count,
        status="deploying",
        reason=None,
        events=endpoint.events,  # one history: the endpoint's events show both versions
        primary=False,
    )
    name = object_name(endpoint.slug, version.label)
    log.info(
        "swapping %s from version %s to %s (Deployment %s, %d pod(s))",
        endpoint.slug,
        endpoint.version.label,
        version.label,
        name,
        count,
    )
    # Beside the stable version before its pods exist: the watch makes them its replicas.
    supervisor.others.setdefault(endpoint.id, {})[version.label] = incoming
    try:
        archive = supervisor.snapshots.archive_url(version.digest)
        try:
            await supervisor.cluster.apply_placement(
                placement_of_runtime(incoming, archive), replicas=count
            )
        except ClusterError as exc:
            raise SwapRefused(
                f"version {version.label} of {endpoint.slug!r} could not be started: "
                f"{exc.message}; version {endpoint.version.label} keeps consuming",
                details={"version": version.label, "deployment": name},
            ) from exc
        # Applied with the deployer's count: the promotion hands it over to KEDA, whose
        # ScaledObject the converge below applies.
        supervisor.fixed.add((endpoint.id, version.label))
        await _all_ready(
            endpoint, incoming, name, count, timeout=supervisor.settings.start_timeout_s
        )
    except BaseException:
        await _withdraw(supervisor, incoming)
        raise
    async with endpoint.lock:
        if endpoint.deleted:
            deleted = True
        else:
            deleted = False
            supervisor.others.get(endpoint.id, {}).pop(version.label, None)
            incoming.primary = True
            incoming.status, incoming.reason = endpoint.status, endpoint.reason
            incoming.published = endpoint.published
            supervisor.endpoints[endpoint.id] = incoming
            endpoint.primary = False
            endpoint.deleted = True
            endpoint.desired = 0
    if deleted:
        await _withdraw(supervisor, incoming)
        raise SwapRefused(f"endpoint {endpoint.slug!r} was deleted during the model swap")
    await supervisor.converge(incoming)
    await supervisor.refresh(incoming)
    # Only now: its pods get preStop and SIGTERM, finish their batches, commit and leave.
    await supervisor.retire(endpoint)
    await supervisor.refresh(incoming)
    log.info("%s now runs version %s", endpoint.slug, version.label)


async def _withdraw(supervisor: ClusterSupervisor, incoming: EndpointRuntime) -> None:
    """Delete the new version's objects and stop following its pods."""
    incoming.deleted = True
    incoming.desired = 0
    others = supervisor.others.get(incoming.id, {})
    if others.get(incoming.version.label) is incoming:
        others.pop(incoming.version.label)
    supervisor.fixed.discard((incoming.id, incoming.version.label))
    await supervisor.retire(incoming)


def _pods(incoming: EndpointRuntime) -> list[PodReplica]:
    # Imported here: fleet.py imports this module for KubernetesFleet.swap.
    from cormorant.fleet.kubernetes.fleet import PodReplica

    return [r for r in incoming.replicas.values() if isinstance(r, PodReplica)]


def _unready(incoming: EndpointRuntime, name: str, count: int) -> str:
    """Which of the new pods are not ready, and why (``ContainerCreating``, a crash)."""
    pods = _pods(incoming)
    ready = sum(1 for pod in pods if pod.state == "ready")
    waiting = [f"{pod.pod} {pod.view.waiting or pod.state}" for pod in pods if pod.state != "ready"]
    shown = f": {', '.join(waiting)}" if waiting else " (no pod was created)"
    return f"Deployment {name}: {ready} of {count} pod(s) ready{shown}"


async def _all_ready(
    endpoint: EndpointRuntime,
    incoming: EndpointRuntime,
    name: str,
    count: int,
    *,
    timeout: float,  # noqa: ASYNC109 - the start timeout of the fleet's settings
) -> None:
    label, old = incoming.version.label, endpoint.version.label
    keeps = f"its objects were deleted and version {old} keeps consuming"

    def refused(what: str) -> SwapRefused:
        return SwapRefused(
            f"version {label} of {endpoint.slug!r} {what}; {keeps}",
            details={"version": label, "deployment": name},
        )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while incoming.ready_count() < count:
        if endpoint.deleted or incoming.deleted:
            raise SwapRefused(f"endpoint {endpoint.slug!r} was deleted during the model swap")
        if incoming.failure is not None:
            raise refused(f"did not start ({incoming.failure}; {_unready(incoming, name, count)})")
        if loop.time() > deadline:
            raise refused(f"was not ready within {timeout:g} s ({_unready(incoming, name, count)})")
        await asyncio.sleep(0.1)
