"""``GET /api/v1/endpoints/{slug}/replicas/usage``: what each ready replica uses now.

The figures are the process collector's of the replica's own ``/metrics`` (the series the
Grafana replicas dashboard charts), read on request so the console's Monitoring tab needs no
Prometheus. A replica runs user code, so its answer is bounded in time and size and parsed
for three plain samples only. Network use is not measured by the local runtime (on
Kubernetes cAdvisor has it, in the Grafana dashboard).
"""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Final

import httpx
from fastapi import APIRouter
from pydantic import BaseModel, Field

from cormorant.deployer.api.deps import EndpointsDep
from cormorant.deployer.endpoints.schemas import RouteReplica

router = APIRouter()

SCRAPE_TIMEOUT_S: Final = 2.0
MAX_SCRAPE_BYTES: Final = 1 << 20
SAMPLES: Final = {
    "process_cpu_seconds_total": "cpu_seconds",
    "process_resident_memory_bytes": "memory_bytes",
    "process_open_fds": "open_fds",
}


class ReplicaUsage(BaseModel):
    """One replica's resource use, as its serving process reports it."""

    id: str
    version: str
    state: str
    cpu_seconds: float | None = Field(
        default=None, description="CPU time used since the process started (user + system)."
    )
    memory_bytes: float | None = Field(default=None, description="Resident memory.")
    open_fds: float | None = Field(default=None, description="Open file descriptors.")
    error: str | None = Field(default=None, description="Why the figures are missing.")


class UsageOut(BaseModel):
    """Every ready replica of an endpoint, with when the figures were read."""

    slug: str
    read_at: datetime
    replicas: list[ReplicaUsage]


def parse_usage(text: str) -> dict[str, float]:
    """The known unlabelled samples of a Prometheus text exposition."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        key = SAMPLES.get(name)
        if key is None:
            continue
        try:
            value = float(rest.split(" ", 1)[0])
        except ValueError:
            continue
        if math.isfinite(value):
            found[key] = value
    return found


async def _read(http: httpx.AsyncClient, replica: RouteReplica) -> ReplicaUsage:
    usage = ReplicaUsage(id=replica.id, version=replica.version, state=replica.state)
    try:
        async with http.stream("GET", f"{replica.url}/metrics") as response:
            if response.status_code != 200:
                usage.error = f"its /metrics answered HTTP {response.status_code}"
                return usage
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_SCRAPE_BYTES:
                    usage.error = "its /metrics answer is larger than 1 MiB"
                    return usage
    except httpx.HTTPError as exc:
        usage.error = f"its /metrics did not answer: {type(exc).__name__}"
        return usage
    for key, value in parse_usage(body.decode("utf-8", "replace")).items():
        setattr(usage, key, value)
    return usage


@router.get("/api/v1/endpoints/{slug}/replicas/usage", tags=["endpoints"])
async def replica_usage(slug: str, service: EndpointsDep) -> UsageOut:
    """CPU time, resident memory and open files of each ready replica, read now."""
    route = await service.route(slug)
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S) as http:
        replicas = await asyncio.gather(*(_read(http, r) for r in route.replicas))
    return UsageOut(slug=slug, read_at=datetime.now(UTC), replicas=list(replicas))
