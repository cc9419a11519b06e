"""``GET /api/v1/endpoints/{slug}/stream``: a stream endpoint's lag, replicas and wiring."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
from pydantic import BaseModel

from cormorant.common.errors import BadRequest, Conflict
from cormorant.deployer.endpoints.service import EndpointNotFound
from cormorant.deployer.endpoints.store import Store
from cormorant.deployer.fleet.replica import EndpointRuntime
from cormorant.deployer.fleet.supervisor import Supervisor
from cormorant.deployer.streams.lag import StreamAutoscaler, group_lag, scrape
from cormorant.deployer.streams.spec import consumer_group, stored_kafka


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


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamService:
    """Reads a stream endpoint's state from its supervisor and its replicas' metrics."""

    store: Store
    supervisor: Supervisor
    scaler: StreamAutoscaler
    http: httpx.AsyncClient

    async def endpoint(self, slug: str) -> EndpointRuntime:
        """The supervised stream endpoint ``slug``; 4xx if it is none."""
        record = await self.store.find(slug)
        if record is None:
            raise EndpointNotFound(slug)
        if record.kind != "stream":
            raise BadRequest(
                f"endpoint {slug!r} is a {record.kind} endpoint, not a stream endpoint"
            )
        endpoint = self.supervisor.endpoints.get(record.id)
        if endpoint is None:
            raise Conflict(f"endpoint {slug!r} is not supervised yet; retry in a moment")
        return endpoint

    async def status(self, slug: str) -> StreamStatus:
        """The endpoint's consumer lag per partition, its replicas and its Kafka wiring."""
        endpoint = await self.endpoint(slug)
        kafka = stored_kafka(endpoint.spec.kafka)
        runners = sorted(endpoint.replicas.values(), key=lambda r: r.order)
        found = await asyncio.gather(
            *(
                scrape(self.http, r.url) if r.state == "ready" and r.url else _nothing()
                for r in runners
            )
        )
        lag = group_lag(stats for stats in found if stats is not None)
        replicas = [
            StreamReplica(
                id=str(runner.id),
                version=runner.version.label,
                state=runner.state,
                url=runner.url,
                assigned_partitions=int(stats.assigned_partitions) if stats else None,
                consumed=int(stats.consumed) if stats else None,
                produced=int(stats.produced) if stats else None,
                dead_lettered=int(stats.dead_lettered) if stats else None,
            )
            for runner, stats in zip(runners, found, strict=True)
        ]
        bounds = endpoint.spec.replicas
        return StreamStatus(
            slug=endpoint.slug,
            version=endpoint.version.label,
            status=endpoint.status,
            group=consumer_group(endpoint.slug, endpoint.id),
            bootstrap_servers=kafka.bootstrap_servers,
            input_topics=kafka.input_topics,
            output_topic=kafka.output_topic,
            dlq_topic=kafka.dead_letter_topic,
            partitions=kafka.partitions,
            lag_total=sum(lag.values()),
            lag=[PartitionLag(topic=t, partition=p, lag=n) for (t, p), n in sorted(lag.items())],
            replicas=replicas,
            desired=endpoint.desired,
            min=bounds.min,
            max=bounds.max,
            lag_target=bounds.target,
            swapping=endpoint.id in self.scaler.swapping,
        )


async def _nothing() -> None:
    return None
