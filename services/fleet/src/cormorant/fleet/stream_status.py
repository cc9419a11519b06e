"""A stream endpoint's lag, replicas and wiring, read from its bridge replicas' metrics."""

from __future__ import annotations

import asyncio

import httpx

from cormorant.common.endpoints.fleet import PartitionLag, StreamReplica, StreamStatus
from cormorant.common.endpoints.kafka import consumer_group, stored_kafka
from cormorant.fleet.lag import group_lag, scrape
from cormorant.fleet.replica import EndpointRuntime


async def stream_status(
    endpoint: EndpointRuntime, http: httpx.AsyncClient, *, swapping: bool
) -> StreamStatus:
    """The endpoint's consumer lag per partition, its replicas and its Kafka wiring."""
    kafka = stored_kafka(endpoint.spec.kafka)
    runners = sorted(endpoint.replicas.values(), key=lambda r: r.order)
    found = await asyncio.gather(
        *(scrape(http, r.url) if r.state == "ready" and r.url else _nothing() for r in runners)
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
        swapping=swapping,
    )


async def _nothing() -> None:
    return None
