"""``KubernetesFleet``: each endpoint version a Deployment; its pods are the replicas.

The deployer keeps its picture of every endpoint as with the local fleet (the supervisor's
``EndpointRuntime``s: status, desired count, canaries, events), but a version's replica count
is applied to its Deployment (server-side apply) instead of starting processes, the stable web
version is scaled by its HPA and a stream's by KEDA, and replicas are the pods the watch reports:
each pod is followed by a ``PodReplica`` that writes and publishes the same replica states as a
local replica's runner (``starting``, ``ready`` with the pod's address, ``crashed``,
``draining``, ``stopped``), so the routing table, the events and ``observe()`` are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import replace
from typing import Any

import httpx
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from cormorant.common.endpoints.fleet import Placement
from cormorant.common.endpoints.schemas import EndpointSpec
from cormorant.common.endpoints.snapshot import SnapshotStore
from cormorant.common.endpoints.store import ReplicaRecord, ReplicaStore, VersionRecord
from cormorant.common.retry import Backoff
from cormorant.fleet.kubernetes.client import Cluster, ClusterError
from cormorant.fleet.kubernetes.manifests import MANAGER, hpa_managed, object_name
from cormorant.fleet.kubernetes.render import placement_of_runtime
from cormorant.fleet.kubernetes.swap import swap_cluster_version
from cormorant.fleet.kubernetes.watch import PodView, crash_cause, pod_view
from cormorant.fleet.local import LocalFleet
from cormorant.fleet.replica import EndpointRuntime, Failure, ReplicaRunner
from cormorant.fleet.runtime.local import LocalRuntime
from cormorant.fleet.settings import FleetSettings
from cormorant.fleet.supervisor import Publisher, Supervisor
from cormorant.fleet.swap import SwapRefused

log = logging.getLogger(__name__)

POD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGER}"
_WATCH_BACKOFF = Backoff(initial=0.5, cap=15.0)
CLUSTER_FAILURE = "the Kubernetes API"
"""How a ``ClusterError`` message begins (``client.py``): such a failure clears once an apply
succeeds."""


class PodReplica(ReplicaRunner):
    """One pod of a version's Deployment, followed through the pod watch."""

    def __init__(
        self, supervisor: ClusterSupervisor, endpoint: EndpointRuntime, replica_id: uuid.UUID,
        view: PodView,
    ) -> None:  # fmt: skip
        super().__init__(supervisor, endpoint, replica_id)
        # Restarts before this deployer saw the pod (it restarted) are neither new crashes
        # nor this replica row's: the previous row counted them.
        self.seen_restarts = view.restarts
        self.uid = view.uid
        self.pod = view.name
        self.view = view
        self.port = supervisor.settings.k8s_replica_port
        self.updates: asyncio.Queue[PodView] = asyncio.Queue()

    async def run(self) -> None:
        """Follow the pod until it is gone (or the deployer stops: the pod keeps serving)."""
        try:
            await self._record("starting", host=self.pod, restarts=0)
            while (view := await self._next()) is not None:
                self.view = view
                if await self._follow(view):
                    return
            if self.endpoint.deleted and self.state != "stopped":
                await self._record("stopped", reason=f"pod {self.pod} no longer watched")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s of %s: following it failed", self.pod, self.endpoint.slug)
            with contextlib.suppress(Exception):
                await self._record("stopped", reason="the deployer lost track of this pod")
        finally:
            self.done.set()
            self.sup.finished(self)

    async def _next(self) -> PodView | None:
        """The pod's next state, or None once asked to stop."""
        if self.stop_requested.is_set() and self.updates.empty():
            return None
        update = asyncio.ensure_future(self.updates.get())
        stop = asyncio.ensure_future(self.stop_requested.wait())
        try:
            await asyncio.wait({update, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not update.done():
                update.cancel()
        return update.result() if update.done() and not update.cancelled() else None

    async def _follow(self, view: PodView) -> bool:
        """Record what ``view`` changes; True once the pod is gone."""
        if view.evicted is not None:
            reason = f"pod {view.name} evicted: {view.evicted}"
            self.sup.count_death(self.endpoint, "killed", reason)
            await self._record("crashed", reason=reason, cause="killed", last_error=reason)
            await self._record("stopped", reason="the Deployment replaces the evicted pod")
            return True
        if view.gone:
            if self.state == "ready":
                await self._record("draining")
            await self._record("stopped")
            return True
        if view.terminating:
            if self.state == "ready":
                await self._record("draining")
            return False
        if view.restarts > self.seen_restarts:
            self.restarts += view.restarts - self.seen_restarts
            self.seen_restarts = view.restarts
            reason = f"pod {view.name}: container {view.crash or 'exited'}"
            if view.waiting == "CrashLoopBackOff":
                reason += "; restarted with back-off (CrashLoopBackOff)"
            # The count first: whoever sees the crash (or the failure it implies) sees it.
            await self.sup.write_replica(self.id, restarts=self.restarts)
            await self._crashed(Failure(reason, cause=crash_cause(view)))
        serving = view.ready and view.ip is not None
        if serving and self.state != "ready":
            if self.state == "crashed":
                # The kubelet restarted the container: a local replica's restart starts too.
                await self._record("starting")
            self.url = f"http://{view.ip}:{self.port}"
            await self._became_ready()
        elif not serving and self.state == "ready":
            await self._record("starting", reason=f"pod {view.name} is not ready")
        elif self.state == "crashed" and view.waiting != "CrashLoopBackOff":
            await self._record("starting")
        return False


class ClusterSupervisor(Supervisor):
    """The ``Supervisor`` whose replicas are pods: converging applies a version's objects."""

    def __init__(self, *, cluster: Cluster, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = cluster
        self.pods: dict[str, PodReplica] = {}
        """The replica following each pod, by pod uid."""
        self.fixed: set[tuple[uuid.UUID, str]] = set()
        """Versions last applied with a replica count of the deployer's (endpoint id, label)."""

    def placement(self, endpoint: EndpointRuntime) -> Placement:
        """What ``endpoint``'s version runs as now."""
        archive = self.snapshots.archive_url(endpoint.version.digest)
        return placement_of_runtime(endpoint, archive)

    async def converge(self, endpoint: EndpointRuntime) -> None:
        """Apply the version's objects with its desired count (idempotent). A refusal is
        the endpoint's failure (shown while no pod serves) until an apply succeeds: the
        reconcile loop applies again."""
        async with endpoint.lock:
            if endpoint.deleted:
                return
            before = endpoint.failure
            placement = self.placement(endpoint)
            fixed = (endpoint.id, endpoint.version.label)
            try:
                if hpa_managed(placement) and fixed in self.fixed:
                    # A promoted canary: its count goes to the HPA without dropping to 1.
                    name = object_name(endpoint.slug, endpoint.version.label)
                    await self.cluster.hand_over_replicas(name, max(1, endpoint.desired))
                    self.fixed.discard(fixed)
                await self.cluster.apply_placement(placement)
                if not hpa_managed(placement):
                    self.fixed.add(fixed)
            except ClusterError as exc:
                log.warning("%s: %s", endpoint.slug, exc)
                endpoint.failure = exc.message
            else:
                if endpoint.failure is not None and endpoint.failure.startswith(CLUSTER_FAILURE):
                    endpoint.failure = None
            changed = endpoint.failure != before
        if changed:
            await self.refresh(endpoint)

    async def remove(self, endpoint: EndpointRuntime) -> None:
        """Delete every version's objects of a deleted endpoint, wait for its pods to go."""
        async with endpoint.lock:
            runtimes = [endpoint, *self.others.pop(endpoint.id, {}).values()]
            for runtime in runtimes:
                runtime.deleted = True
                runtime.desired = 0
        for runtime in runtimes:
            await self.retire(runtime)
        self.endpoints.pop(endpoint.id, None)

    async def retire(self, runtime: EndpointRuntime) -> None:
        """Delete one version's objects and wait for its pods to terminate (their drain and
        stop grace), then stop following those still there."""
        await self.cluster.delete_version(runtime.slug, runtime.version.label)
        runners = list(runtime.replicas.values())
        grace = self.settings.drain_grace_s + self.settings.stop_timeout_s + 5
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.gather(*(runner.done.wait() for runner in runners))
        for runner in runners:
            runner.stop_requested.set()
        await asyncio.gather(*(runner.done.wait() for runner in runners))

    async def _adoptable(self) -> dict[uuid.UUID, list[ReplicaRecord]]:
        """Nothing to resume: the pods a previous deployer followed are found again by the
        watch (as replicas with new ids), so their old rows are stopped."""
        for row in await self.store.live_replicas():
            await self.write_replica(row.id, state="stopped")
        return {}

    def finished(self, runner: ReplicaRunner) -> None:
        """Forget a replica whose pod is gone."""
        super().finished(runner)
        if isinstance(runner, PodReplica) and self.pods.get(runner.uid) is runner:
            self.pods.pop(runner.uid)

    async def observe_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        """Hand a watch event to the pod's replica (a new pod becomes a new replica)."""
        view = pod_view(event_type, pod)
        if view is None:
            return
        runner = self.pods.get(view.uid)
        if runner is None:
            if view.gone or view.terminating or view.evicted is not None:
                return
            runtime = self._runtime_of(view)
            if runtime is None or runtime.deleted:
                return  # a pod of an endpoint or version this deployer no longer runs
            replica_id = await self.store.add_replica(runtime.id, runtime.version.id)
            runner = PodReplica(self, runtime, replica_id, view)
            self.pods[view.uid] = runner
            self._run(runner)
        runner.updates.put_nowait(view)

    def vanished(self, listed: set[str]) -> None:
        """Pods that were deleted while no watch ran: their replicas are stopped."""
        for uid, runner in list(self.pods.items()):
            if uid not in listed:
                runner.updates.put_nowait(replace(runner.view, ready=False, gone=True))

    def _runtime_of(self, view: PodView) -> EndpointRuntime | None:
        for endpoint in self.endpoints.values():
            if endpoint.slug != view.endpoint:
                continue
            if endpoint.version.label == view.version:
                return endpoint
            return self.others.get(endpoint.id, {}).get(view.version)
        return None


class KubernetesFleet(LocalFleet):
    """The ``Fleet`` of Deployments in one namespace of a cluster.

    The local runtime only checks configurations (``python -m cormorant.worker --check``)
    before a deploy; the autoscalers are never started (HPA and KEDA take the scaling
    decisions) but kept for the stream status.
    """

    pods: ClusterSupervisor
    """The fleet's supervisor, whose replicas are pods."""

    def __init__(
        self,
        *,
        settings: FleetSettings,
        store: ReplicaStore,
        snapshots: SnapshotStore,
        publisher: Publisher,
        http: httpx.AsyncClient,
        cluster: Cluster,
        runtime: LocalRuntime | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.cluster = cluster
        super().__init__(
            settings=settings,
            store=store,
            snapshots=snapshots,
            publisher=publisher,
            http=http,
            runtime=runtime,
            registry=registry,
        )
        self.watching = asyncio.Event()
        """Set once the pods have been listed and the watch follows them."""

    def _new_supervisor(self, **parts: Any) -> Supervisor:
        self.pods = ClusterSupervisor(cluster=self.cluster, **parts)
        return self.pods

    async def start(self, nc: Client) -> None:
        """Apply every endpoint's objects, then follow their pods."""
        archives = self.settings.resolved_archives_url()
        if "://" not in archives or archives.startswith("file://"):
            log.warning(
                "archives are stored at %s, a path of this machine: pods cannot fetch code "
                "from it; set CORMORANT_ARCHIVES_URL to an object store (s3://...)",
                archives,
            )
        self.runtime.open()
        await self.pods.load()
        self.pods.spawn(self._follow_pods(), name="pod-watch")
        self.pods.start()

    async def close(self) -> None:
        """Stop watching; the pods keep serving."""
        try:
            await self.pods.close()
        finally:
            try:
                await self.runtime.close()
            finally:
                await self.cluster.close()

    async def swap(
        self, endpoint_id: uuid.UUID, version: VersionRecord, spec: EndpointSpec
    ) -> None:
        """Hand the stream endpoint's consumer group to ``version``'s bridge Deployment (run
        with ``spec``), then delete the old version's (``kubernetes/swap.py``)."""
        endpoint = self.pods.endpoints.get(endpoint_id)
        if endpoint is None or endpoint.deleted:
            raise SwapRefused(f"endpoint {endpoint_id} runs no replicas here")
        await swap_cluster_version(self.pods, endpoint, version, spec, self.stream_autoscaler)

    async def _retire(self, runtime: EndpointRuntime) -> None:
        """Delete the version's objects once its pods are gone."""
        runtime.deleted = True
        runtime.desired = 0
        await self.pods.retire(runtime)

    async def _follow_pods(self) -> None:
        """List the pods, then watch them from the list's version; list again after a break."""
        failures = 0
        while True:
            try:
                pods, version = await self.cluster.pods(POD_SELECTOR)
                for pod in pods:
                    await self.pods.observe_pod("ADDED", pod)
                self.pods.vanished({pod["metadata"]["uid"] for pod in pods})
                self.watching.set()
                async for event_type, pod in self.cluster.watch_pods(POD_SELECTOR, version):
                    failures = 0
                    await self.pods.observe_pod(event_type, pod)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = _WATCH_BACKOFF.delay(failures)
                log.warning("pod watch broke (%s); listing again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
