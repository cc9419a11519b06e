"""Route of the batch service's capacity call: ``PUT /internal/endpoints/{slug}/demand``."""

from __future__ import annotations

from fastapi import APIRouter

from cormorant.deployer.api.deps import DemandsDep
from cormorant.deployer.fleet.demand import DemandIn, DemandOut

router = APIRouter(tags=["internal"])


@router.put("/internal/endpoints/{slug}/demand")
async def put_demand(slug: str, body: DemandIn, demands: DemandsDep) -> DemandOut:
    """Hold a batch endpoint at ``replicas`` for ``ttl_s`` s; it scales to 0 once it lapses."""
    return await demands.put(slug, body)
