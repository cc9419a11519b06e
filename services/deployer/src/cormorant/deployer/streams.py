"""Stream endpoints in the deployer: broker checks at creation, autoscaling on consumer lag,
the zero-gap model swap, and the stream status API.

Lag is read from the replicas, not the broker: each kafka-bridge replica exports
``cormorant_kafka_bridge_lag{topic,partition}`` (high watermark from its fetch answers minus
the offset it committed, what KEDA's Kafka scaler computes from the group's offsets), and the
deployer scrapes the ready replicas' ``/metrics``. Every partition is owned by one replica, so
the sum is the group's lag; it needs no extra Kafka connection per endpoint, and it works on
brokers whose ListOffsets/OffsetFetch answers are unreliable (tansu's, see the bridge's README).
Its blind spot: partitions no ready replica holds (mid-rebalance) would read as 0, so no
decision is taken until the ready replicas hold every partition again.

A swap starts the new version's replicas in the endpoint's consumer group while the old ones
keep consuming; the bridge imports the model before joining and answers ``/healthz`` only
once joined, and every revocation waits for the batches in flight to be committed, so the
partitions the new replicas take over resume exactly at the committed offsets. Once every new
replica is ready the old ones get SIGTERM, one at a time: each finishes its in-flight
batches, commits and leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, cast

import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from cormorant.common.db.models import VersionStatus
from cormorant.common.errors import BadRequest, Conflict, NotFound
from cormorant.common.events import EndpointChanged
from cormorant.common.openapi import error_responses
from cormorant.deployer.autoscale import Recommendation, decide_for, recommend, run_every
from cormorant.deployer.endpoints import EndpointService
from cormorant.deployer.replicas import ReplicaRunner
from cormorant.deployer.rollout import RolloutService
from cormorant.deployer.rollout_schemas import TrafficOut
from cormorant.deployer.schemas import EndpointSpec, ReplicasSpec
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.store import EndpointRecord, VersionRecord
from cormorant.deployer.stream_spec import consumer_group, stored_kafka
from cormorant.deployer.supervisor import EndpointRuntime, Supervisor
from cormorant.deployer.views import event_attributes

log = logging.getLogger(__name__)

_SCRAPE_TIMEOUT_S = 2.0
_LAG = "cormorant_kafka_bridge_lag"
_COUNTERS = {
    "cormorant_kafka_bridge_messages_consumed_total": "consumed",
    "cormorant_kafka_bridge_messages_produced_total": "produced",
    "cormorant_kafka_bridge_messages_dlq_total": "dead_lettered",
    "cormorant_kafka_bridge_assigned_partitions": "assigned_partitions",
}


# --- lag, from the replicas' metrics -----------------------------------------------------


@dataclass(slots=True)
class ReplicaStream:
    """What one bridge replica's ``/metrics`` says."""

    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    consumed: float = 0.0
    produced: float = 0.0
    dead_lettered: float = 0.0
    assigned_partitions: float = 0.0


def parse_metrics(text: str) -> ReplicaStream:
    """The stream figures of a bridge replica's Prometheus exposition ``text``."""
    stats = ReplicaStream()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == _LAG and "topic" in sample.labels:
                key = (sample.labels["topic"], int(sample.labels["partition"]))
                stats.lag[key] = int(sample.value)
            elif sample.name in _COUNTERS:
                setattr(stats, _COUNTERS[sample.name], float(sample.value))
    return stats


async def scrape(http: httpx.AsyncClient, url: str) -> ReplicaStream | None:
    """The replica's stream figures, or None if it did not answer."""
    try:
        response = await http.get(f"{url}/metrics", timeout=_SCRAPE_TIMEOUT_S)
        response.raise_for_status()
        return parse_metrics(response.text)
    except (httpx.HTTPError, ValueError) as exc:
        log.debug("scraping %s failed: %s", url, exc)
        return None


def group_lag(replicas: Iterable[ReplicaStream]) -> dict[tuple[str, int], int]:
    """Lag per partition over the replicas; a partition two replicas report mid-rebalance
    counts once, at its higher figure."""
    lag: dict[tuple[str, int], int] = {}
    for stats in replicas:
        for key, behind in stats.lag.items():
            lag[key] = max(behind, lag.get(key, 0))
    return lag


