"""``LocalFleet``: replicas as processes on this machine, kept and autoscaled by the fleet.

It puts together what runs replicas locally: the ``LocalRuntime`` (processes, the warm
worker template), the ``Supervisor`` (each endpoint's replicas at their count, crash restarts,
adoption after a fleet restart) and the autoscalers (in-flight requests for web endpoints,
consumer lag for stream endpoints). A cluster fleet would hand the same placements to
Deployments and leave the scaling decisions to HPA/KEDA.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import httpx
from nats.aio.client import Client
from prometheus_client import CollectorRegistry

from cormorant.common.endpoints.fleet import (
    ManifestsOut,
    Placement,
    ReplicaObserved,
    RunningVersion,
    StreamStatus,
)
from cormorant.common.endpoints.schemas import EndpointOut, EndpointSpec
from cormorant.common.endpoints.snapshot import SnapshotStore
from cormorant.common.endpoints.store import ReplicaStore, VersionRecord, slugify
from cormorant.common.endpoints.views import ReplicaEvent
from cormorant.common.events import Event, ReplicaChanged
from cormorant.common.internal import PLATFORM_SECRET_VARIABLES, ReplicaKeys
from cormorant.fleet.autoscale import Autoscaler
from cormorant.fleet.kubernetes.manifests import ClusterConfig
from cormorant.fleet.kubernetes.render import render
from cormorant.fleet.lag import StreamAutoscaler
from cormorant.fleet.replica import EndpointRuntime, launch_of
from cormorant.fleet.runtime import ConfigurationRefused
from cormorant.fleet.runtime.local import LocalRuntime, Sandbox, SpoolSink
from cormorant.fleet.runtime.template import WorkerTemplate
from cormorant.fleet.settings import FleetSettings
from cormorant.fleet.stream_status import stream_status
from cormorant.fleet.supervisor import Publisher, Supervisor
from cormorant.fleet.swap import SwapRefused, swap_stream_version

# A contained replica's own settings, which it may take from this process's environment.
_REPLICA_PREFIXES = ("CORMORANT_WORKER_", "CORMORANT_KAFKA_BRIDGE_")
# The fleet's own settings (and their former names), never a replica's.
_PLATFORM_PREFIXES = ("CORMORANT_FLEET_", "CORMORANT_DEPLOYER_")


def replica_environment(settings: FleetSettings) -> dict[str, str]:
    """The settings every replica gets: contained, its own settings and nothing else of the
    platform (no database URL, no data directory, no key); otherwise this process's
    environment with the shared settings in force."""
    if settings.sandbox:
        env = {k: v for k, v in os.environ.items() if k.startswith(_REPLICA_PREFIXES)}
    else:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_PLATFORM_PREFIXES) and k not in PLATFORM_SECRET_VARIABLES
        }
        env["CORMORANT_DATA_DIR"] = str(settings.data_dir)
    # As the replica user where the stack has one: predictions and metrics, nothing else.
    replica_url = settings.replica_nats_url
    env["CORMORANT_NATS_URL"] = (
        replica_url.get_secret_value() if replica_url is not None else settings.nats_url
    )
    env["CORMORANT_LOG_LEVEL"] = settings.log_level
    env["CORMORANT_LOG_JSON"] = "true" if settings.log_json else "false"
    if settings.otlp_endpoint:
        env["CORMORANT_OTLP_ENDPOINT"] = settings.otlp_endpoint
    return env


def local_runtime(
    settings: FleetSettings,
    sandbox: Sandbox | None = None,
    *,
    spool_sink: SpoolSink | None = None,
) -> LocalRuntime:
    """The process runtime of ``settings`` (with a warm worker template unless it has none),
    containing its replicas in ``sandbox`` when given; a killed replica's spooled predictions
    are published on ``spool_sink``."""
    environment = replica_environment(settings)
    template_command = settings.template_command()
    return LocalRuntime(
        command=settings.resolved_worker_command(),
        data_dir=settings.data_dir,
        host=settings.replica_host,
        env=environment,
        check_timeout=settings.check_timeout_s,
        bridge_command=settings.resolved_bridge_command(),
        template=WorkerTemplate(
            command=template_command, modules=settings.preload_modules, env=environment
        )
        if template_command
        else None,
        die_with_deployer=settings.stop_replicas_on_shutdown,
        sandbox=sandbox,
        spool_sink=spool_sink,
        replica_keys=ReplicaKeys(settings.internal_secret),
    )


class _Observed:
    """A ``Publisher`` that also hands every replica change to the fleet's observers."""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher
        self.observers: set[asyncio.Queue[ReplicaObserved]] = set()

    def publish(self, event: Event) -> bool:
        """Queue ``event`` on the bus; a replica change also goes to every observer."""
        if isinstance(event, ReplicaChanged):
            for queue in self.observers:
                queue.put_nowait(event)
        return self.publisher.publish(event)


