"""The ``Fleet`` seam as the deployer sees it, and ``RemoteFleet``: the fleet service over HTTP.

The deployer says *what* should run (a ``Placement``) and reads what runs as plain values
(``cormorant.common.endpoints.fleet``); *how* replicas run is the fleet service's business
(``services/fleet``: local processes or a Kubernetes cluster). Replica changes reach the
deployer as the ``ReplicaChanged`` events the fleet publishes on NATS (``observe``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx
from nats.aio.client import Client
from pydantic import TypeAdapter

from cormorant.common.endpoints.fleet import (
    CheckOut,
    DemandIn,
    DemandOut,
    FleetInfo,
    ManifestsOut,
    Placement,
    ReplicaObserved,
    RunningVersion,
    StreamStatus,
)
from cormorant.common.endpoints.schemas import EndpointOut, EndpointSpec
from cormorant.common.endpoints.store import VersionRecord
from cormorant.common.endpoints.views import ReplicaEvent
from cormorant.common.errors import (
    BadRequest,
    Conflict,
    CormorantError,
    NotFound,
    ServiceUnavailable,
)
from cormorant.common.events import ReplicaChanged, decode
from cormorant.common.retry import Backoff, retry


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

    async def manifests(self, slug: str | None = None) -> ManifestsOut:
        """The Kubernetes manifests of endpoint ``slug``'s versions, or of every endpoint."""
        ...

    async def demand(self, slug: str, body: DemandIn) -> DemandOut:
        """Scale a batch endpoint to ``body.replicas`` for ``body.ttl_s`` seconds."""
        ...


_PLACEMENT = TypeAdapter(Placement)
_EVENTS = TypeAdapter(list[ReplicaEvent])
_RUNNING = TypeAdapter(list[RunningVersion])
_VERSION = TypeAdapter(VersionRecord)
# The errors the fleet answers, raised again here so the caller's API answers the same.
_ERRORS: dict[int, type[CormorantError]] = {400: BadRequest, 404: NotFound, 409: Conflict}
# While the fleet service starts beside the deployer (the stack starts them one by one).
_START_BACKOFF = Backoff(initial=0.2, cap=2.0, attempts=40)


class FleetUnavailable(ServiceUnavailable):
    """The fleet service did not answer."""


class RemoteFleet:
    """The fleet service's internal routes (``/internal/fleet``) as a ``Fleet``."""

    def __init__(self, http: httpx.AsyncClient, nc: Client) -> None:
        self.http = http
        """Carries the internal credential, with the fleet's URL as its base."""
        self.nc = nc

    async def info(self) -> FleetInfo:
        """Which fleet runs the replicas, once the fleet service answers."""
        return FleetInfo.model_validate(
            await retry(
                lambda: self._call("GET", ""),
                _START_BACKOFF,
                retryable=lambda exc: isinstance(exc, FleetUnavailable),
                what="the fleet service",
            )
        )

    async def apply(self, placement: Placement) -> None:
        """Run ``placement`` (or bring a running one to its replica count)."""
        await self._call("PUT", "/placements", json=_PLACEMENT.dump_python(placement, mode="json"))

    async def remove(
        self, endpoint_id: uuid.UUID, version: str | None = None
    ) -> list[ReplicaEvent]:
        """Drain and stop one version's replicas, or the whole endpoint's."""
        params = {"version": version} if version is not None else {}
        found = await self._call("DELETE", f"/endpoints/{endpoint_id}", params=params, slow=True)
        return _EVENTS.validate_python(found)

    async def observe(self) -> AsyncIterator[ReplicaObserved]:
        """Every replica state change from the first iteration on, from the bus."""
        subscription = await self.nc.subscribe(ReplicaChanged.subject_filter())
        try:
            async for message in subscription.messages:
                event = decode(message.data, message.headers)
                if isinstance(event, ReplicaChanged):
                    yield event
        finally:
            await subscription.unsubscribe()

    async def describe(self, endpoint_id: uuid.UUID) -> EndpointOut | None:
        """The endpoint's JSON as stored now, with its recent replica events."""
        try:
            return EndpointOut.model_validate(await self._call("GET", f"/endpoints/{endpoint_id}"))
        except NotFound:
            return None

    async def events(self, endpoint_id: uuid.UUID) -> list[ReplicaEvent]:
        """The endpoint's recent replica events."""
        return _EVENTS.validate_python(await self._call("GET", f"/endpoints/{endpoint_id}/events"))

    async def running(self, endpoint_id: uuid.UUID) -> list[RunningVersion]:
        """The versions whose replicas run, the stable one first."""
        found = await self._call("GET", f"/endpoints/{endpoint_id}/running")
        return _RUNNING.validate_python(found)

    async def promote(self, endpoint_id: uuid.UUID, label: str) -> None:
        """Make version ``label`` the stable version."""
        await self._call("POST", f"/endpoints/{endpoint_id}/promote", json={"version": label})

    async def check(self, spec: EndpointSpec, digest: str) -> str | None:
        """Why the worker refuses ``spec`` on the code archived as ``digest``, or None."""
        body = {"spec": spec.model_dump(mode="json"), "digest": digest}
        found = await self._call("POST", "/checks", json=body, slow=True)
        return CheckOut.model_validate(found).refused

    async def swap(
        self, endpoint_id: uuid.UUID, version: VersionRecord, spec: EndpointSpec
    ) -> None:
        """Hand a stream endpoint's consumer group to ``version``'s replicas."""
        body = {
            "version": _VERSION.dump_python(version, mode="json"),
            "spec": spec.model_dump(mode="json"),
        }
        await self._call("POST", f"/endpoints/{endpoint_id}/swap", json=body, slow=True)

    async def stream_status(self, endpoint_id: uuid.UUID) -> StreamStatus | None:
        """A stream endpoint's lag, replicas and wiring."""
        try:
            found = await self._call("GET", f"/endpoints/{endpoint_id}/stream")
        except NotFound:
            return None
        return StreamStatus.model_validate(found)

    async def manifests(self, slug: str | None = None) -> ManifestsOut:
        """The Kubernetes manifests of endpoint ``slug``'s versions, or of every endpoint."""
        params = {"slug": slug} if slug is not None else {}
        return ManifestsOut.model_validate(await self._call("GET", "/manifests", params=params))

    async def demand(self, slug: str, body: DemandIn) -> DemandOut:
        """Scale a batch endpoint to ``body.replicas`` for ``body.ttl_s`` seconds."""
        found = await self._call("PUT", f"/endpoints/{slug}/demand", json=body.model_dump())
        return DemandOut.model_validate(found)

    async def _call(
        self,
        method: str,
        path: str,
        *,
        slow: bool = False,
        **options: Any,
    ) -> Any:
        # A drain, a swap or a check waits on replicas for minutes: no read timeout then.
        timeout = httpx.Timeout(30.0, read=None) if slow else httpx.Timeout(30.0)
        try:
            response = await self.http.request(
                method, f"/internal/fleet{path}", timeout=timeout, **options
            )
        except httpx.HTTPError as exc:
            raise FleetUnavailable(f"the fleet service did not answer: {exc!r}") from exc
        if response.status_code == 204:
            return None
        try:
            body = response.json() if response.content else {}
        except ValueError:
            body = {}
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            message = str(error.get("message") or response.text)
            kind = _ERRORS.get(response.status_code)
            if kind is None:
                raise FleetUnavailable(
                    f"the fleet service answered {response.status_code}: {message}"
                )
            raise kind(message, details=error.get("details"))
        return body
