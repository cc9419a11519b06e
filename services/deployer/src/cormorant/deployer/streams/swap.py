"""Rollouts of a stream endpoint (``StreamRollout``): a version takes the whole stream at once.

The fleet hands the consumer group over (``Fleet.swap``, ``fleet/swap.py``: the new version's
replicas join while the old ones keep consuming, then the old ones commit and leave); this
module records the versions and the 100% traffic that follow.
"""

from __future__ import annotations

import logging

from cormorant.common.db.models import VersionStatus
from cormorant.common.endpoints.store import EndpointRecord
from cormorant.common.endpoints.views import event_attributes
from cormorant.common.errors import BadRequest, Conflict
from cormorant.common.events import EndpointChanged
from cormorant.deployer.rollout.schemas import TrafficOut
from cormorant.deployer.rollout.service import RolloutService

log = logging.getLogger(__name__)


class StreamRollout:
    """Rollouts of a stream endpoint: a version takes the whole stream at once, by handing
    the consumer group over (``Fleet.swap``); a share below 100% has no meaning for a
    consumer group, and a rollback is the same handover back to the previous version."""

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
        async with service.lock(record.id):
            stable = await service.require_primary(record)
            previous = stable.version
            version = await service.find_version(record, label)
            spec = await service.store.version_spec(version.id, stable.spec)
            await service.fleet.swap(record.id, version, spec)
            await service.store.set_version_status(version.id, VersionStatus.READY)
            await service.store.set_version_status(previous.id, VersionStatus.RETIRED)
            await service.publish_traffic(
                record, {version.label: 100}, action=action, reason=reason, spec=spec
            )
            view = await service.fleet.describe(record.id)
            if view is not None:
                service.publish(
                    EndpointChanged(
                        endpoint=record.slug, change="updated", attributes=event_attributes(view)
                    )
                )
        log.info("%s: stream handed to version %s (%s)", record.slug, version.label, action)
        return await service.traffic(record.slug)
