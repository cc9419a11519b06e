"""Route of the batch service's capacity call: ``PUT /internal/endpoints/{slug}/demand``.

The fleet holds the demand (``cormorant.fleet.demand``); this route keeps the path the batch
service calls and hands the demand over.
"""

from __future__ import annotations

from fastapi import APIRouter

from cormorant.common.endpoints.fleet import DemandIn, DemandOut
from cormorant.deployer.api.deps import EndpointsDep

router = APIRouter(tags=["internal"])


@router.put("/internal/endpoints/{slug}/demand")
async def put_demand(slug: str, body: DemandIn, service: EndpointsDep) -> DemandOut:
    """Hold a batch endpoint at ``replicas`` for ``ttl_s`` s; it scales to 0 once it lapses."""
    return await service.fleet.demand(slug, body)
