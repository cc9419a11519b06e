"""Capacity on demand for batch endpoints (``PUT /internal/endpoints/{slug}/demand``).

The batch service asks for ``replicas`` (clamped to the endpoint's ``replicas.max``) for
``ttl_s`` seconds and renews the demand while its jobs run; each call replaces the previous
one. Once a demand lapses, the endpoint scales back to 0. Batch endpoints found scaled up at
start (a previous deployer's demand) lapse after ``batch_idle_timeout_s``.
"""

from __future__ import annotations

import asyncio
import uuid

from cormorant.common.endpoints.fleet import DemandIn, DemandOut
from cormorant.common.endpoints.views import EndpointNotFound
from cormorant.common.errors import Conflict
from cormorant.fleet.replica import EndpointRuntime
from cormorant.fleet.supervisor import Supervisor


class Demands:
    """The live demand of each batch endpoint, and the scale-down once it lapses."""

    def __init__(self, supervisor: Supervisor, *, idle_timeout_s: float) -> None:
        self.supervisor = supervisor
        self.idle_timeout_s = idle_timeout_s
        self._lapses: dict[uuid.UUID, asyncio.Task[None]] = {}

    def recover(self) -> None:
        """Batch endpoints left scaled up by a previous deployer lapse like a demand."""
        for endpoint in list(self.supervisor.endpoints.values()):
            if endpoint.kind == "batch" and endpoint.desired > 0:
                self._lapse_after(endpoint, self.idle_timeout_s)

    async def put(self, slug: str, body: DemandIn) -> DemandOut:
        """Scale ``slug`` to the demanded replicas until ``ttl_s`` s from now."""
        endpoint = next(
            (e for e in self.supervisor.endpoints.values() if e.slug == slug and not e.deleted),
            None,
        )
        if endpoint is None:
            raise EndpointNotFound(slug)
        if endpoint.kind != "batch":
            raise Conflict(f"endpoint {slug!r} is a {endpoint.kind} endpoint; only batch "
                           "endpoints scale on demand")  # fmt: skip
        # The new deadline first: a lapse due now must not scale down what this call asks for.
        self._lapse_after(endpoint, body.ttl_s)
        await self.supervisor.scale(endpoint, min(body.replicas, endpoint.spec.replicas.max))
        return DemandOut(slug=slug, status=endpoint.status, reason=endpoint.reason,
                         desired=endpoint.desired, ready=endpoint.ready_count())  # fmt: skip

    def _lapse_after(self, endpoint: EndpointRuntime, ttl_s: float) -> None:
        async def lapse() -> None:
            await asyncio.sleep(ttl_s)
            self._lapses.pop(endpoint.id, None)
            await self.supervisor.scale(endpoint, 0)

        previous = self._lapses.pop(endpoint.id, None)
        if previous is not None:
            previous.cancel()
        self._lapses[endpoint.id] = self.supervisor.spawn(lapse(), name=f"demand-{endpoint.slug}")