def desired_for_lag(lag: int, bounds: ReplicasSpec, partitions: int) -> int:
    """KEDA's Kafka scaler: ``ceil(lag / lagThreshold)`` within ``[min, max]`` and never more
    replicas than partitions."""
    ceiling = min(bounds.max, partitions) if partitions > 0 else bounds.max
    return recommend(
        float(lag),
        target=bounds.target,
        min_replicas=min(max(bounds.min, 1), ceiling),
        max_replicas=max(ceiling, 1),
    )


class StreamAutoscaler:
    """Scales every stream endpoint on its consumer lag; skips endpoints being swapped."""

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        interval: float,
        scale_down_delay: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.interval = interval
        self.scale_down_delay = scale_down_delay
        self.clock = clock or asyncio.get_running_loop().time
        self.history: dict[uuid.UUID, tuple[Recommendation, ...]] = {}
        self.lag: dict[uuid.UUID, dict[tuple[str, int], int]] = {}
        self.swapping: set[uuid.UUID] = set()
        self.settled: dict[uuid.UUID, bool] = {}

    async def run(self) -> None:
        """Decide every ``interval`` seconds until cancelled."""
        await run_every(self.interval, self.tick, "stream autoscaling pass")

    async def tick(self) -> None:
        """One decision for every stream endpoint with a ready replica."""
        live = set()
        for endpoint in list(self.supervisor.endpoints.values()):
            if endpoint.kind != "stream" or endpoint.deleted:
                continue
            live.add(endpoint.id)
            if endpoint.id in self.swapping or _changing(endpoint):
                continue
            lag = await self.observe(endpoint)
            # Mid-rebalance the revoked partitions' lag is unknown (reads as 0): no decision.
            if lag is None or not self.settled.get(endpoint.id, False):
                continue
            desired = self._desired(endpoint, sum(lag.values()))
            if desired < endpoint.desired:
                # One replica leaves at a time, each once the group has settled (see _swap).
                desired = endpoint.desired - 1
            if desired != endpoint.desired:
                await self.supervisor.scale(endpoint, desired)
        for gone in set(self.history) - live:
            self.history.pop(gone, None)
            self.lag.pop(gone, None)
            self.settled.pop(gone, None)

    async def observe(self, endpoint: EndpointRuntime) -> dict[tuple[str, int], int] | None:
        """The endpoint's lag per partition from its ready replicas (None without any)."""
        urls = [r.url for r in endpoint.replicas.values() if r.state == "ready" and r.url]
        if not urls:
            return None
        found = await asyncio.gather(*(scrape(self.supervisor.http, url) for url in urls))
        answered = [stats for stats in found if stats is not None]
        if not answered:
            return None
        lag = self.lag[endpoint.id] = group_lag(answered)
        partitions = stored_kafka(endpoint.spec.kafka).partition_count
        held = sum(stats.assigned_partitions for stats in answered)
        self.settled[endpoint.id] = len(answered) == len(urls) and held >= partitions
        return lag

    def _desired(self, endpoint: EndpointRuntime, lag: int) -> int:
        now = self.clock()
        partitions = stored_kafka(endpoint.spec.kafka).partition_count
        recommended = desired_for_lag(lag, endpoint.spec.replicas, partitions)
        return decide_for(
            self.history,
            endpoint.id,
            recommended,
            current=endpoint.desired,
            now=now,
            scale_down_delay=self.scale_down_delay,
        )


def _changing(endpoint: EndpointRuntime) -> bool:
    """A replica is starting or leaving: the group is about to rebalance."""
    return any(
        runner.state == "starting" or runner.stop_requested.is_set()
        for runner in endpoint.replicas.values()
    )


# --- the model swap -------------------------------------------------------------------------


class SwapRefused(Conflict):
    """A swap that cannot start or whose new version did not become ready."""


