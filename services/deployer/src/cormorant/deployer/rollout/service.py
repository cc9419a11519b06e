"""Model updates: versions beside the stable one, canary shares, promote, rollback.

The stable version is the fleet's primary version of the endpoint (it sets the endpoint's
status and is autoscaled); every other running version runs beside it (``Fleet.running``).
Each traffic change is stored under the next generation, then announced as
``TrafficChanged``. A version that lost its traffic is stopped only once every gateway
confirmed it applied that generation and has no request in flight to it (the handshake,
``handshake.py``); its replicas then drain as usual.

Endpoint kinds other than ``web`` plug in through ``KindRollout`` (a stream endpoint hands its
consumer group over instead of splitting traffic).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from cormorant.common.db.models import RolloutStatus, VersionStatus
from cormorant.common.endpoints.fleet import RunningVersion
from cormorant.common.endpoints.schemas import EndpointSpec
from cormorant.common.endpoints.store import EndpointRecord, VersionRecord
from cormorant.common.endpoints.views import EndpointNotFound, version_created
from cormorant.common.errors import BadRequest, Conflict, CormorantError, NotFound
from cormorant.common.events import Event, ShadowTarget, TrafficChanged
from cormorant.common.tasks import TaskSet
from cormorant.deployer.endpoints.service import EndpointService
from cormorant.deployer.endpoints.validation import changed_request, resolve_spec
from cormorant.deployer.fleet import Fleet
from cormorant.deployer.rollout.handshake import GatewayHandshake
from cormorant.deployer.rollout.schemas import (
    ReplicaOut,
    RolloutIn,
    ShadowIn,
    ShadowOut,
    TrafficOut,
    VersionCreate,
    VersionList,
    VersionOut,
)
from cormorant.deployer.rollout.store import RolloutStore, TrafficState

log = logging.getLogger(__name__)

_READY_POLL_S = 0.1


class RolloutFailed(Conflict):
    """The new version could not take traffic; nothing changed."""

    code = "rollout_failed"


class KindRollout(Protocol):
    """How an endpoint kind other than ``web`` sets a version's share (e.g. streams)."""

    async def rollout(
        self, service: RolloutService, record: EndpointRecord, version: str, percent: int
    ) -> TrafficOut:
        """Give ``version`` ``percent`` of the endpoint's work."""
        ...

    async def promote(self, service: RolloutService, record: EndpointRecord) -> TrafficOut:
        """All the work to the version rolled out."""
        ...

    async def rollback(
        self, service: RolloutService, record: EndpointRecord, *, reason: str | None = None
    ) -> TrafficOut:
        """All the work back to the previous version."""
        ...


ProgressiveStart = Callable[[EndpointRecord, str, dict[str, Any]], Awaitable[TrafficOut]]
"""Starts a progressive rollout under a policy (``policy.py`` registers it)."""