class Observation:
    """An iterator over replica changes, registered from its creation until ``aclose``."""

    def __init__(self, observers: set[asyncio.Queue[ReplicaObserved]]) -> None:
        self._observers = observers
        self._queue: asyncio.Queue[ReplicaObserved] = asyncio.Queue()
        observers.add(self._queue)

    def __aiter__(self) -> Observation:
        return self

    async def __anext__(self) -> ReplicaObserved:
        return await self._queue.get()

    async def aclose(self) -> None:
        """Stop receiving changes."""
        self._observers.discard(self._queue)


class LocalFleet:
    """The ``Fleet`` of worker and kafka-bridge processes on this machine."""

    def __init__(
        self,
        *,
        settings: FleetSettings,
        store: ReplicaStore,
        snapshots: SnapshotStore,
        publisher: Publisher,
        http: httpx.AsyncClient,
        runtime: LocalRuntime | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.runtime = runtime or local_runtime(settings)
        self._events = _Observed(publisher)
        self.supervisor = self._new_supervisor(
            settings=settings,
            runtime=self.runtime,
            store=store,
            snapshots=snapshots,
            publisher=self._events,
            http=http,
            registry=registry,
        )
        self.autoscaler = Autoscaler(
            self.supervisor,
            window=settings.autoscale_window_s,
            interval=settings.autoscale_interval_s,
            scale_down_delay=settings.scale_down_delay_s,
        )
        self.stream_autoscaler = StreamAutoscaler(
            self.supervisor,
            interval=settings.autoscale_interval_s,
            scale_down_delay=settings.scale_down_delay_s,
        )

    def _new_supervisor(self, **parts: Any) -> Supervisor:
        """The supervisor of this fleet's replicas, made of ``parts``."""
        return Supervisor(**parts)

    async def start(self, nc: Client) -> None:
        """Adopt the replicas a previous deployer left running, then keep and scale them."""
        self.runtime.open()
        await self.supervisor.load()
        self.supervisor.start()
        await self.autoscaler.start(nc)
        self.stream_autoscaler.start_deciding()

    async def close(self) -> None:
        """Stop deciding and watching; replicas keep serving unless the settings say so."""
        try:
            await self.stream_autoscaler.stop()
            await self.autoscaler.stop()
            await self.supervisor.close()
        finally:
            await self.runtime.close()

    async def apply(self, placement: Placement) -> None:
        """Run ``placement``'s version with its replicas (a new endpoint, a version beside the
        stable one, or a new count), converging at once."""
        supervisor = self.supervisor
        current = self._runtime(placement.endpoint_id, placement.version.label)
        if current is not None:
            await supervisor.scale(current, placement.replicas)
            return
        status = "deploying" if placement.replicas else "idle"
        await supervisor.converge(await supervisor.place(placement, status=status))

    async def remove(
        self, endpoint_id: uuid.UUID, version: str | None = None
    ) -> list[ReplicaEvent]:
        """Drain and stop the replicas of one version beside the stable one, or (without
        ``version``) of the whole endpoint, and forget them; the endpoint's replica events
        up to their stop."""
        supervisor = self.supervisor
        if version is None:
            endpoint = supervisor.endpoints.get(endpoint_id)
            if endpoint is None:
                return []
            await supervisor.remove(endpoint)
            return list(endpoint.events)
        runtime = supervisor.others.get(endpoint_id, {}).get(version)
        if runtime is None:
            return []
        await self._retire(runtime)
        others = supervisor.others.get(endpoint_id, {})
        if others.get(version) is runtime:
            others.pop(version)
        return list(runtime.events)

    async def _retire(self, runtime: EndpointRuntime) -> None:
        """Drain and stop the replicas of a version beside the stable one."""
        runtime.desired = 0
        await self.supervisor.converge(runtime)
        await asyncio.gather(*(runner.done.wait() for runner in list(runtime.replicas.values())))

    def observe(self) -> Observation:
        """Every replica state change from this call on, as it happens (``aclose`` it)."""
        return Observation(self._events.observers)

    async def describe(self, endpoint_id: uuid.UUID) -> EndpointOut | None:
        """The endpoint's JSON as stored now, with its recent replica events."""
        return await self.supervisor.describe(endpoint_id)

    async def events(self, endpoint_id: uuid.UUID) -> list[ReplicaEvent]:
        """The endpoint's recent replica events (none if it runs nothing here)."""
        primary = self.supervisor.endpoints.get(endpoint_id)
        return list(primary.events) if primary is not None else []

    async def running(self, endpoint_id: uuid.UUID) -> list[RunningVersion]:
        """The versions of the endpoint whose replicas run here, the stable one first (none
        once the endpoint is deleted)."""
        primary = self.supervisor.endpoints.get(endpoint_id)
        if primary is None or primary.deleted:
            return []
        others = self.supervisor.others.get(endpoint_id, {})
        return [_running(primary), *(_running(r) for r in others.values() if not r.deleted)]

    async def promote(self, endpoint_id: uuid.UUID, label: str) -> None:
        """Make version ``label`` (running beside the stable one) the stable version: it sets
        the endpoint's status and is autoscaled; the old stable one keeps running beside it
        until it is removed."""
        supervisor = self.supervisor
        stable = supervisor.endpoints.get(endpoint_id)
        others = supervisor.others.get(endpoint_id, {})
        canary = others.pop(label, None)
        if stable is None or canary is None:
            return
        canary.primary = True
        canary.desired = max(canary.desired, stable.desired)
        canary.status, canary.reason = stable.status, stable.reason
        canary.published = stable.published
        supervisor.endpoints[endpoint_id] = canary
        stable.primary = False
        others[stable.version.label] = stable
        await supervisor.converge(canary)
        await supervisor.refresh(canary)

    async def check(self, spec: EndpointSpec, digest: str) -> str | None:
        """Why the worker refuses ``spec`` run on the code archived as ``digest``, or None."""
        snapshot = await self.supervisor.snapshots.extracted(digest)
        launch = launch_of(
            spec,
            replica_id="check",
            endpoint=slugify(spec.name),
            endpoint_id=uuid.uuid4(),
            version="1",
            source=snapshot.directory,
        )
        try:
            await self.runtime.check(launch)
        except ConfigurationRefused as exc:
            return str(exc)
        return None

    async def swap(
        self, endpoint_id: uuid.UUID, version: VersionRecord, spec: EndpointSpec
    ) -> None:
        """Hand the stream endpoint's consumer group to ``version``'s replicas (run with
        ``spec``) with no gap and no duplicate (``fleet/swap.py``)."""
        endpoint = self.supervisor.endpoints.get(endpoint_id)
        if endpoint is None or endpoint.deleted:
            raise SwapRefused(f"endpoint {endpoint_id} runs no replicas here")
        await swap_stream_version(
            self.supervisor, endpoint, version, spec=spec, scaler=self.stream_autoscaler
        )

    async def stream_status(self, endpoint_id: uuid.UUID) -> StreamStatus | None:
        """The stream endpoint's lag, replicas and wiring (None if it runs nothing here)."""
        endpoint = self.supervisor.endpoints.get(endpoint_id)
        if endpoint is None:
            return None
        swapping = endpoint_id in self.stream_autoscaler.swapping
        return await stream_status(endpoint, self.supervisor.http, swapping=swapping)

    async def manifests(self, slug: str | None = None) -> ManifestsOut:
        """The Kubernetes manifests of endpoint ``slug``'s versions, or of every endpoint, as
        the kubernetes fleet of these settings applies them."""
        config = ClusterConfig.of(self.settings)
        return render(self.supervisor, self.supervisor.snapshots, config, slug)

    def _runtime(self, endpoint_id: uuid.UUID, label: str) -> EndpointRuntime | None:
        primary = self.supervisor.endpoints.get(endpoint_id)
        if primary is not None and primary.version.label == label:
            return primary
        return self.supervisor.others.get(endpoint_id, {}).get(label)


def _running(runtime: EndpointRuntime) -> RunningVersion:
    return RunningVersion(
        version=runtime.version,
        spec=runtime.spec,
        primary=runtime.primary,
        desired=runtime.desired,
        ready=runtime.ready_count(),
        failure=runtime.failure,
    )
