"""Prometheus exposition of the publishers' stats, read at scrape time."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from cormorant.common.bus.publisher import BatchedPublisher


class BusCollector(Collector):
    """Reads the stats of every publisher on one registry at scrape time.

    Reading plain integers at scrape time keeps prometheus locks off the hot path, and one
    collector per registry lets several publishers share a registry under different names.
    """

    def __init__(self) -> None:
        self.publishers: weakref.WeakValueDictionary[str, BatchedPublisher] = (
            weakref.WeakValueDictionary()
        )

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples."""
        return list(self._families(publishers={}))

    def collect(self) -> Iterable[Metric]:
        """The metric families with one sample per live publisher."""
        return list(self._families(dict(self.publishers)))

    @staticmethod
    def _families(publishers: dict[str, BatchedPublisher]) -> Iterator[Metric]:
        pub_stats = {name: p.stats for name, p in publishers.items()}
        for attr, doc in (
            ("published", "Events acknowledged by JetStream (each event counted once)."),
            ("messages", "NATS messages acknowledged by JetStream (a pack of events is one)."),
            ("retried", "Publish attempts that failed and were queued again."),
            ("duplicates", "Acks where JetStream recognised a re-sent event."),
        ):
            counter = CounterMetricFamily(f"cormorant_publisher_{attr}", doc, labels=["publisher"])
            for name, stats in pub_stats.items():
                counter.add_metric([name], getattr(stats, attr))
            yield counter
        dropped = CounterMetricFamily(
            "cormorant_publisher_dropped",
            "Events that will never be published, by reason (buffer_full, shutdown...).",
            labels=["publisher", "reason"],
        )
        for name, stats in pub_stats.items():
            for reason, count in stats.dropped_by_reason.items():
                dropped.add_metric([name, reason], count)
        yield dropped
        buffer = GaugeMetricFamily(
            "cormorant_publisher_buffer_events",
            "Events buffered or in flight, not yet acknowledged.",
            labels=["publisher"],
        )
        for name, stats in pub_stats.items():
            buffer.add_metric([name], stats.pending)
        yield buffer
        in_flight = GaugeMetricFamily(
            "cormorant_publisher_in_flight_events",
            "Events sent and waiting for their acknowledgement.",
            labels=["publisher"],
        )
        for name, stats in pub_stats.items():
            in_flight.add_metric([name], stats.in_flight)
        yield in_flight


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, BusCollector] = (
    weakref.WeakKeyDictionary()
)


def collector_for(registry: CollectorRegistry) -> BusCollector:
    collector = _COLLECTORS.get(registry)
    if collector is None:
        collector = _COLLECTORS[registry] = BusCollector()
        registry.register(collector)
    return collector