class RolloutService:
    """Versions, traffic and the retirement of versions, independent of HTTP."""

    def __init__(
        self,
        *,
        endpoints: EndpointService,
        store: RolloutStore,
        handshake: GatewayHandshake | None,
    ) -> None:
        self.endpoints = endpoints
        self.store = store
        self.handshake = handshake
        self.settings = endpoints.settings
        self.kinds: dict[str, KindRollout] = {}
        """Rollout of other endpoint kinds, by kind; the streams module registers ``stream``."""
        self.progressive: ProgressiveStart | None = None
        self.running: dict[uuid.UUID, asyncio.Task[None]] = {}
        """The progressive rollout in progress per endpoint (see ``policy.py``)."""
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self._retiring: dict[uuid.UUID, set[str]] = {}
        self.tasks = TaskSet("rollouts")
        """Retirements of versions and the steps of progressive rollouts."""

    async def close(self) -> None:
        """Cancel the retirements and progressive rollouts in progress."""
        await self.tasks.close()

    @property
    def fleet(self) -> Fleet:
        """The fleet that runs the endpoints' replicas."""
        return self.endpoints.fleet

    def publish(self, event: Event) -> None:
        """Hand ``event`` to the bus (after the database write it reports)."""
        self.endpoints.publisher.publish(event)

    def lock(self, endpoint_id: uuid.UUID) -> asyncio.Lock:
        """Serializes the traffic changes of one endpoint."""
        return self._locks.setdefault(endpoint_id, asyncio.Lock())

    # Versions

    async def create_version(self, slug: str, body: VersionCreate) -> VersionOut:
        """Snapshot and check the new code, store the version, start its replicas (no traffic)."""
        record = await self._find(slug)
        self._check_kind(record)
        given = body.model_dump(exclude_unset=True)
        given.setdefault("commit", None)
        if given.get("replicas") is not None and record.kind in self.kinds:
            raise BadRequest(
                f"{record.slug} is a {record.kind} endpoint: a version runs with the endpoint's "
                "replicas; remove replicas from the version",
                details={"field": "replicas", "kind": record.kind},
            )
        spec = resolve_spec(
            changed_request(record.spec, given),
            default_target=self.settings.default_target,
            default_timeout_s=self.settings.default_timeout_s,
        )
        service = self.endpoints
        snapshot, commit = await service._snapshot(spec)
        await service._check_worker(spec, snapshot)
        version = await self.store.add_version(record.id, spec, snapshot.digest, commit)
        if record.kind in self.kinds:
            # Not started: a stream's replicas would join its consumer group and take
            # partitions before the rollout hands it over.
            self._announce_version(record, version, spec)
            return await self._version_out(record, version.label)
        self._announce_version(record, version, spec)
        placement = service.placement(record, spec, max(1, spec.replicas.min), version)
        await service.fleet.apply(placement)
        return await self._version_out(record, version.label)

    def _announce_version(
        self, record: EndpointRecord, version: VersionRecord, spec: EndpointSpec
    ) -> None:
        log.info("created version %s of %s from %s", version.label, record.slug, spec.source)
        self.publish(version_created(record.slug, version, spec))

    async def find_version(self, record: EndpointRecord, label: str) -> VersionRecord:
        """Version ``label`` of the endpoint, or 404 naming the versions there are."""
        rows = await self.store.versions(record.id)
        for row in rows:
            if row.label == label:
                return VersionRecord(row.id, int(row.label), row.source, row.commit, row.digest)
        known = ", ".join(sorted((row.label for row in rows), key=lambda v: (len(v), v)))
        raise NotFound(
            f"{record.slug} has no version {label!r} (versions: {known}); create one with "
            f"POST /api/v1/endpoints/{record.slug}/versions",
            details={"field": "version", "versions": known},
        )

    async def list_versions(self, slug: str) -> VersionList:
        """Every version of the endpoint with its weight, role and replicas."""
        record = await self._find(slug)
        traffic = await self.store.traffic(record.id)
        return VersionList(slug=record.slug, versions=await self._versions(record, traffic))

    # Traffic

    async def traffic(self, slug: str) -> TrafficOut:
        """Weights, generation, each version's replicas, and the history."""
        record = await self._find(slug)
        return await self._traffic_out(record)

    async def rollout(self, slug: str, body: RolloutIn) -> TrafficOut:
        """Give ``body.version`` ``body.percent`` of the traffic once its replicas are ready."""
        record = await self._find(slug)
        handler = self.kinds.get(record.kind)
        if handler is not None:
            if body.policy is not None:
                raise BadRequest(
                    f"{record.slug} is a {record.kind} endpoint: a rollout policy moves web "
                    "traffic step by step; roll out with percent 100 and no policy",
                    details={"field": "policy", "kind": record.kind},
                )
            return await handler.rollout(self, record, body.version, body.percent)
        self._check_kind(record)
        if body.policy is not None:
            if self.progressive is None:
                raise BadRequest("rollout policies are not available in this deployer")
            return await self.progressive(record, body.version, body.policy)
        return await self.set_share(record, body.version, body.percent)

    async def set_share(
        self,
        record: EndpointRecord,
        version: str,
        percent: int,
        *,
        reason: str | None = None,
        rollout_id: uuid.UUID | None = None,
    ) -> TrafficOut:
        """Give ``version`` ``percent`` of the traffic, the stable version the rest.

        A failure is recorded on the rollout ``rollout_id``, or on a new failed rollout.
        """
        async with self.lock(record.id):
            stable, canary = await self.canary_runtime(record, version)
            traffic = await self.store.traffic(record.id)
            if traffic.shadow is not None and traffic.shadow.version == version:
                raise Conflict(
                    f"version {version} is {record.slug}'s shadow version; stop the shadow "
                    f"traffic first (DELETE /api/v1/endpoints/{record.slug}/shadow)",
                    details={"field": "version", "shadow": version},
                )
            holder = _other_canary(traffic, stable.label, version)
            if holder is not None:
                raise Conflict(
                    f"version {holder} already holds {traffic.weights[holder]}% of "
                    f"{record.slug}'s traffic; promote it or roll it back first",
                    details={"version": holder},
                )
            failure = await self.wait_ready(record, canary.label)
            if failure is not None:
                if rollout_id is not None:
                    await self.store.update_rollout(
                        rollout_id, status=RolloutStatus.FAILED, reason=failure
                    )
                else:
                    await self.store.start_rollout(
                        record.id,
                        canary.version.id,
                        {"steps": [percent]},
                        status=RolloutStatus.FAILED,
                        reason=failure,
                    )
                await self.store.set_version_status(
                    canary.version.id, VersionStatus.FAILED, failure
                )
                self._retire_later(record, canary, traffic.generation)
                raise RolloutFailed(
                    f"version {version} of {record.slug} gets no traffic: {failure}; "
                    "fix it and create a new version",
                    details={"version": version, "reason": failure},
                )
            await self.store.set_version_status(canary.version.id, VersionStatus.READY)
            weights = {stable.label: 100 - percent, version: percent}
            if weights != traffic.weights:
                await self.publish_traffic(record, weights, action="rollout", reason=reason)
            log.info("%s: version %s at %d%%", record.slug, version, percent)
        return await self._traffic_out(record)

    async def promote(self, slug: str, *, reason: str | None = None) -> TrafficOut:
        """All traffic to the canary, which becomes the stable version; the old one retires."""
        record = await self._find(slug)
        handler = self.kinds.get(record.kind)
        if handler is not None:
            return await handler.promote(self, record)
        self._check_kind(record)
        async with self.lock(record.id):
            stable = await self.require_primary(record)
            traffic = await self.store.traffic(record.id)
            label = _other_canary(traffic, stable.label, None)
            others = {v.label: v for v in (await self.fleet.running(record.id))[1:]}
            canary = others.get(label) if label is not None else None
            if canary is None or label is None:
                raise Conflict(
                    f"nothing to promote: no version of {record.slug} besides the stable "
                    f"version {stable.label} has traffic; roll one out first with "
                    f"POST /api/v1/endpoints/{record.slug}/rollout",
                    details={"stable": stable.label},
                )
            state = await self.publish_traffic(
                record, {label: 100}, action="promote", reason=reason, spec=canary.spec
            )
            # The canary becomes the primary version: it sets the status and is autoscaled.
            await self.fleet.promote(record.id, label)
            self._retire_later(record, stable, state.generation)
            log.info("%s: promoted version %s", record.slug, label)
        return await self._traffic_out(record)

    async def rollback(self, slug: str, *, reason: str | None = None) -> TrafficOut:
        """All traffic back to the stable version; every other version retires."""
        record = await self._find(slug)
        handler = self.kinds.get(record.kind)
        if handler is not None:
            return await handler.rollback(self, record, reason=reason)
        self._check_kind(record)
        async with self.lock(record.id):
            stable = await self.require_primary(record)
            retiring = self._retiring.get(record.id, set())
            traffic = await self.store.traffic(record.id)
            # The shadow version keeps answering mirrored requests: stop it on its own.
            shadow = traffic.shadow.version if traffic.shadow is not None else None
            others = [
                running
                for running in (await self.fleet.running(record.id))[1:]
                if running.label not in retiring and running.label != shadow
            ]
            weights = {stable.label: 100}
            # Weights on a version with no runtime (its replicas were stopped by a deployer
            # restart) are still worth resetting.
            if not others and traffic.weights == weights:
                raise Conflict(
                    f"nothing to roll back: {record.slug} runs only its stable version "
                    f"{stable.label}",
                    details={"stable": stable.label},
                )
            generation = traffic.generation
            if traffic.weights != weights:
                state = await self.publish_traffic(
                    record, weights, action="rollback", reason=reason
                )
                generation = state.generation
            for runtime in others:
                self._retire_later(record, runtime, generation)
            log.info("%s: rolled back to version %s", record.slug, stable.label)
        return await self._traffic_out(record)

    async def recover(self) -> None:
        """End the progressive rollouts a previous deployer left running: their steps were
        its tasks. The weights stay as they were; roll back or roll out again."""
        await self.store.fail_running_rollouts(
            "the deployer restarted during the rollout; roll back or start it again"
        )

    async def wait_rollout(self, endpoint_id: uuid.UUID) -> dict[str, Any]:
        """The endpoint's latest rollout, once the progressive one in progress has ended."""
        task = self.running.get(endpoint_id)
        if task is not None:
            await asyncio.wait({task})
        latest = await self.store.rollouts(endpoint_id, limit=1)
        if not latest:
            raise NotFound("no rollout recorded for this endpoint")
        return latest[0]

    # Readiness and retirement

    def is_retiring(self, endpoint_id: uuid.UUID, label: str) -> bool:
        """Whether version ``label`` lost its traffic and is being stopped."""
        return label in self._retiring.get(endpoint_id, set())

    async def wait_ready(self, record: EndpointRecord, label: str) -> str | None:
        """None once version ``label``'s replicas are ready, else why they will not be."""
        timeout = self.settings.rollout_ready_timeout_s
        deadline = time.monotonic() + timeout
        while True:
            running = await self.fleet.running(record.id)
            if not running:
                return "the endpoint was deleted"
            found = next((v for v in running if v.label == label), None)
            if found is None:
                return f"version {label} stopped running"
            if found.ready >= max(1, found.desired):
                return None
            if found.failure:
                return found.failure
            if time.monotonic() > deadline:
                return f"its replicas were not ready within {timeout:g} s"
            await asyncio.sleep(_READY_POLL_S)

    def _retire_later(
        self, record: EndpointRecord, runtime: RunningVersion, generation: int
    ) -> None:
        label = runtime.label
        self._retiring.setdefault(record.id, set()).add(label)
        self.tasks.spawn(
            self._retire(record, runtime, generation), name=f"retire-{record.slug}-{label}"
        )

    async def _retire(
        self, record: EndpointRecord, runtime: RunningVersion, generation: int
    ) -> None:
        label = runtime.label
        try:
            if self.handshake is not None:
                state = await self.store.traffic(record.id)
                event = TrafficChanged(
                    endpoint=record.slug,
                    generation=state.generation,
                    weights=state.weights,
                    shadow=state.shadow,
                )
                await self.handshake.wait(
                    record.slug, generation, [label], nudge=lambda: self.publish(event)
                )
            await self.fleet.remove(record.id, label)
            # Nothing runs any more once the endpoint itself was deleted meanwhile.
            if await self.fleet.running(record.id):
                await self.store.set_version_status(runtime.version.id, VersionStatus.RETIRED)
            log.info("%s: version %s retired", record.slug, label)
        finally:
            self._retiring.get(record.id, set()).discard(label)

    # Helpers

    async def publish_traffic(
        self,
        record: EndpointRecord,
        weights: dict[str, int],
        *,
        action: str,
        reason: str | None = None,
        spec: EndpointSpec | None = None,
    ) -> TrafficState:
        state = await self.store.set_traffic(
            record.id, weights, action=action, reason=reason, spec=spec
        )
        self.publish(
            TrafficChanged(
                endpoint=record.slug,
                generation=state.generation,
                weights=weights,
                shadow=state.shadow,
            )
        )
        return state

    # Shadow traffic

    async def shadow(self, slug: str) -> ShadowOut:
        """The version live requests are mirrored to, and their share."""
        record = await self._find(slug)
        return _shadow_out(record, await self.store.traffic(record.id))

    async def start_shadow(self, slug: str, body: ShadowIn) -> ShadowOut:
        """Mirror ``body.percent`` of live requests to ``body.version`` once its replicas are
        ready; its answers are logged tagged shadow, never returned to callers."""
        record = await self._find(slug)
        if record.kind != "web":
            raise BadRequest(
                f"{record.slug} is a {record.kind} endpoint: shadow traffic mirrors web "
                "requests; deploy the version as a web endpoint to compare it",
                details={"field": "slug", "kind": record.kind},
            )
        async with self.lock(record.id):
            _, runtime = await self.canary_runtime(record, body.version)
            traffic = await self.store.traffic(record.id)
            if traffic.weights.get(body.version, 0) > 0:
                raise Conflict(
                    f"version {body.version} holds {traffic.weights[body.version]}% of "
                    f"{record.slug}'s live traffic; a shadow version takes none: roll it back "
                    "or shadow another version",
                    details={"field": "version", "weight": traffic.weights[body.version]},
                )
            failure = await self.wait_ready(record, runtime.label)
            if failure is not None:
                raise RolloutFailed(
                    f"version {body.version} of {record.slug} cannot shadow: {failure}",
                    details={"field": "version", "reason": failure},
                )
            target = ShadowTarget(version=body.version, percent=body.percent)
            if traffic.shadow != target:
                state = await self.store.set_shadow(record.id, target, action="shadow")
                self._publish_state(record, state)
                traffic = state
            log.info("%s: mirroring %g%% to version %s", record.slug, body.percent, body.version)
        return _shadow_out(record, traffic)

    async def stop_shadow(self, slug: str) -> ShadowOut:
        """Stop mirroring; the shadow version keeps running, without traffic."""
        record = await self._find(slug)
        async with self.lock(record.id):
            traffic = await self.store.traffic(record.id)
            if traffic.shadow is None:
                raise Conflict(
                    f"{record.slug} mirrors no traffic; start with POST "
                    f"/api/v1/endpoints/{record.slug}/shadow",
                    details={"slug": record.slug},
                )
            state = await self.store.set_shadow(record.id, None, action="shadow-stop")
            self._publish_state(record, state)
            log.info("%s: shadow traffic stopped", record.slug)
        return _shadow_out(record, state)

    def _publish_state(self, record: EndpointRecord, state: TrafficState) -> None:
        self.publish(
            TrafficChanged(
                endpoint=record.slug,
                generation=state.generation,
                weights=state.weights,
                shadow=state.shadow,
            )
        )

    async def _find(self, slug: str) -> EndpointRecord:
        record = await self.endpoints.store.find(slug)
        if record is None:
            raise EndpointNotFound(slug)
        return record

    def _check_kind(self, record: EndpointRecord) -> None:
        if record.kind != "web" and record.kind not in self.kinds:
            raise BadRequest(
                f"{record.slug} is a {record.kind} endpoint: versions and rollouts are for web "
                "endpoints; deploy the new code as a new endpoint",
                details={"kind": record.kind},
            )

    async def _primary(self, record: EndpointRecord) -> RunningVersion | None:
        running = await self.fleet.running(record.id)
        return running[0] if running and running[0].primary else None

    async def require_primary(self, record: EndpointRecord) -> RunningVersion:
        """The endpoint's stable version as the fleet runs it."""
        primary = await self._primary(record)
        if primary is None:
            raise CormorantError(f"{record.slug} is not supervised by this deployer")
        return primary

    async def canary_runtime(
        self, record: EndpointRecord, version: str
    ) -> tuple[RunningVersion, RunningVersion]:
        """The stable version and the running version ``version``; 4xx if there is none."""
        running = await self.fleet.running(record.id)
        if not running or not running[0].primary:
            raise CormorantError(f"{record.slug} is not supervised by this deployer")
        stable, others = running[0], {v.label: v for v in running[1:]}
        if version == stable.label:
            raise BadRequest(
                f"version {version} is {record.slug}'s stable version; roll out another one "
                f"(create it with POST /api/v1/endpoints/{record.slug}/versions)",
                details={"field": "version"},
            )
        canary = others.get(version)
        if canary is None or version in self._retiring.get(record.id, set()):
            labels = sorted([stable.label, *others], key=lambda v: (len(v), v))
            raise NotFound(
                f"version {version!r} of {record.slug} is not running (running: "
                f"{', '.join(labels)}); create one with POST "
                f"/api/v1/endpoints/{record.slug}/versions",
                details={"field": "version", "running": labels},
            )
        return stable, canary

    def _role(
        self,
        record: EndpointRecord,
        label: str,
        traffic: TrafficState,
        running: list[RunningVersion],
    ) -> str:
        if running and running[0].primary and running[0].label == label:
            return "stable"
        if label in self._retiring.get(record.id, set()):
            return "retiring"
        if traffic.shadow is not None and traffic.shadow.version == label:
            return "shadow"
        if any(v.label == label for v in running[1:]):
            return "canary" if traffic.weights.get(label, 0) > 0 else "starting"
        return "inactive"

    async def _versions(self, record: EndpointRecord, traffic: TrafficState) -> list[VersionOut]:
        replicas = await self.store.replicas(record.id)
        running = await self.fleet.running(record.id)
        out = []
        for row in await self.store.versions(record.id):
            out.append(
                VersionOut(
                    version=row.label,
                    status=row.status,
                    reason=row.reason,
                    source=row.source,
                    commit=row.commit,
                    source_digest=row.digest,
                    file=row.file,
                    function=row.function,
                    created_at=row.created_at,
                    weight=traffic.weights.get(row.label, 0),
                    role=self._role(record, row.label, traffic, running),
                    replicas=[
                        ReplicaOut(id=str(r.id), state=r.state, url=r.url)
                        for r in replicas
                        if r.version == row.label
                    ],
                )
            )
        return out

    async def _version_out(self, record: EndpointRecord, label: str) -> VersionOut:
        traffic = await self.store.traffic(record.id)
        [found] = [v for v in await self._versions(record, traffic) if v.version == label]
        return found

    async def _traffic_out(self, record: EndpointRecord) -> TrafficOut:
        traffic = await self.store.traffic(record.id)
        primary = await self._primary(record)
        stable = primary.label if primary is not None else None
        return TrafficOut(
            slug=record.slug,
            generation=traffic.generation,
            weights=traffic.weights,
            stable=stable,
            canary=_other_canary(traffic, stable, None),
            shadow=_shadow_out(record, traffic) if traffic.shadow is not None else None,
            versions=await self._versions(record, traffic),
            history=await self.store.history(record.id),
            rollouts=await self.store.rollouts(record.id),
        )


def _other_canary(traffic: TrafficState, stable: str | None, besides: str | None) -> str | None:
    """The version other than ``stable`` (and ``besides``) that holds traffic, if any."""
    for label, weight in traffic.weights.items():
        if label not in (stable, besides) and weight > 0:
            return label
    return None


def _shadow_out(record: EndpointRecord, traffic: TrafficState) -> ShadowOut:
    shadow = traffic.shadow
    return ShadowOut(
        slug=record.slug,
        generation=traffic.generation,
        version=shadow.version if shadow is not None else None,
        percent=shadow.percent if shadow is not None else None,
    )
