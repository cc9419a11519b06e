"""The replica fleet: the ``Fleet`` seam and the values that cross it.

The deployer says *what* should run (a ``Placement``: one version of one endpoint, its code
archive and its replica bounds) and learns what happens to the replicas (``observe()``);
*how* they run is the fleet's business. ``LocalFleet`` (``fleet/local.py``) runs processes on
this machine and takes its own scaling decisions; a cluster fleet would turn a placement into a
Deployment and hand scaling to HPA/KEDA.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from cormorant.common.events import ReplicaChanged
from cormorant.deployer.endpoints.schemas import EndpointSpec
from cormorant.deployer.endpoints.store import EndpointRecord, VersionRecord


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
    """Where the version's code archive is (``endpoints/snapshot.py``)."""
    replicas: int
    """Replicas to run now."""
    autoscaled: bool = True
    """The fleet moves the count within ``spec.replicas`` (the stable version, which also
    sets the endpoint's status); False: a fixed count (a version beside the stable one)."""


ReplicaObserved = ReplicaChanged
"""A replica's state change as a fleet reports it: the very event the bus carries."""


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


class Fleet(Protocol):
    """Runs the placements it is given and reports what their replicas do."""

    async def apply(self, placement: Placement) -> None:
        """Run ``placement`` (or bring a running one to its replica count)."""
        ...

    async def remove(self, endpoint_id: uuid.UUID, version: str | None = None) -> None:
        """Drain and stop one version's replicas, or (no ``version``) the whole endpoint's."""
        ...

    def observe(self) -> AsyncIterator[ReplicaObserved]:
        """Every replica state change from now on."""
        ...
