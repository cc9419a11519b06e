"""The lifespan state the composition root yields, and the typed dependencies routes read."""

from __future__ import annotations

from typing import Annotated, TypedDict

from fastapi import Depends, Request

from cormorant.deployer.endpoints.service import EndpointService
from cormorant.deployer.fleet.runtime import Runtime
from cormorant.deployer.fleet.supervisor import Supervisor
from cormorant.deployer.rollout.service import RolloutService
from cormorant.deployer.streams.status import StreamService


class DeployerState(TypedDict):
    """Every component the deployer's routes use, built once by ``app.create_app``."""

    endpoints: EndpointService
    rollouts: RolloutService
    streams: StreamService
    supervisor: Supervisor
    runtime: Runtime


def lifespan_state(request: Request) -> DeployerState:
    """The state the app's lifespan yielded (Starlette copies it into every request)."""
    state: DeployerState = request.scope["state"]
    return state


def _endpoints(request: Request) -> EndpointService:
    return lifespan_state(request)["endpoints"]


def _rollouts(request: Request) -> RolloutService:
    return lifespan_state(request)["rollouts"]


def _streams(request: Request) -> StreamService:
    return lifespan_state(request)["streams"]


EndpointsDep = Annotated[EndpointService, Depends(_endpoints)]
RolloutsDep = Annotated[RolloutService, Depends(_rollouts)]
StreamsDep = Annotated[StreamService, Depends(_streams)]
