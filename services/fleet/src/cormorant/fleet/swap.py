"""The zero-gap model swap of a stream endpoint: its consumer group handed between replicas.

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

from cormorant.common.endpoints.kafka import stored_kafka
from cormorant.common.endpoints.schemas import EndpointSpec
from cormorant.common.endpoints.store import VersionRecord
from cormorant.common.errors import BadRequest, Conflict
from cormorant.fleet.lag import StreamAutoscaler, scrape
from cormorant.fleet.replica import EndpointRuntime, ReplicaRunner
from cormorant.fleet.supervisor import Supervisor

log = logging.getLogger(__name__)


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
    100% traffic in the database (``streams/swap.py``).
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
