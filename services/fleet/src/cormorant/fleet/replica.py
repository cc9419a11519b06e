"""One replica's life: started, probed until ready, watched, restarted with backoff, drained.

Each replica is one task (``ReplicaRunner``) that owns its process through the runtime and
writes each state change to PostgreSQL, with the endpoint status it implies, before
publishing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cormorant.common.endpoints.kafka import consumer_group, stored_kafka
from cormorant.common.endpoints.schemas import EndpointSpec, server_flag_value
from cormorant.common.endpoints.store import StatusChange, VersionRecord
from cormorant.common.endpoints.views import ReplicaEvent
from cormorant.common.events import Event, ReplicaChanged, ReplicaState
from cormorant.common.retry import Backoff
from cormorant.fleet.runtime import (
    BridgeOptions,
    Exit,
    ReplicaHandle,
    ReplicaLaunch,
    Runtime,
    WorkerDeath,
    refusal_reason,
)
from cormorant.fleet.settings import FleetSettings

log = logging.getLogger(__name__)

# A replica that served this long has recovered: its next crash restarts after the first
# delay again rather than after the long one its earlier crashes had reached.
BACKOFF_RESET_S = 60.0


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a replica stopped serving or never started."""

    reason: str
    deterministic: bool = False
    """The worker itself said the model cannot load: restarting will not help."""
    cause: str | None = None
    """How the process ended, when it did: ``exit``, ``killed`` or ``signal``."""


def exit_cause(ended: Exit) -> str:
    """The cause of a replica's whole exit, named as a worker death's is."""
    if ended.code is not None and ended.code < 0:
        return "killed" if ended.code == -9 else "signal"
    return "exit"


_sequence = itertools.count()


def launch_of(
    spec: EndpointSpec,
    *,
    replica_id: str,
    endpoint: str,
    endpoint_id: uuid.UUID,
    version: str,
    source: Path,
) -> ReplicaLaunch:
    """What the runtime runs for one replica serving ``spec``'s code from ``source``."""
    return ReplicaLaunch(
        replica_id=replica_id,
        endpoint=endpoint,
        version=version,
        source=source,
        file=spec.file,
        function=spec.function,
        preprocess_file=spec.preprocess_file,
        preprocess_function=spec.preprocess_function,
        accepts_file=spec.accepts_file,
        env=dict(spec.env),
        server={key: server_flag_value(value) for key, value in spec.server.items()},
        bridge=bridge_options(endpoint, endpoint_id, spec) if spec.kind == "stream" else None,
        timeout_s=spec.timeout_s,
        resources=spec.resources.model_dump(),
    )


def bridge_options(slug: str, endpoint_id: uuid.UUID, spec: EndpointSpec) -> BridgeOptions:
    """The kafka-bridge flags of a replica of the stream endpoint ``slug``."""
    kafka = stored_kafka(spec.kafka)
    return BridgeOptions(
        bootstrap_servers=kafka.bootstrap_servers,
        input_topics=tuple(kafka.input_topics),
        output_topic=kafka.output_topic,
        group=consumer_group(slug, endpoint_id),
        dlq_topic=kafka.dlq_topic,
        security=dict(kafka.security),
        endpoint_id=str(endpoint_id),
    )


class ReplicaHost(Protocol):
    """What a replica's task needs from the fleet that runs it (the ``Supervisor``)."""

    settings: FleetSettings
    runtime: Runtime
    runners: set[ReplicaRunner]
    closing: bool

    def publish(self, event: Event) -> None:
        """Hand ``event`` to the bus."""
        ...

    async def write_replica(
        self, replica_id: uuid.UUID, status: StatusChange | None = None, **values: Any
    ) -> None:
        """Update the replica's row (and the endpoint status it implies)."""
        ...

    def status_change(self, endpoint: EndpointRuntime) -> StatusChange | None:
        """The endpoint's status as its replicas now imply, if it changed."""
        ...

    async def refresh(self, endpoint: EndpointRuntime) -> None:
        """Store and announce the endpoint's status if its public view changed."""
        ...

    def count_death(self, endpoint: EndpointRuntime, cause: str, reason: str) -> None:
        """Count a worker's or replica's death (Prometheus, and the endpoint's crash loop)."""
        ...

    async def probe(self, url: str, identity: str | None = None) -> bool | Failure | None:
        """Whether the replica at ``url`` is ready, or why it cannot be."""
        ...

    def finished(self, runner: ReplicaRunner) -> None:
        """Forget a replica whose task ended."""
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
        return launch_of(
            spec or self.spec,
            replica_id=str(replica_id),
            endpoint=self.slug,
            endpoint_id=self.id,
            version=(version or self.version).label,
            source=source_dir or self.source_dir,
        )

    def active(self) -> list[ReplicaRunner]:
        """Replicas not asked to stop."""
        return [r for r in self.replicas.values() if not r.stop_requested.is_set()]

    def ready_count(self) -> int:
        """Replicas that receive traffic."""
        return sum(1 for r in self.replicas.values() if r.state == "ready")


