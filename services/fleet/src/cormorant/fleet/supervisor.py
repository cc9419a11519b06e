"""Every endpoint's replicas kept at their desired count, and the endpoint's status with them.

The ``Supervisor`` starts and stops ``ReplicaRunner``s, derives each endpoint's status from
its replicas, announces changes on NATS after the database holds them, and on start adopts
the replicas a previous deployer left running.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any, Protocol

import httpx
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from cormorant.common.endpoints.fleet import Placement, placement_of
from cormorant.common.endpoints.schemas import EndpointOut
from cormorant.common.endpoints.snapshot import SnapshotStore
from cormorant.common.endpoints.store import (
    EndpointRecord,
    ReplicaRecord,
    ReplicaStore,
    StatusChange,
)
from cormorant.common.endpoints.views import endpoint_view, event_attributes
from cormorant.common.events import EndpointChanged, Event, ReplicaState
from cormorant.common.retry import Backoff, retry
from cormorant.common.tasks import TaskSet
from cormorant.common.web import REPLICA_HEADER
from cormorant.fleet.replica import EndpointRuntime, Failure, ReplicaRunner, launch_of
from cormorant.fleet.runtime import Runtime
from cormorant.fleet.settings import FleetSettings

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0
# The worker's /healthz code when the model cannot be imported: no restart will fix it.
_LOAD_FAILED = "model_load_failed"


# Only a lost connection is worth waiting for (a failover takes seconds); 6 tries over ~6 s.
_DB_WRITE_BACKOFF = Backoff(initial=0.2, cap=3.2, attempts=6)


def _connection_lost(exc: Exception) -> bool:
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, OSError | TimeoutError)


class Publisher(Protocol):
    """Where events go once the database holds the change (a ``BatchedPublisher``)."""

    def publish(self, event: Event) -> bool:
        """Queue ``event`` without blocking."""
        ...


def _victims(replicas: Iterable[ReplicaRunner], count: int) -> list[ReplicaRunner]:
    # A negative count (replicas missing) must stop none: ranked[:-1] would stop all but one.
    if count <= 0:
        return []
    # Replicas not serving yet go first, then the newest: the oldest have warm caches.
    ranked = sorted(replicas, key=lambda r: (r.state == "ready", -r.order))
    return ranked[:count]


class Supervisor:
    """Keeps every endpoint's replicas at their desired count and its status up to date."""

    def __init__(
        self,
        *,
        settings: FleetSettings,
        runtime: Runtime,
        store: ReplicaStore,
        snapshots: SnapshotStore,
        publisher: Publisher,
        http: httpx.AsyncClient,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = (
            Counter(
                "cormorant_replica_deaths",
                "Worker processes and replicas that died (and were replaced), by cause",
                ["endpoint", "cause"],
                registry=registry,
            )
            if registry is not None
            else None
        )
        self.runtime = runtime
        self.store = store
        self.snapshots = snapshots
        self.publisher = publisher
        self.http = http
        self.tasks = TaskSet("supervisor")
        """The replica runners and the reconcile loop (and, until they move out of the
        deployer, batch jobs and flow runs)."""
        self.endpoints: dict[uuid.UUID, EndpointRuntime] = {}
        self.others: dict[uuid.UUID, dict[str, EndpointRuntime]] = {}
        """Per endpoint, the versions running beside the primary one, by label."""
        self.runners: set[ReplicaRunner] = set()
        """Every replica runner not yet finished, wherever it is held (a stream swap's incoming
        replicas are outside their endpoint's set while they warm up)."""
        self.closing = False

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` among the supervisor's tasks, cancelled when it closes."""
        return self.tasks.spawn(coro, name=name)

    def start(self) -> None:
        """Start the reconcile loop (after ``load``)."""
        self.spawn(self.reconcile_forever(), name="reconciler")

    def publish(self, event: Event) -> None:
        """Hand ``event`` to the bus (after the database write it reports)."""
        self.publisher.publish(event)

    async def write_replica(
        self, replica_id: uuid.UUID, status: StatusChange | None = None, **values: Any
    ) -> None:
        """Update a replica row, retrying briefly while the database is unreachable."""
        await retry(
            lambda: self.store.update_replica(replica_id, status, **values),
            _DB_WRITE_BACKOFF,
            retryable=_connection_lost,
            what=f"replica {replica_id}: database write",
        )

    async def track(self, record: EndpointRecord) -> EndpointRuntime:
        """Start supervising an endpoint as stored (its replicas start on ``converge``)."""
        assert record.version is not None
        archive = self.snapshots.archive_url(record.version.digest)
        placement = placement_of(record, record.spec, record.desired, archive_url=archive)
        endpoint = await self.place(placement, status=record.status, reason=record.reason)
        if record.status == "failed":
            endpoint.failure = record.reason
        return endpoint

    async def place(
        self, placement: Placement, *, status: str, reason: str | None = None
    ) -> EndpointRuntime:
        """Start supervising ``placement``: the endpoint's stable version when it is
        autoscaled, else a version beside it (its replicas start on ``converge``)."""
        snapshot = await self.snapshots.extracted(placement.version.digest)
        primary = self.endpoints.get(placement.endpoint_id)
        shared = primary.events if primary is not None and not placement.autoscaled else None
        runtime = EndpointRuntime(
            id=placement.endpoint_id,
            slug=placement.endpoint,
            kind=placement.kind,
            spec=placement.spec,
            version=placement.version,
            source_dir=snapshot.directory,
            desired=placement.replicas,
            status=status,
            reason=reason,
            # One history: the endpoint's events show every version's replicas.
            events=shared if shared is not None else deque(maxlen=self.settings.event_history),
            primary=placement.autoscaled,
        )
        if placement.autoscaled:
            # What subscribers learnt from the create or from the previous deployer.
            runtime.published = (status, reason, 0, placement.replicas)
            self.endpoints[placement.endpoint_id] = runtime
        else:
            self.others.setdefault(placement.endpoint_id, {})[placement.version.label] = runtime
        return runtime

    async def converge(self, endpoint: EndpointRuntime) -> None:
        """Start or stop replicas until as many run as the endpoint wants."""
        async with endpoint.lock:
            if endpoint.deleted:
                return
            active = endpoint.active()
            missing = endpoint.desired - len(active)
            for _ in range(missing):
                replica_id = await self.store.add_replica(endpoint.id, endpoint.version.id)
                self._run(ReplicaRunner(self, endpoint, replica_id))
            for runner in _victims(active, -missing):
                runner.stop_requested.set()

    async def scale(self, endpoint: EndpointRuntime, desired: int) -> None:
        """Record a new desired count, announce it, and converge."""
        if desired == endpoint.desired or endpoint.deleted:
            return
        log.info("scaling %s from %d to %d replica(s)", endpoint.slug, endpoint.desired, desired)
        await self.store.set_desired(endpoint.id, desired)
        endpoint.desired = desired
        await self.refresh(endpoint)
        await self.converge(endpoint)

    async def remove(self, endpoint: EndpointRuntime) -> None:
        """Drain and stop every replica of a deleted endpoint and forget it."""
        async with endpoint.lock:
            endpoint.deleted = True
            endpoint.desired = 0
            runners = list(endpoint.replicas.values())
            for other in self.others.pop(endpoint.id, {}).values():
                other.deleted = True
                other.desired = 0
                runners.extend(other.replicas.values())
            for runner in runners:
                runner.stop_requested.set()
        await asyncio.gather(*(runner.done.wait() for runner in runners))
        self.endpoints.pop(endpoint.id, None)

    def finished(self, runner: ReplicaRunner) -> None:
        """Forget a replica whose task ended."""
        runner.endpoint.replicas.pop(runner.id, None)
        self.runners.discard(runner)

    async def refresh(self, endpoint: EndpointRuntime) -> None:
        """Recompute the endpoint's status; store and announce it if its public view changed."""
        async with endpoint.status_lock:
            if endpoint.deleted or not endpoint.primary:
                return
            change = self.status_change(endpoint)
            if change is not None:
                await self.store.set_status(change)
                endpoint.status, endpoint.reason = change.status, change.reason
            key = (endpoint.status, endpoint.reason, endpoint.ready_count(), endpoint.desired)
            if key == endpoint.published:
                return
            endpoint.published = key
            view = await self.describe(endpoint.id)
            if view is not None:
                self.publish(
                    EndpointChanged(
                        endpoint=endpoint.slug, change="updated", attributes=event_attributes(view)
                    )
                )

    def status_change(self, endpoint: EndpointRuntime) -> StatusChange | None:
        """The endpoint's status as its replicas now imply, if it differs from the stored one."""
        if endpoint.deleted or not endpoint.primary:
            return None
        status, reason = self._status(endpoint)
        if (status, reason) == (endpoint.status, endpoint.reason):
            return None
        return StatusChange(endpoint.id, endpoint.version.id, status, reason)

    def count_death(self, endpoint: EndpointRuntime, cause: str, reason: str) -> None:
        """Count a worker's or replica's death (Prometheus, and the endpoint's crash loop)."""
        endpoint.deaths.append(time.monotonic())
        endpoint.last_death = reason
        if self.metrics is not None:
            self.metrics.labels(endpoint=endpoint.slug, cause=cause).inc()

    def crash_loop(self, endpoint: EndpointRuntime) -> int:
        """How many deaths fell within ``crash_loop_window_s``, when they are a crash loop."""
        since = time.monotonic() - self.settings.crash_loop_window_s
        recent = sum(1 for at in endpoint.deaths if at >= since)
        return recent if recent >= self.settings.crash_loop_deaths else 0

    def _status(self, endpoint: EndpointRuntime) -> tuple[str, str | None]:
        serving = [r for r in endpoint.replicas.values() if r.state != "stopped"]
        if endpoint.ready_count():
            if deaths := self.crash_loop(endpoint):
                window = self.settings.crash_loop_window_s
                return "degraded", (
                    f"{deaths} worker or replica deaths in the last {window:g} s; "
                    f"last: {endpoint.last_death}"
                )
            return "running", None
        if endpoint.desired == 0 and not serving:
            return "idle", None
        if endpoint.failure:
            return "failed", endpoint.failure
        return "deploying", None

    async def describe(self, endpoint_id: uuid.UUID) -> EndpointOut | None:
        """The endpoint's JSON as stored now, with its recent replica events."""
        found = await self.store.overview(endpoint_id)
        if not found:
            return None
        [(record, stats)] = found
        tracked = self.endpoints.get(endpoint_id)
        return endpoint_view(record, stats, tracked.events if tracked else ())

    async def probe(self, url: str, identity: str | None = None) -> bool | Failure | None:
        """True if ``/healthz`` answers 200 (naming the replica ``identity`` when given), a
        ``Failure`` if the model cannot load, else None."""
        try:
            response = await self.http.get(f"{url}/healthz", timeout=_PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return None
        if response.status_code == 200:
            if identity is not None and response.headers.get(REPLICA_HEADER) != identity:
                return None  # another process on the port the replica lost the race to bind
            return True
        if response.status_code == 503:
            try:
                error = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                return None
            if isinstance(error, dict) and error.get("code") == _LOAD_FAILED:
                return Failure(str(error.get("message", "the model could not be loaded")), True)
        return None

    async def load(self) -> None:
        """Adopt the replicas a previous deployer left running and converge every endpoint."""
        rows_by_endpoint = await self._adoptable()
        for record in await self.store.endpoints():
            if record.version is None:
                continue
            try:
                endpoint = await self.track(record)
            except Exception as exc:
                log.error("endpoint %s cannot be supervised: %s", record.slug, exc)
                await self.store.set_status(StatusChange(record.id, None, "failed", str(exc)))
                continue
            for row in rows_by_endpoint.pop(record.id, []):
                if row.version_id != endpoint.version.id:
                    # A canary's replicas are not resumed as the primary version: stopped,
                    # their weight goes to the versions still serving until a new rollout.
                    await self._retire_orphan(row)
                    continue
                await self._resume(endpoint, row)
            await self.refresh(endpoint)
            await self.converge(endpoint)
        for rows in rows_by_endpoint.values():
            for row in rows:
                await self._retire_orphan(row)

    async def _adoptable(self) -> dict[uuid.UUID, list[ReplicaRecord]]:
        """The replica rows a previous deployer left live, by endpoint id, to resume."""
        rows_by_endpoint: dict[uuid.UUID, list[ReplicaRecord]] = {}
        for row in await self.store.live_replicas():
            rows_by_endpoint.setdefault(row.endpoint_id, []).append(row)
        return rows_by_endpoint

    async def _resume(self, endpoint: EndpointRuntime, row: ReplicaRecord) -> None:
        handle = None
        if row.url is not None:
            handle = await self.runtime.adopt(
                endpoint.launch(row.id), url=row.url, host=row.host, pid=row.pid
            )
        if handle is None and row.state == "draining":
            await self.write_replica(row.id, state="stopped")
            return
        failure = None
        if handle is not None:
            log.info("adopted replica %s of %s (pid %s)", row.id, endpoint.slug, row.pid)
            state: ReplicaState = "draining" if row.state == "draining" else "starting"
        else:
            # Gone while no deployer watched it: a crash, restarted like any other.
            state = "crashed"
            if row.state != "failed":
                failure = Failure(f"not running after the deployer restarted (was {row.state})")
        runner = ReplicaRunner(
            self,
            endpoint,
            row.id,
            restarts=row.restarts,
            resumed=True,
            handle=handle,
            state=state,
            pending_failure=failure,
        )
        if state == "draining":
            # It was being stopped: finish that, and let converge count it as gone.
            runner.stop_requested.set()
        elif handle is None and failure is None:
            runner.crashes = 1
        self._run(runner)

    async def _retire_orphan(self, row: ReplicaRecord) -> None:
        record = await self.store.get(row.endpoint_id)
        if record is not None and record.version is not None and row.url is not None:
            launch = launch_of(
                record.spec,
                replica_id=str(row.id),
                endpoint=record.slug,
                endpoint_id=record.id,
                version=record.version.label,
                source=self.snapshots.directory(record.version.digest),
            )
            handle = await self.runtime.adopt(launch, url=row.url, host=row.host, pid=row.pid)
            if handle is not None:
                await self.runtime.stop(handle, grace_s=self.settings.stop_timeout_s)
        await self.write_replica(row.id, state="stopped")

    def _run(self, runner: ReplicaRunner) -> None:
        runner.endpoint.replicas[runner.id] = runner
        self.spawn(runner.run(), name=f"replica-{runner.endpoint.slug}-{runner.id}")

    async def reconcile_forever(self) -> None:
        """Converge every endpoint periodically: a safety net under the event-driven path."""
        while True:
            await asyncio.sleep(self.settings.reconcile_interval_s)
            for endpoint in list(self.endpoints.values()):
                try:
                    await self.converge(endpoint)
                except Exception:
                    log.exception("reconciling %s failed", endpoint.slug)

    async def close(self) -> None:
        """Stop watching: replicas keep serving, unless configured to stop with the service."""
        # From here no runner starts a process: the autoscaler, a reconcile or a swap may still
        # create runners while the others stop, and those would outlive the deployer.
        self.closing = True
        if self.settings.stop_replicas_on_shutdown:
            # Work that changes the fleet (demand lapses, scaling) ends first, so nothing starts
            # a replica while they stop. Replica tasks are "replica-*".
            await self.tasks.cancel_where(lambda task: not task.get_name().startswith("replica-"))
            while runners := [r for r in self.runners if not r.done.is_set()]:
                for runner in runners:
                    runner.stop_requested.set()
                await asyncio.gather(*(runner.done.wait() for runner in runners))
        await self.tasks.close()
