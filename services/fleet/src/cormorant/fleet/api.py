"""The fleet's internal routes: the ``Fleet`` seam as the deployer calls it over HTTP.

Every route needs the internal credential (``create_service_app``); the shapes are
``cormorant.common.endpoints.fleet``'s.
"""

from __future__ import annotations

import uuid
from typing import Annotated, TypedDict

from fastapi import APIRouter, Depends, Response

from cormorant.common.endpoints.fleet import (
    CheckIn,
    CheckOut,
    DemandIn,
    DemandOut,
    FleetInfo,
    ManifestsOut,
    Placement,
    PromoteIn,
    RunningVersion,
    StreamStatus,
    SwapIn,
)
from cormorant.common.endpoints.schemas import EndpointOut
from cormorant.common.endpoints.views import ReplicaEvent
from cormorant.common.errors import NotFound
from cormorant.common.lifespan import from_state
from cormorant.fleet.demand import Demands
from cormorant.fleet.local import LocalFleet


class FleetState(TypedDict):
    """What the fleet's routes use, built once by ``app.create_app``."""

    fleet: LocalFleet
    demands: Demands


FleetDep = Annotated[LocalFleet, Depends(from_state("fleet", LocalFleet))]
DemandsDep = Annotated[Demands, Depends(from_state("demands", Demands))]

router = APIRouter(prefix="/internal/fleet", tags=["internal"])


class _NotRunning(NotFound):
    def __init__(self, endpoint_id: uuid.UUID) -> None:
        super().__init__(
            f"the fleet runs no replicas of endpoint {endpoint_id}",
            details={"endpoint_id": str(endpoint_id)},
        )


@router.get("")
async def info(fleet: FleetDep) -> FleetInfo:
    """Which fleet runs the replicas."""
    return FleetInfo(kind=fleet.settings.kind)


@router.put("/placements", status_code=204)
async def apply(body: Placement, fleet: FleetDep) -> Response:
    """Run the placement (or bring it to its replica count)."""
    await fleet.apply(body)
    return Response(status_code=204)


@router.delete("/endpoints/{endpoint_id}")
async def remove(
    endpoint_id: uuid.UUID, fleet: FleetDep, version: str | None = None
) -> list[ReplicaEvent]:
    """Drain and stop one version's replicas (or the endpoint's); its events up to the stop."""
    return await fleet.remove(endpoint_id, version)


@router.get("/endpoints/{endpoint_id}")
async def describe(endpoint_id: uuid.UUID, fleet: FleetDep) -> EndpointOut:
    """The endpoint's JSON as stored, with its recent replica events."""
    view = await fleet.describe(endpoint_id)
    if view is None:
        raise _NotRunning(endpoint_id)
    return view


@router.get("/endpoints/{endpoint_id}/events")
async def events(endpoint_id: uuid.UUID, fleet: FleetDep) -> list[ReplicaEvent]:
    """The endpoint's recent replica events."""
    return await fleet.events(endpoint_id)


@router.get("/endpoints/{endpoint_id}/running")
async def running(endpoint_id: uuid.UUID, fleet: FleetDep) -> list[RunningVersion]:
    """The versions whose replicas run, the stable one first."""
    return await fleet.running(endpoint_id)


@router.post("/endpoints/{endpoint_id}/promote", status_code=204)
async def promote(endpoint_id: uuid.UUID, body: PromoteIn, fleet: FleetDep) -> Response:
    """Make a version beside the stable one the stable version."""
    await fleet.promote(endpoint_id, body.version)
    return Response(status_code=204)


@router.post("/endpoints/{endpoint_id}/swap", status_code=204)
async def swap(endpoint_id: uuid.UUID, body: SwapIn, fleet: FleetDep) -> Response:
    """Hand a stream endpoint's consumer group to another version's replicas."""
    await fleet.swap(endpoint_id, body.version, body.spec)
    return Response(status_code=204)


@router.get("/endpoints/{endpoint_id}/stream")
async def stream_status(endpoint_id: uuid.UUID, fleet: FleetDep) -> StreamStatus:
    """A stream endpoint's lag, replicas and wiring."""
    status = await fleet.stream_status(endpoint_id)
    if status is None:
        raise _NotRunning(endpoint_id)
    return status


@router.post("/checks")
async def check(body: CheckIn, fleet: FleetDep) -> CheckOut:
    """Whether the worker accepts a configuration, run on an archived version's code."""
    return CheckOut(refused=await fleet.check(body.spec, body.digest))


@router.get("/manifests")
async def manifests(fleet: FleetDep, slug: str | None = None) -> ManifestsOut:
    """The Kubernetes objects of endpoint ``slug``'s versions, or of every endpoint."""
    return await fleet.manifests(slug)


@router.put("/endpoints/{slug}/demand")
async def put_demand(slug: str, body: DemandIn, demands: DemandsDep) -> DemandOut:
    """Scale a batch endpoint to the replicas asked for, for ``ttl_s`` seconds."""
    return await demands.put(slug, body)
