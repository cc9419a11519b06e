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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from cormorant.common.events import EndpointChanged, Event, ReplicaState
from cormorant.common.web import REPLICA_HEADER
from cormorant.deployer.replicas import Failure, ReplicaRunner
from cormorant.deployer.runtime import ReplicaLaunch, Runtime
from cormorant.deployer.schemas import EndpointOut, EndpointSpec
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.snapshot import SnapshotStore
from cormorant.deployer.store import (
    EndpointRecord,
    ReplicaRecord,
    StatusChange,
    Store,
    VersionRecord,
)
from cormorant.deployer.stream_spec import bridge_options
from cormorant.deployer.validation import server_flag_value
from cormorant.deployer.views import ReplicaEvent, endpoint_view, event_attributes

log = logging.getLogger(__name__)

_PROBE_TIMEOUT_S = 2.0
# The worker's /healthz code when the model cannot be imported: no restart will fix it.
_LOAD_FAILED = "model_load_failed"


class Publisher(Protocol):
    """Where events go once the database holds the change (a ``BatchedPublisher``)."""

    def publish(self, event: Event) -> bool:
        """Queue ``event`` without blocking."""
        ...


@dataclass(eq=False, slots=True)
class EndpointRuntime:
    """The supervisor's picture of one endpoint and its replicas."""

    id: uuid.UUID
    slug: str
    kind: str
    spec: EndpointSpec
    version: VersionRecord
    source_dir: Path
    desired: int
    status: str
    reason: str | None
    events: deque[ReplicaEvent]
    replicas: dict[uuid.UUID, ReplicaRunner] = field(default_factory=dict)
    failure: str | None = None
    deleted: bool = False
    published: tuple[object, ...] = ()
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    status_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    primary: bool = True
    """Whether this is the version that sets the endpoint's status (and is autoscaled);
    a canary or a retiring version runs beside it (see ``rollout.py``)."""
    deaths: deque[float] = field(default_factory=lambda: deque(maxlen=256))
    """When its workers or replicas died lately (``time.monotonic``), for the crash loop."""
    last_death: str | None = None
    """Why the latest of them died."""

    def launch(
        self,
        replica_id: uuid.UUID,
        *,
        version: VersionRecord | None = None,
        source_dir: Path | None = None,
        spec: EndpointSpec | None = None,
    ) -> ReplicaLaunch:
        """What the runtime runs for replica ``replica_id`` of ``version`` (the current one by
        default) with ``spec``'s code fields (the endpoint's by default)."""
        spec = spec or self.spec
        return ReplicaLaunch(
            replica_id=str(replica_id),
            endpoint=self.slug,
            version=(version or self.version).label,
            source=source_dir or self.source_dir,
            file=spec.file,
            function=spec.function,
            preprocess_file=spec.preprocess_file,
            preprocess_function=spec.preprocess_function,
            accepts_file=spec.accepts_file,
            env=dict(spec.env),
            server={key: server_flag_value(value) for key, value in spec.server.items()},
            bridge=bridge_options(self.slug, self.id, spec) if self.kind == "stream" else None,
            timeout_s=spec.timeout_s,
            resources=spec.resources.model_dump(),
        )

    def active(self) -> list[ReplicaRunner]:
        """Replicas not asked to stop."""
        return [r for r in self.replicas.values() if not r.stop_requested.is_set()]

    def ready_count(self) -> int:
        """Replicas that receive traffic."""
        return sum(1 for r in self.replicas.values() if r.state == "ready")


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
        settings: DeployerSettings,
        runtime: Runtime,
        store: Store,
        snapshots: SnapshotStore,
        publisher: Publisher,
        http: httpx.AsyncClient,
        tasks: asyncio.TaskGroup,
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
        self.tasks = tasks
        self.endpoints: dict[uuid.UUID, EndpointRuntime] = {}
        self.others: dict[uuid.UUID, dict[str, EndpointRuntime]] = {}
        """Per endpoint, the versions running beside the primary one, by label."""
        self._running: set[asyncio.Task[None]] = set()
        self.runners: set[ReplicaRunner] = set()
        """Every replica runner not yet finished, wherever it is held (a stream swap's incoming
        replicas are outside their endpoint's set while they warm up)."""
        self.closing = False

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run ``coro`` in the service's task group, cancelled at shutdown."""
        task = self.tasks.create_task(coro, name=name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    def publish(self, event: Event) -> None:
        """Hand ``event`` to the bus (after the database write it reports)."""
        self.publisher.publish(event)

    async def write_replica(
        self, replica_id: uuid.UUID, status: StatusChange | None = None, **values: Any
    ) -> None:
        """Update a replica row, retrying briefly while the database is unreachable."""
        delay = 0.2
        for attempt in range(6):
            try:
                await self.store.update_replica(replica_id, status, **values)
                return
            except (DBAPIError, OSError, TimeoutError) as exc:
                lost = not isinstance(exc, DBAPIError) or (
                    exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
                )
                # Only a lost connection is worth waiting for; anything else is a bug.
                if attempt == 5 or not lost:
                    raise
                log.warning("replica %s: database write failed (%s); retrying", replica_id, exc)
            await asyncio.sleep(delay)
            delay *= 2

    async def track(self, record: EndpointRecord) -> EndpointRuntime:
        """Start supervising an endpoint (its replicas start on ``converge``)."""
        assert record.version is not None
        snapshot = await self.snapshots.extracted(record.version.digest)
        endpoint = EndpointRuntime(
            id=record.id,
            slug=record.slug,
            kind=record.kind,
            spec=record.spec,
            version=record.version,
            source_dir=snapshot.directory,
            desired=record.desired,
            status=record.status,
            reason=record.reason,
            events=deque(maxlen=self.settings.event_history),
        )
        if record.status == "failed":
            endpoint.failure = record.reason
        # What subscribers learnt from the create or from the previous deployer.
        endpoint.published = (record.status, record.reason, 0, record.desired)
        self.endpoints[record.id] = endpoint
        return endpoint

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
        live = await self.store.live_replicas()
        rows_by_endpoint: dict[uuid.UUID, list[ReplicaRecord]] = {}
        for row in live:
            rows_by_endpoint.setdefault(row.endpoint_id, []).append(row)
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

    async def _resume(self, endpoint: EndpointRuntime, row: ReplicaRecord) -> None:
        handle = None
        if row.url is not None:
            handle = await self.runtime.adopt(
                endpoint.launch(row.id), url=row.url, host=row.host, pid=row.pid
            )
        if handle is not None:
            log.info("adopted replica %s of %s (pid %s)", row.id, endpoint.slug, row.pid)
            state: ReplicaState = "draining" if row.state == "draining" else "starting"
            runner = ReplicaRunner(
                self,
                endpoint,
                row.id,
                restarts=row.restarts,
                resumed=True,
                handle=handle,
                state=state,
            )
            if state == "draining":
                # It was being stopped: finish that, and let converge count it as gone.
                runner.stop_requested.set()
            self._run(runner)
            return
        if row.state == "draining":
            await self.write_replica(row.id, state="stopped")
            return
        # Gone while no deployer watched it: a crash, restarted like any other.
        failure = None
        if row.state != "failed":
            failure = Failure(f"not running after the deployer restarted (was {row.state})")
        runner = ReplicaRunner(
            self,
            endpoint,
            row.id,
            restarts=row.restarts,
            resumed=True,
            state="crashed",
            pending_failure=failure,
        )
        if failure is None:
            runner.crashes = 1
        self._run(runner)

    async def _retire_orphan(self, row: ReplicaRecord) -> None:
        record = await self.store.get(row.endpoint_id)
        if record is not None and record.version is not None and row.url is not None:
            launch = ReplicaLaunch(
                replica_id=str(row.id),
                endpoint=record.slug,
                version=record.version.label,
                source=self.snapshots.directory(record.version.digest),
                file=record.spec.file,
                function=record.spec.function,
                bridge=(
                    bridge_options(record.slug, record.id, record.spec)
                    if record.kind == "stream"
                    else None
                ),
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
            while runners := [r for r in self.runners if not r.done.is_set()]:
                for runner in runners:
                    runner.stop_requested.set()
                await asyncio.gather(*(runner.done.wait() for runner in runners))
        tasks = list(self._running)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