async def swap_stream_version(
    supervisor: Supervisor,
    endpoint: EndpointRuntime,
    version: VersionRecord,
    *,
    spec: EndpointSpec | None = None,
    scaler: StreamAutoscaler | None = None,
) -> None:
    """Hand ``endpoint``'s consumer group from its current version's replicas to ``version``'s
    (run with ``spec``, the version's code fields on the endpoint's Kafka wiring).

    The new replicas (as many as the endpoint has now) start and join the group while the old
    ones keep consuming; once all are ready, the old ones are stopped with SIGTERM and finish,
    commit and leave. If a new replica crashes or never gets ready, the new ones are stopped
    and the old ones keep serving (``SwapRefused``). The caller records the version and the
    100% traffic in the database (the rollout code, or ``swap_route`` below).
    """
    if endpoint.kind != "stream":
        raise BadRequest(f"endpoint {endpoint.slug!r} is not a stream endpoint")
    if version.id == endpoint.version.id:
        raise SwapRefused(f"version {version.label} of {endpoint.slug!r} already serves")
    if scaler is not None:
        if endpoint.id in scaler.swapping:
            raise SwapRefused(f"a model swap of {endpoint.slug!r} is already running")
        scaler.swapping.add(endpoint.id)
    try:
        await _swap(supervisor, endpoint, version, spec or endpoint.spec)
    finally:
        if scaler is not None:
            scaler.swapping.discard(endpoint.id)


async def _swap(
    supervisor: Supervisor, endpoint: EndpointRuntime, version: VersionRecord, spec: EndpointSpec
) -> None:
    snapshot = await supervisor.snapshots.extracted(version.digest)
    count = max(endpoint.desired, endpoint.spec.replicas.min, 1)
    log.info(
        "swapping %s from version %s to %s (%d replica(s))",
        endpoint.slug,
        endpoint.version.label,
        version.label,
        count,
    )
    # Outside endpoint.replicas while they warm up: converge and the status ignore them.
    incoming: list[ReplicaRunner] = []
    try:
        for _ in range(count):
            replica_id = await supervisor.store.add_replica(endpoint.id, version.id)
            runner = ReplicaRunner(
                supervisor,
                endpoint,
                replica_id,
                version=version,
                source_dir=snapshot.directory,
                spec=spec,
            )
            incoming.append(runner)
            supervisor.spawn(runner.run(), name=f"replica-{endpoint.slug}-{replica_id}")
        await _all_ready(endpoint, incoming, timeout=supervisor.settings.start_timeout_s)
    except BaseException:
        for runner in incoming:
            runner.stop_requested.set()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(runner.done.wait() for runner in incoming))
        raise
    async with endpoint.lock:
        if endpoint.deleted:
            for runner in incoming:
                runner.stop_requested.set()
            raise SwapRefused(f"endpoint {endpoint.slug!r} was deleted during the model swap")
        outgoing = endpoint.active()
        endpoint.version = version
        endpoint.source_dir = snapshot.directory
        endpoint.spec = spec
        for runner in incoming:
            endpoint.replicas[runner.id] = runner
    # SIGTERM: each finishes its batches in flight, commits and leaves the group. One at a
    # time, once the group has settled: tansu can elect a departed member as the leader of
    # the generation two simultaneous leaves start, and that group never syncs again.
    for runner in outgoing:
        await settled(supervisor, endpoint)
        runner.stop_requested.set()
        await runner.done.wait()
    await supervisor.refresh(endpoint)
    log.info("%s now runs version %s", endpoint.slug, version.label)


async def settled(
    supervisor: Supervisor, endpoint: EndpointRuntime, *, within: float = 30.0
) -> bool:
    """Wait until the ready replicas hold every input partition between them (the group is
    not mid-rebalance); False if that did not happen ``within`` seconds."""
    partitions = stored_kafka(endpoint.spec.kafka).partition_count
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        urls = [r.url for r in endpoint.replicas.values() if r.state == "ready" and r.url]
        found = await asyncio.gather(*(scrape(supervisor.http, url) for url in urls))
        if found and all(stats is not None for stats in found):
            held = sum(stats.assigned_partitions for stats in found if stats is not None)
            if held >= partitions:
                return True
        await asyncio.sleep(0.2)
    log.warning("%s: the consumer group did not settle within %g s", endpoint.slug, within)
    return False


