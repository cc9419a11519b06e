"""What crosses the seam between the deployer and the fleet service, declared once.

The deployer says *what* should run (a ``Placement``: one version of one endpoint, its code
archive and its replica bounds) and reads what runs as plain values (``RunningVersion``,
``StreamStatus``, ``ManifestsOut``); replica changes reach it as ``ReplicaChanged`` events on
NATS. The fleet service's internal routes take and answer these shapes as JSON.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from cormorant.common.endpoints.schemas import EndpointSpec, StrictModel
from cormorant.common.endpoints.store import EndpointRecord, VersionRecord
from cormorant.common.events import ReplicaChanged

ReplicaObserved = ReplicaChanged
"""A replica's state change as a fleet reports it: the very event the bus carries."""


@dataclass(frozen=True, slots=True)
class Placement:
    """One version of one endpoint, as it should run."""

    endpoint_id: uuid.UUID
    endpoint: str
    """The endpoint's slug."""
    kind: str
    version: VersionRecord
    spec: EndpointSpec
    """The version's code fields and the endpoint's replica bounds (``replicas.min/max``)."""
    archive_url: str
    """Where the version's code archive is (``cormorant.common.endpoints.snapshot``)."""
    replicas: int
    """Replicas to run now."""
    autoscaled: bool = True
    """The fleet moves the count within ``spec.replicas`` (the stable version, which also
    sets the endpoint's status); False: a fixed count (a version beside the stable one)."""


def placement_of(
    record: EndpointRecord,
    spec: EndpointSpec,
    replicas: int,
    *,
    archive_url: str,
    version: VersionRecord | None = None,
) -> Placement:
    """The placement of ``version`` of the endpoint ``record``: by default its current
    version, autoscaled; another one runs ``replicas`` beside it."""
    current = version or record.version
    assert current is not None
    return Placement(
        endpoint_id=record.id,
        endpoint=record.slug,
        kind=record.kind,
        version=current,
        spec=spec,
        archive_url=archive_url,
        replicas=replicas,
        autoscaled=version is None,
    )


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


class FleetInfo(BaseModel):
    """``GET /internal/fleet``: which fleet runs the replicas."""

    kind: str
    """``local`` (processes on the fleet's machine) or ``kubernetes``."""


class PromoteIn(StrictModel):
    """The version beside the stable one that becomes the stable version."""

    version: str


class CheckIn(StrictModel):
    """A configuration to try with the worker before it is stored."""

    spec: EndpointSpec
    digest: str
    """The code archive's digest (``cormorant.common.endpoints.snapshot``)."""


class CheckOut(BaseModel):
    """Why the worker refuses the configuration, or null."""

    refused: str | None


class SwapIn(StrictModel):
    """The version a stream endpoint's consumer group is handed to, with its code fields."""

    version: VersionRecord
    spec: EndpointSpec


class DemandIn(StrictModel):
    """Replicas wanted for a while."""

    replicas: int = Field(ge=0, description="Replicas wanted (clamped to replicas.max).")
    ttl_s: float = Field(gt=0, le=86_400, description="Seconds the demand lasts unless renewed.")


class DemandOut(BaseModel):
    """The endpoint as the demand left it."""

    slug: str
    status: str
    reason: str | None
    desired: int
    ready: int


class ManifestsOut(BaseModel):
    """``GET /api/v1/endpoints/{slug}/manifests`` and ``GET /api/v1/manifests``."""

    endpoints: list[str]
    """The endpoints rendered, by slug."""
    objects: list[dict[str, Any]]
    """Every Kubernetes object, in apply order."""
    yaml: str
    """The same objects as one multi-document YAML stream."""


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
