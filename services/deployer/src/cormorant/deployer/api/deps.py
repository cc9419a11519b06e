"""What the composition root yields (``DeployerState``), and the typed dependencies routes read."""

from __future__ import annotations

from typing import Annotated, TypedDict

from fastapi import Depends

from cormorant.common.lifespan import from_state
from cormorant.deployer.endpoints.service import EndpointService
from cormorant.deployer.fleet import RemoteFleet
from cormorant.deployer.rollout.service import RolloutService
from cormorant.deployer.streams.status import StreamService


class DeployerState(TypedDict):
    """Every component the deployer's routes use, built once by ``app.create_app``."""

    endpoints: EndpointService
    rollouts: RolloutService
    streams: StreamService
    fleet: RemoteFleet


EndpointsDep = Annotated[EndpointService, Depends(from_state("endpoints", EndpointService))]
RolloutsDep = Annotated[RolloutService, Depends(from_state("rollouts", RolloutService))]
StreamsDep = Annotated[StreamService, Depends(from_state("streams", StreamService))]
