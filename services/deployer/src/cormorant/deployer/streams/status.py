"""``GET /api/v1/endpoints/{slug}/stream``: the endpoint checked here, its figures by the fleet."""

from __future__ import annotations

from dataclasses import dataclass

from cormorant.common.endpoints.fleet import StreamStatus
from cormorant.common.endpoints.views import EndpointNotFound
from cormorant.common.errors import BadRequest, Conflict
from cormorant.deployer.endpoints.store import Store
from cormorant.deployer.fleet import Fleet


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamService:
    """Reads a stream endpoint's lag, replicas and wiring from the fleet that runs it."""

    store: Store
    fleet: Fleet

    async def status(self, slug: str) -> StreamStatus:
        """The endpoint's consumer lag per partition, its replicas and its Kafka wiring."""
        record = await self.store.find(slug)
        if record is None:
            raise EndpointNotFound(slug)
        if record.kind != "stream":
            raise BadRequest(
                f"endpoint {slug!r} is a {record.kind} endpoint, not a stream endpoint"
            )
        status = await self.fleet.stream_status(record.id)
        if status is None:
            raise Conflict(f"endpoint {slug!r} is not supervised yet; retry in a moment")
        return status
