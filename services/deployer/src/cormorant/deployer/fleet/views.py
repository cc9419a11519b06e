"""What the fleet reports about the replicas it runs: plain values the control plane reads.

They are all the deployer's endpoints, rollout and streams features see of the fleet (with
``Placement`` and ``ReplicaObserved``): no runtime object crosses the seam, so the fleet can
run in another process.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from cormorant.common.endpoints.schemas import EndpointSpec
from cormorant.common.endpoints.store import VersionRecord


@dataclass(frozen=True, slots=True)
class RunningVersion:
    """One version of an endpoint whose replicas the fleet runs."""

    version: VersionRecord
    spec: EndpointSpec
    """The version's code fields on the endpoint's settings, as its replicas run them."""
    primary: bool
    """The stable version: it sets the endpoint's status and is autoscaled."""
    desired: int
    ready: int
    """Replicas that receive traffic."""
    failure: str | None
    """Why its replicas will not become ready, once the fleet knows."""

    @property
    def label(self) -> str:
        """The version's label."""
        return self.version.label


class PartitionLag(BaseModel):
    """Consumer lag of one input partition."""

    topic: str
    partition: int
    lag: int


class StreamReplica(BaseModel):
    """One bridge replica as its metrics describe it."""

    id: str
    version: str
    state: str
    url: str | None
    assigned_partitions: int | None = None
    consumed: int | None = None
    produced: int | None = None
    dead_lettered: int | None = None


class StreamStatus(BaseModel):
    """``GET /api/v1/endpoints/{slug}/stream``: lag, replicas and Kafka wiring."""

    slug: str
    version: str
    status: str
    group: str
    bootstrap_servers: str
    input_topics: list[str]
    output_topic: str
    dlq_topic: str
    partitions: dict[str, int]
    lag_total: int
    lag: list[PartitionLag]
    replicas: list[StreamReplica]
    desired: int
    min: int
    max: int
    lag_target: float
    swapping: bool