async def _all_ready(
    endpoint: EndpointRuntime,
    runners: list[ReplicaRunner],
    *,
    timeout: float,  # noqa: ASYNC109 - the start timeout of the deployer's settings
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not all(runner.state == "ready" for runner in runners):
        if endpoint.deleted:
            raise SwapRefused(f"endpoint {endpoint.slug!r} was deleted during the model swap")
        for runner in runners:
            if runner.state == "crashed" or runner.done.is_set():
                reason = next(
                    (e.reason for e in reversed(endpoint.events) if e.replica_id == str(runner.id)),
                    None,
                )
                raise SwapRefused(
                    f"version {runner.version.label} of {endpoint.slug!r} did not start "
                    f"({reason or 'crashed'}); version {endpoint.version.label} keeps serving"
                )
        if loop.time() > deadline:
            raise SwapRefused(
                f"version {runners[0].version.label} of {endpoint.slug!r} was not ready within "
                f"{timeout:g} s; version {endpoint.version.label} keeps serving"
            )
        await asyncio.sleep(0.1)


# --- the API --------------------------------------------------------------------------------


class PartitionLag(BaseModel):
    """Consumer lag of one input partition."""

    topic: str
    partition: int
    lag: int


class StreamReplica(BaseModel):
    """One bridge replica as its metrics describe it."""

    id: str
    version: str
    state: str
    url: str | None
    assigned_partitions: int | None = None
    consumed: int | None = None
    produced: int | None = None
    dead_lettered: int | None = None


class StreamStatus(BaseModel):
    """``GET /api/v1/endpoints/{slug}/stream``: lag, replicas and Kafka wiring."""

    slug: str
    version: str
    status: str
    group: str
    bootstrap_servers: str
    input_topics: list[str]
    output_topic: str
    dlq_topic: str
    partitions: dict[str, int]
    lag_total: int
    lag: list[PartitionLag]
    replicas: list[StreamReplica]
    desired: int
    min: int
    max: int
    lag_target: float
    swapping: bool


stream_router = APIRouter(tags=["streams"], responses=error_responses(409))


def _service(request: Request) -> EndpointService:
    return cast(EndpointService, request.app.state.service)


def _scaler(request: Request) -> StreamAutoscaler:
    return cast(StreamAutoscaler, request.app.state.streams)


def _rollouts(request: Request) -> RolloutService:
    return cast(RolloutService, request.app.state.rollouts)


ServiceDep = Annotated[EndpointService, Depends(_service)]
RolloutsDep = Annotated[RolloutService, Depends(_rollouts)]
ScalerDep = Annotated[StreamAutoscaler, Depends(_scaler)]


async def _stream_endpoint(service: EndpointService, slug: str) -> EndpointRuntime:
    record = await service.store.find(slug)
    if record is None:
        raise NotFound(f"endpoint {slug!r} not found; GET /api/v1/endpoints lists the endpoints")
    if record.kind != "stream":
        raise BadRequest(f"endpoint {slug!r} is a {record.kind} endpoint, not a stream endpoint")
    endpoint = service.supervisor.endpoints.get(record.id)
    if endpoint is None:
        raise Conflict(f"endpoint {slug!r} is not supervised yet; retry in a moment")
    return endpoint


@stream_router.get("/api/v1/endpoints/{slug}/stream")
async def stream_status(slug: str, service: ServiceDep, scaler: ScalerDep) -> StreamStatus:
    """A stream endpoint's consumer lag per partition, its replicas and its Kafka wiring."""
    endpoint = await _stream_endpoint(service, slug)
    kafka = stored_kafka(endpoint.spec.kafka)
    runners = sorted(endpoint.replicas.values(), key=lambda r: r.order)
    found = await asyncio.gather(
        *(
            scrape(service.supervisor.http, r.url) if r.state == "ready" and r.url else _nothing()
            for r in runners
        )
    )
    lag = group_lag(stats for stats in found if stats is not None)
    replicas = [
        StreamReplica(
            id=str(runner.id),
            version=runner.version.label,
            state=runner.state,
            url=runner.url,
            assigned_partitions=int(stats.assigned_partitions) if stats else None,
            consumed=int(stats.consumed) if stats else None,
            produced=int(stats.produced) if stats else None,
            dead_lettered=int(stats.dead_lettered) if stats else None,
        )
        for runner, stats in zip(runners, found, strict=True)
    ]
    bounds = endpoint.spec.replicas
    return StreamStatus(
        slug=endpoint.slug,
        version=endpoint.version.label,
        status=endpoint.status,
        group=consumer_group(endpoint.slug, endpoint.id),
        bootstrap_servers=kafka.bootstrap_servers,
        input_topics=kafka.input_topics,
        output_topic=kafka.output_topic,
        dlq_topic=kafka.dead_letter_topic,
        partitions=kafka.partitions,
        lag_total=sum(lag.values()),
        lag=[PartitionLag(topic=t, partition=p, lag=n) for (t, p), n in sorted(lag.items())],
        replicas=replicas,
        desired=endpoint.desired,
        min=bounds.min,
        max=bounds.max,
        lag_target=bounds.target,
        swapping=endpoint.id in scaler.swapping,
    )


async def _nothing() -> None:
    return None


class StreamRollout:
    """Rollouts of a stream endpoint: a version takes the whole stream at once, by handing
    the consumer group over (``swap_stream_version``); a share below 100% has no meaning for
    a consumer group, and a rollback is the same handover back to the previous version."""

    def __init__(self, scaler: StreamAutoscaler) -> None:
        self.scaler = scaler

    async def rollout(
        self, service: RolloutService, record: EndpointRecord, version: str, percent: int
    ) -> TrafficOut:
        """Hand the stream to ``version`` (``percent`` must be 100)."""
        if percent != 100:
            raise BadRequest(
                f"{record.slug} is a stream endpoint: a rollout gives a version the whole "
                f"stream, so percent must be 100 (got {percent}); the old version's replicas "
                "hand their partitions over with no gap and no duplicate",
                details={"field": "percent", "kind": "stream"},
            )
        return await self._hand_over(service, record, version, action="rollout")

    async def promote(self, service: RolloutService, record: EndpointRecord) -> TrafficOut:
        """Nothing to promote: a stream's rollout is already complete."""
        traffic = await service.store.traffic(record.id)
        shown = ", ".join(f"{k}: {v}%" for k, v in traffic.weights.items())
        raise Conflict(
            f"nothing to promote: {record.slug} is a stream endpoint and a rollout already gives "
            f"its version the whole stream ({shown})",
            details={"kind": "stream", "weights": traffic.weights},
        )

    async def rollback(
        self, service: RolloutService, record: EndpointRecord, *, reason: str | None = None
    ) -> TrafficOut:
        """Hand the stream back to the version that had it before the current one."""
        history = await service.store.history(record.id)
        current = history[0]["weights"] if history else {}
        previous = next(
            (change["weights"] for change in history if change["weights"] != current), None
        )
        if not previous:
            raise Conflict(
                f"nothing to roll back: {record.slug} has run only one version",
                details={"kind": "stream"},
            )
        label = max(previous.items(), key=lambda item: int(item[1]))[0]
        return await self._hand_over(service, record, str(label), action="rollback", reason=reason)

    async def _hand_over(
        self,
        service: RolloutService,
        record: EndpointRecord,
        label: str,
        *,
        action: str,
        reason: str | None = None,
    ) -> TrafficOut:
        endpoint = service.require_primary(record)
        async with service.lock(record.id):
            previous = endpoint.version
            version = await service.find_version(record, label)
            spec = await service.store.version_spec(version.id, endpoint.spec)
            await swap_stream_version(
                service.supervisor, endpoint, version, spec=spec, scaler=self.scaler
            )
            await service.store.set_version_status(version.id, VersionStatus.READY)
            await service.store.set_version_status(previous.id, VersionStatus.RETIRED)
            await service.publish_traffic(
                record, {version.label: 100}, action=action, reason=reason, spec=endpoint
            )
            view = await service.supervisor.describe(endpoint.id)
            if view is not None:
                service.supervisor.publish(
                    EndpointChanged(
                        endpoint=endpoint.slug, change="updated", attributes=event_attributes(view)
                    )
                )
        log.info("%s: stream handed to version %s (%s)", record.slug, version.label, action)
        return await service.traffic(record.slug)


def install_streams(app: FastAPI, supervisor: Supervisor, settings: DeployerSettings) -> None:
    """Serve the stream routes and autoscale stream endpoints on consumer lag."""
    scaler = StreamAutoscaler(
        supervisor,
        interval=settings.autoscale_interval_s,
        scale_down_delay=settings.scale_down_delay_s,
    )
    app.state.streams = scaler
    app.state.stream_rollout = StreamRollout(scaler)
    supervisor.spawn(scaler.run(), name="stream-autoscaler")
