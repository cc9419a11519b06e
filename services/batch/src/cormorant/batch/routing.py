"""The deployer's answers a job reads, typed: the routing snapshot of one endpoint
(``GET /internal/routing/{slug}``) and the endpoint's state after a demand.

Only the fields a job uses are declared; the others the deployer sends are ignored, so the
deployer may add fields without breaking this service. The shape has no common definition in
``cormorant.common`` (the deployer and the gateway each declare their own).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RouteReplica(BaseModel):
    """One replica of the snapshot."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    url: str = ""
    """Empty while the replica has no address yet."""
    state: str = "ready"


class Route(BaseModel):
    """One endpoint's routing snapshot: its replicas."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    slug: str = ""
    # Required: an error body or an empty object must not read as "no replicas".
    replicas: list[RouteReplica]

    def ready(self) -> dict[str, str]:
        """The URL of every ready replica that has one, by replica id."""
        return {r.id: r.url for r in self.replicas if r.state == "ready" and r.url}


class EndpointState(BaseModel):
    """The endpoint as the deployer's ``PUT .../demand`` left it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: str
    reason: str | None = None
