"""HTTP route of stream endpoints' status (their swap is the rollout API)."""

from __future__ import annotations

from fastapi import APIRouter

from cormorant.common.endpoints.fleet import StreamStatus
from cormorant.common.openapi import error_responses
from cormorant.deployer.api.deps import StreamsDep

router = APIRouter(tags=["streams"], responses=error_responses(409))


@router.get("/api/v1/endpoints/{slug}/stream")
async def stream_status(slug: str, streams: StreamsDep) -> StreamStatus:
    """A stream endpoint's consumer lag per partition, its replicas and its Kafka wiring."""
    return await streams.status(slug)
