"""The replica fleet: the ``Fleet`` seam and the values that cross it.

The deployer says *what* should run (a ``Placement``: one version of one endpoint, its code
archive and its replica bounds) and learns what happens to the replicas (``observe()``, and
as plain values: ``describe``, ``running``, ``stream_status``); *how* they run is the
fleet's business. The control plane (endpoints, rollout, streams) reaches the fleet only
through this protocol. ``LocalFleet`` (``fleet/local.py``) runs processes on
this machine and takes its own scaling decisions; a cluster fleet would turn a placement into a
Deployment and hand scaling to HPA/KEDA.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from cormorant.common.endpoints.schemas import EndpointSpec
from cormorant.common.endpoints.store import EndpointRecord, VersionRecord
from cormorant.common.events import ReplicaChanged

if TYPE_CHECKING:
    # Only named in signatures: these modules' imports need this package first.
    from cormorant.common.endpoints.schemas import EndpointOut
    from cormorant.common.endpoints.views import ReplicaEvent
    from cormorant.deployer.fleet.kubernetes.manifests import ClusterConfig
    from cormorant.deployer.fleet.kubernetes.render import ManifestsOut
    from cormorant.deployer.fleet.views import RunningVersion, StreamStatus


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

    async def remove(
        self, endpoint_id: uuid.UUID, version: str | None = None
    ) -> list[ReplicaEvent]:
        """Drain and stop one version's replicas, or (no ``version``) the whole endpoint's;
        the endpoint's replica events up to their stop."""
        ...

    def observe(self) -> AsyncIterator[ReplicaObserved]:
        """Every replica state change from now on."""
        ...

    async def describe(self, endpoint_id: uuid.UUID) -> EndpointOut | None:
        """The endpoint's JSON as stored now, with its recent replica events."""
        ...

    async def events(self, endpoint_id: uuid.UUID) -> list[ReplicaEvent]:
        """The endpoint's recent replica events."""
        ...

    async def running(self, endpoint_id: uuid.UUID) -> list[RunningVersion]:
        """The versions whose replicas run, the stable one first (none once deleted)."""
        ...

    async def promote(self, endpoint_id: uuid.UUID, label: str) -> None:
        """Make version ``label`` (running beside the stable one) the stable version."""
        ...

    async def check(self, spec: EndpointSpec, digest: str) -> str | None:
        """Why the worker refuses ``spec`` run on the code archived as ``digest``, or None."""
        ...

    async def swap(
        self, endpoint_id: uuid.UUID, version: VersionRecord, spec: EndpointSpec
    ) -> None:
        """Hand a stream endpoint's consumer group to ``version``'s replicas."""
        ...

    async def stream_status(self, endpoint_id: uuid.UUID) -> StreamStatus | None:
        """A stream endpoint's lag, replicas and wiring (None if it runs nothing)."""
        ...

    async def manifests(self, config: ClusterConfig, slug: str | None = None) -> ManifestsOut:
        """The Kubernetes manifests of endpoint ``slug``'s versions, or of every endpoint."""
        ...
