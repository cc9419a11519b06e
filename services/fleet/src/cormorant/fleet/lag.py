"""Consumer lag of stream endpoints, read from their replicas, and autoscaling on it.

Lag is read from the replicas, not the broker: each kafka-bridge replica exports
``cormorant_kafka_bridge_lag{topic,partition}`` (high watermark from its fetch answers minus
the offset it committed, what KEDA's Kafka scaler computes from the group's offsets), and the
deployer scrapes the ready replicas' ``/metrics``. Every partition is owned by one replica, so
the sum is the group's lag; it needs no extra Kafka connection per endpoint, and it works on
brokers whose ListOffsets/OffsetFetch answers are unreliable (tansu's, see the bridge's README).
Its blind spot: partitions no ready replica holds (mid-rebalance) would read as 0, so no
decision is taken until the ready replicas hold every partition again.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cormorant.common.endpoints.kafka import stored_kafka
from cormorant.common.endpoints.schemas import ReplicasSpec
from cormorant.fleet.autoscale import PeriodicScaler, decide_for, recommend
from cormorant.fleet.replica import EndpointRuntime
from cormorant.fleet.supervisor import Supervisor

log = logging.getLogger(__name__)

_SCRAPE_TIMEOUT_S = 2.0
_LAG = "cormorant_kafka_bridge_lag"
_COUNTERS = {
    "cormorant_kafka_bridge_messages_consumed_total": "consumed",
    "cormorant_kafka_bridge_messages_produced_total": "produced",
    "cormorant_kafka_bridge_messages_dlq_total": "dead_lettered",
    "cormorant_kafka_bridge_assigned_partitions": "assigned_partitions",
}


@dataclass(slots=True)
class ReplicaStream:
    """What one bridge replica's ``/metrics`` says."""

    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    consumed: float = 0.0
    produced: float = 0.0
    dead_lettered: float = 0.0
    assigned_partitions: float = 0.0


def parse_metrics(text: str) -> ReplicaStream:
    """The stream figures of a bridge replica's Prometheus exposition ``text``."""
    stats = ReplicaStream()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == _LAG and "topic" in sample.labels:
                key = (sample.labels["topic"], int(sample.labels["partition"]))
                stats.lag[key] = int(sample.value)
            elif sample.name in _COUNTERS:
                setattr(stats, _COUNTERS[sample.name], float(sample.value))
    return stats


async def scrape(http: httpx.AsyncClient, url: str) -> ReplicaStream | None:
    """The replica's stream figures, or None if it did not answer."""
    try:
        response = await http.get(f"{url}/metrics", timeout=_SCRAPE_TIMEOUT_S)
        response.raise_for_status()
        return parse_metrics(response.text)
    except (httpx.HTTPError, ValueError) as exc:
        log.debug("scraping %s failed: %s", url, exc)
        return None


def group_lag(replicas: Iterable[ReplicaStream]) -> dict[tuple[str, int], int]:
    """Lag per partition over the replicas; a partition two replicas report mid-rebalance
    counts once, at its higher figure."""
    lag: dict[tuple[str, int], int] = {}
    for stats in replicas:
        for key, behind in stats.lag.items():
            lag[key] = max(behind, lag.get(key, 0))
    return lag


def desired_for_lag(lag: int, bounds: ReplicasSpec, partitions: int) -> int:
    """KEDA's Kafka scaler: ``ceil(lag / lagThreshold)`` within ``[min, max]`` and never more
    replicas than partitions."""
    ceiling = min(bounds.max, partitions) if partitions > 0 else bounds.max
    return recommend(
        float(lag),
        target=bounds.target,
        min_replicas=min(max(bounds.min, 1), ceiling),
        max_replicas=max(ceiling, 1),
    )


class StreamAutoscaler(PeriodicScaler[uuid.UUID]):
    """Scales every stream endpoint on its consumer lag; skips endpoints being swapped."""

    name = "stream-autoscaler"

    def __init__(
        self,
        supervisor: Supervisor,
        *,
        interval: float,
        scale_down_delay: float,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            supervisor, interval=interval, scale_down_delay=scale_down_delay, clock=clock
        )
        self.lag: dict[uuid.UUID, dict[tuple[str, int], int]] = {}
        self.swapping: set[uuid.UUID] = set()
        self.settled: dict[uuid.UUID, bool] = {}

    async def tick(self) -> None:
        """One decision for every stream endpoint with a ready replica."""
        live = set()
        for endpoint in list(self.supervisor.endpoints.values()):
            if endpoint.kind != "stream" or endpoint.deleted:
                continue
            live.add(endpoint.id)
            if endpoint.id in self.swapping or _changing(endpoint):
                continue
            lag = await self.observe(endpoint)
            # Mid-rebalance the revoked partitions' lag is unknown (reads as 0): no decision.
            if lag is None or not self.settled.get(endpoint.id, False):
                continue
            desired = self._desired(endpoint, sum(lag.values()))
            if desired < endpoint.desired:
                # One replica leaves at a time, each once the group has settled (see _swap).
                desired = endpoint.desired - 1
            if desired != endpoint.desired:
                await self.supervisor.scale(endpoint, desired)
        for gone in set(self.history) - live:
            self.history.pop(gone, None)
            self.lag.pop(gone, None)
            self.settled.pop(gone, None)

    async def observe(self, endpoint: EndpointRuntime) -> dict[tuple[str, int], int] | None:
        """The endpoint's lag per partition from its ready replicas (None without any)."""
        urls = [r.url for r in endpoint.replicas.values() if r.state == "ready" and r.url]
        if not urls:
            return None
        found = await asyncio.gather(*(scrape(self.supervisor.http, url) for url in urls))
        answered = [stats for stats in found if stats is not None]
        if not answered:
            return None
        lag = self.lag[endpoint.id] = group_lag(answered)
        partitions = stored_kafka(endpoint.spec.kafka).partition_count
        held = sum(stats.assigned_partitions for stats in answered)
        self.settled[endpoint.id] = len(answered) == len(urls) and held >= partitions
        return lag

    def _desired(self, endpoint: EndpointRuntime, lag: int) -> int:
        now = self.clock()
        partitions = stored_kafka(endpoint.spec.kafka).partition_count
        recommended = desired_for_lag(lag, endpoint.spec.replicas, partitions)
        return decide_for(
            self.history,
            endpoint.id,
            recommended,
            current=endpoint.desired,
            now=now,
            scale_down_delay=self.scale_down_delay,
        )


def _changing(endpoint: EndpointRuntime) -> bool:
    """A replica is starting or leaving: the group is about to rebalance."""
    return any(
        runner.state == "starting" or runner.stop_requested.is_set()
        for runner in endpoint.replicas.values()
    )