class ReplicaRunner:
    """One replica's life: start, wait for ``/healthz``, watch, restart after a crash, stop."""

    def __init__(
        self,
        supervisor: ReplicaHost,
        endpoint: EndpointRuntime,
        replica_id: uuid.UUID,
        *,
        restarts: int = 0,
        resumed: bool = False,
        handle: ReplicaHandle | None = None,
        state: ReplicaState = "starting",
        pending_failure: Failure | None = None,
        version: VersionRecord | None = None,
        source_dir: Path | None = None,
        spec: EndpointSpec | None = None,
    ) -> None:
        self.sup = supervisor
        self.endpoint = endpoint
        self.id = replica_id
        # A replica serves one version all its life (restarts included), whatever the
        # endpoint's current version becomes meanwhile (a stream swap runs two at once).
        self.version = version or endpoint.version
        self.source_dir = source_dir or endpoint.source_dir
        self.spec = spec
        """The version's own code fields, when they differ from the endpoint's (a swap)."""
        self.order = next(_sequence)
        self.restarts = restarts
        # A resumed replica was started before: its next start is a restart.
        self.starts = 1 if resumed else 0
        self.handle = handle
        self.state: ReplicaState = state
        self.pending_failure = pending_failure
        self.url: str | None = handle.url if handle else None
        self.failures = 0
        self.crashes = 0
        self.ready_since: float | None = None
        self.stop_requested = asyncio.Event()
        self.done = asyncio.Event()
        supervisor.runners.add(self)
        if supervisor.closing:
            self.stop_requested.set()

    @property
    def settings(self) -> FleetSettings:
        """The deployer's settings."""
        return self.sup.settings

    async def run(self) -> None:
        """Run until asked to stop; a deployer shutdown (cancellation) leaves the process up."""
        try:
            await self._lifecycle()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replica %s of %s failed unexpectedly", self.id, self.endpoint.slug)
            if self.handle is not None:
                await self.sup.runtime.kill(self.handle)
            with contextlib.suppress(Exception):
                await self._record("stopped", reason="the deployer lost track of this replica")
        finally:
            self.done.set()
            self.sup.finished(self)

    async def _lifecycle(self) -> None:
        if self.state == "draining" or (self.stop_requested.is_set() and self.handle is None):
            await self._stop()
            return
        if self.pending_failure is not None:
            await self._crashed(self.pending_failure)
            if not await self._backoff():
                await self._stop()
                return
        while not self.stop_requested.is_set():
            if self.handle is None:
                await self._spawn()
            assert self.handle is not None
            outcome = await self._wait_ready(self.handle)
            if outcome is True:
                await self._became_ready()
                outcome = await self._monitor(self.handle)
            if outcome is False:
                break
            assert isinstance(outcome, Failure)
            await self.sup.runtime.kill(self.handle)
            self.handle = None
            await self._crashed(outcome)
            if not await self._backoff():
                break
        await self._stop()

    async def _spawn(self) -> None:
        if self.starts > 0:
            self.restarts += 1
        self.starts += 1
        self.state = "starting"
        handle = await self.sup.runtime.start(self.launch())
        self.handle, self.url = handle, handle.url
        try:
            await self._record(
                "starting",
                url=handle.url,
                host=handle.host,
                pid=handle.pid,
                restarts=self.restarts,
            )
        except BaseException:
            # A process nobody recorded would serve forever unseen.
            await self.sup.runtime.kill(handle)
            self.handle = None
            raise

    async def _wait_ready(self, handle: ReplicaHandle) -> bool | Failure:
        """True once ``/healthz`` answers 200, False if asked to stop, or why it failed."""
        timeout = self.settings.start_timeout_s
        deadline = time.monotonic() + timeout
        while not self.stop_requested.is_set():
            ended = await self.sup.runtime.exited(handle)
            if ended is not None and ended.refused:
                reason = refusal_reason(ended.log_tail)
                return Failure(f"the worker refused its configuration: {reason}", True)
            if ended is not None:
                return Failure(
                    _with_tail(f"{ended.describe()} before it was ready", ended.log_tail),
                    cause=exit_cause(ended),
                )
            probe = await self.sup.probe(handle.url, handle.identity)
            if probe is True or isinstance(probe, Failure):
                return probe
            if time.monotonic() > deadline:
                return Failure(f"not ready after {timeout:g} s (no 200 from /healthz)")
            if await self._pause(self.settings.probe_interval_s):
                break
        return False

    async def _monitor(self, handle: ReplicaHandle) -> bool | Failure:
        """False once asked to stop, or why the process ended."""
        while not await self._pause(self.settings.monitor_interval_s):
            ended = await self.sup.runtime.exited(handle)
            if ended is not None:
                return Failure(
                    _with_tail(ended.describe(), ended.log_tail), cause=exit_cause(ended)
                )
            for death in await self.sup.runtime.deaths(handle):
                await self._worker_died(death)
            if self.endpoint.status == "degraded":
                await self.sup.refresh(self.endpoint)  # healthy again once the window passed
        return False

    async def _worker_died(self, death: WorkerDeath) -> None:
        """A worker process of this replica died; its master started another in its place."""
        self.restarts += 1
        endpoint = self.endpoint
        reason = f"worker {death.pid} {death.detail}; replaced" if death.pid else death.detail
        log.warning("replica %s of %s: %s", self.id, endpoint.slug, reason)
        self.sup.count_death(endpoint, death.cause, reason)
        await self.sup.write_replica(self.id, restarts=self.restarts, last_error=reason)
        label = self.version.label
        endpoint.events.append(
            ReplicaEvent(
                datetime.now(UTC),
                str(self.id),
                label,
                "worker_restarted",
                reason,
                cause=death.cause,
            )
        )
        await self.sup.refresh(endpoint)

    async def _became_ready(self) -> None:
        self.failures = 0
        self.ready_since = time.monotonic()
        self.endpoint.failure = None
        adopted = self.handle is not None and self.handle.adopted
        reason = "adopted after a fleet restart" if adopted else None
        await self._record("ready", reason=reason, url=self.url)

    async def _crashed(self, failure: Failure) -> None:
        if self.ready_since is not None and time.monotonic() - self.ready_since >= BACKOFF_RESET_S:
            self.crashes = 0
        self.crashes += 1
        self.failures = 1 if self.state == "ready" else self.failures + 1
        self.ready_since = None
        endpoint = self.endpoint
        if endpoint.ready_count() == (1 if self.state == "ready" else 0):
            # No other replica serves: say why the endpoint cannot start.
            if failure.deterministic:
                endpoint.failure = failure.reason
            elif self.failures >= self.settings.max_start_failures:
                endpoint.failure = (
                    f"replica crashed {self.failures} times in a row before becoming ready; "
                    f"last: {failure.reason}"
                )
        log.warning("replica %s of %s crashed: %s", self.id, endpoint.slug, failure.reason)
        if failure.cause is not None:
            self.sup.count_death(endpoint, failure.cause, failure.reason)
        await self._record(
            "crashed", reason=failure.reason, cause=failure.cause, last_error=failure.reason
        )

    async def _backoff(self) -> bool:
        """Wait before the next restart; False if asked to stop meanwhile."""
        settings = self.settings
        backoff = Backoff(settings.restart_backoff_s, settings.max_restart_backoff_s)
        return not await self._pause(backoff.delay(self.crashes))

    async def _stop(self) -> None:
        handle = self.handle
        if handle is not None:
            if self.state == "ready":
                await self._record("draining")
                # Gateways drop the replica on the event; requests routed before it still land.
                await asyncio.sleep(self.settings.drain_grace_s)
            launch = self.launch()
            grace = max(self.settings.stop_timeout_s, (launch.graceful_timeout() or 0) + 5)
            await self.sup.runtime.stop(handle, grace_s=grace)
            self.handle = None
        await self._record("stopped")

    def launch(self) -> ReplicaLaunch:
        """What the runtime runs for this replica."""
        return self.endpoint.launch(
            self.id, version=self.version, source_dir=self.source_dir, spec=self.spec
        )

    async def _pause(self, delay: float) -> bool:
        """Sleep ``delay`` s or until asked to stop; whether a stop was asked."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.stop_requested.wait()
        return self.stop_requested.is_set()

    async def _record(
        self,
        state: ReplicaState,
        *,
        reason: str | None = None,
        cause: str | None = None,
        **columns: Any,
    ) -> None:
        """Write the new state (with the endpoint status it implies), then publish both."""
        endpoint = self.endpoint
        async with endpoint.status_lock:
            self.state = state
            # One transaction: a reader never sees a ready replica under a `deploying` endpoint.
            change = self.sup.status_change(endpoint)
            db_state = "failed" if state == "crashed" else state
            await self.sup.write_replica(self.id, change, state=db_state, **columns)
            if change is not None:
                endpoint.status, endpoint.reason = change.status, change.reason
        self.sup.publish(
            ReplicaChanged(
                endpoint=endpoint.slug,
                version=self.version.label,
                replica_id=str(self.id),
                state=state,
                url=self.url,
                reason=reason,
            )
        )
        endpoint.events.append(
            ReplicaEvent(datetime.now(UTC), str(self.id), self.version.label, state, reason, cause)
        )
        await self.sup.refresh(endpoint)


def _with_tail(summary: str, tail: str) -> str:
    return f"{summary}; log tail:\n{tail}" if tail else summary
