"""Consumer lag per partition, read at scrape time: what the autoscaler watches.

Lag is the partition's high watermark (from the latest fetch answer) minus the offset this
replica last committed there: messages on the broker that this replica has not yet
predicted, produced and committed, in-flight ones included. That is the lag KEDA's Kafka
scaler computes from the group's committed offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PartitionLag = Mapping[tuple[str, int], int]
"""``(topic, partition)`` → messages behind."""


class LagCollector(Collector):
    """Exposes ``cormorant_kafka_bridge_lag`` from a snapshot taken at each scrape."""

    def __init__(self, snapshot: Callable[[], PartitionLag]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """One gauge sample per assigned partition with a known high watermark."""
        family = GaugeMetricFamily(
            "cormorant_kafka_bridge_lag",
            "Messages on the partition not yet predicted, produced and committed by this replica.",
            labels=["topic", "partition"],
        )
        total = GaugeMetricFamily(
            "cormorant_kafka_bridge_lag_total",
            "Sum of the lag of the partitions assigned to this replica.",
        )
        lag = self._snapshot()
        for (topic, partition), behind in sorted(lag.items()):
            family.add_metric([topic, str(partition)], behind)
        total.add_metric([], sum(lag.values()))
        yield family
        yield total

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The families without samples, so registration does not call ``collect``."""
        return []


def register_lag(registry: CollectorRegistry, snapshot: Callable[[], PartitionLag]) -> None:
    """Report ``snapshot``'s lag on ``registry``."""
    registry.register(LagCollector(snapshot))
