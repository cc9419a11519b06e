"""``GET /api/v1/endpoints/{slug}/replicas/usage``: what each ready replica uses now.

A replica runs several gunicorn worker processes and any one of them answers ``/metrics``, so
the figures read are the replica-wide ones each worker exposes: one sample per process of the
replica, labelled by pid (``cormorant.worker.processes``). The route hands back every process
and the replica's sums; the console computes CPU % per pid between two reads, so a worker
that restarted in between never turns into a negative or huge figure. Read on request, so
the console's Monitoring tab needs no Prometheus. A replica runs user code, so its answer is
bounded in total time and wire bytes and parsed for three sample families only. Network use
is not measured by the local runtime (on Kubernetes cAdvisor has it, in the Grafana
dashboard).
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Final

import httpx
from fastapi import APIRouter
from pydantic import BaseModel, Field

from cormorant.common.endpoints.schemas import RouteReplica
from cormorant.deployer.api.deps import EndpointsDep

router = APIRouter()

SCRAPE_TIMEOUT_S: Final = 2.0
"""Bound on the whole read of one replica (connect, headers, every byte of the body)."""
MAX_SCRAPE_BYTES: Final = 1 << 20
SAMPLES: Final = {
    "cormorant_replica_process_cpu_seconds_total": "cpu_seconds",
    "cormorant_replica_process_resident_memory_bytes": "memory_bytes",
    "cormorant_replica_process_open_fds": "open_fds",
}
_SAMPLE = re.compile(r'^([a-z_]+)\{pid="(\d+)"\} (\S+)')


class ProcessUsage(BaseModel):
    """One process of a replica (the gunicorn master, a worker, or one predict spawned)."""

    pid: int
    cpu_seconds: float | None = Field(
        default=None, description="CPU time used since the process started (user + system)."
    )
    memory_bytes: float | None = Field(default=None, description="Resident memory.")
    open_fds: float | None = Field(default=None, description="Open file descriptors.")


class ReplicaUsage(BaseModel):
    """One replica's resource use: each of its processes, and their sums."""

    id: str
    version: str
    state: str
    cpu_seconds: float | None = Field(
        default=None, description="CPU time used by the replica's live processes, summed."
    )
    memory_bytes: float | None = Field(
        default=None,
        description="Resident memory of the replica's processes, summed (pages shared "
        "between forked workers count in each).",
    )
    open_fds: float | None = Field(default=None, description="Open file descriptors, summed.")
    processes: list[ProcessUsage] = Field(
        default_factory=list, description="Each process, by pid: compute CPU % per pid."
    )
    error: str | None = Field(default=None, description="Why the figures are missing.")


class UsageOut(BaseModel):
    """Every ready replica of an endpoint, with when the figures were read."""

    slug: str
    read_at: datetime
    replicas: list[ReplicaUsage]


def parse_usage(text: str) -> list[ProcessUsage]:
    """The per-pid samples of a Prometheus text exposition, one entry per pid."""
    found: dict[int, ProcessUsage] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, pid, raw = match.groups()
        key = SAMPLES.get(name)
        if key is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            continue
        if math.isfinite(value):
            process = found.setdefault(int(pid), ProcessUsage(pid=int(pid)))
            setattr(process, key, value)
    return list(found.values())


def _sum(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


async def _fetch(http: httpx.AsyncClient, url: str) -> bytes | str:
    """The body of ``url``, or why there is none."""
    # identity: the cap below counts wire bytes, and a compressed answer could expand past it.
    headers = {"Accept-Encoding": "identity"}
    async with http.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            return f"its /metrics answered HTTP {response.status_code}"
        body = bytearray()
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) > MAX_SCRAPE_BYTES:
                return "its /metrics answer is larger than 1 MiB"
        return bytes(body)


async def read_replica(http: httpx.AsyncClient, replica: RouteReplica) -> ReplicaUsage:
    """The figures of one replica, within ``SCRAPE_TIMEOUT_S`` whatever it sends."""
    usage = ReplicaUsage(id=replica.id, version=replica.version, state=replica.state)
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_S):
            body = await _fetch(http, f"{replica.url}/metrics")
    except TimeoutError:
        usage.error = f"its /metrics did not answer in full within {SCRAPE_TIMEOUT_S:g} s"
        return usage
    except httpx.HTTPError as exc:
        usage.error = f"its /metrics did not answer: {type(exc).__name__}"
        return usage
    if isinstance(body, str):
        usage.error = body
        return usage
    processes = parse_usage(body.decode("utf-8", "replace"))
    if not processes:
        usage.error = "its /metrics has no per-process figures (cormorant_replica_process_*)"
        return usage
    usage.processes = processes
    usage.cpu_seconds = _sum(p.cpu_seconds for p in processes)
    usage.memory_bytes = _sum(p.memory_bytes for p in processes)
    usage.open_fds = _sum(p.open_fds for p in processes)
    return usage


async def read_replicas(replicas: Iterable[RouteReplica]) -> list[ReplicaUsage]:
    """The figures of every replica, read at once."""
    # trust_env=False: replicas are reached directly, never through a proxy from the env.
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT_S, trust_env=False) as http:
        return list(await asyncio.gather(*(read_replica(http, r) for r in replicas)))


@router.get("/api/v1/endpoints/{slug}/replicas/usage", tags=["endpoints"])
async def replica_usage(slug: str, service: EndpointsDep) -> UsageOut:
    """CPU time, resident memory and open files of each ready replica's processes, read now."""
    route = await service.route(slug)
    replicas = await read_replicas(route.replicas)
    return UsageOut(slug=slug, read_at=datetime.now(UTC), replicas=replicas)
