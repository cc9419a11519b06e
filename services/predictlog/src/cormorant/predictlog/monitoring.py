"""Prometheus instruments of the ingest, and the sampler of the consumers' backlog."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

_ROW_BUCKETS = (1, 10, 50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 50_000)
_SECOND_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class IngestMetrics:
    """What the ingest reports: rows, batches, write time, latency, errors, consumer lag."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rows_written = Counter(
            "cormorant_predictlog_rows_written",
            "Rows committed to PostgreSQL.",
            ["table"],
            registry=registry,
        )
        self.rows_duplicate = Counter(
            "cormorant_predictlog_rows_duplicate",
            "Events already stored (redeliveries), skipped by the idempotent insert.",
            ["table"],
            registry=registry,
        )
        self.batches = Counter(
            "cormorant_predictlog_batches",
            "Batches committed.",
            ["table"],
            registry=registry,
        )
        self.batch_rows = Histogram(
            "cormorant_predictlog_batch_rows",
            "Rows per committed batch (the batch adapts to what is waiting).",
            ["table"],
            buckets=_ROW_BUCKETS,
            registry=registry,
        )
        self.write_seconds = Histogram(
            "cormorant_predictlog_write_seconds",
            "Time to COPY and commit one batch.",
            ["table"],
            buckets=_SECOND_BUCKETS,
            registry=registry,
        )
        self.ingest_latency = Histogram(
            "cormorant_predictlog_ingest_latency_seconds",
            "Age at commit of the oldest event of each batch (event creation to commit).",
            ["table"],
            buckets=_SECOND_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "cormorant_predictlog_ingest_errors",
            "Ingest problems by reason: database_unavailable (the batch is retried), "
            "unknown_endpoint (the event is redelivered later), rejected (a row refused).",
            ["table", "reason"],
            registry=registry,
        )
        self.dropped = Counter(
            "cormorant_predictlog_events_dropped",
            "Events given up, never to be stored: undecodable, rejected (the database refuses "
            "the row), unknown_endpoint (after max_deliver tries), failed (max_deliver batch "
            "failures).",
            ["table", "reason"],
            registry=registry,
        )
        self.consumer_pending = Gauge(
            "cormorant_predictlog_consumer_pending",
            "Messages in the stream not yet delivered to the consumer (sampled num_pending); "
            "a message is one event or a pack of several.",
            ["stream"],
            registry=registry,
        )
        self.consumer_ack_pending = Gauge(
            "cormorant_predictlog_consumer_ack_pending",
            "Messages delivered and not yet acked (sampled num_ack_pending).",
            ["stream"],
            registry=registry,
        )
        self._consumers = ConsumerStatsCollector()
        registry.register(self._consumers)

    def watch(self, consumers: Sequence[Counted]) -> None:
        """Report the counters of ``consumers`` (several may share a durable)."""
        self._consumers.consumers.extend(consumers)


class Counted(Protocol):
    """A consumer loop: its stream and its counters."""

    @property
    def stream(self) -> str:
        """The stream consumed."""
        ...

    @property
    def stats(self) -> Any:
        """Counters: delivered, acked, nacked, terminated, undecodable, fetch/handler errors."""
        ...


class ConsumerStatsCollector(Collector):
    """The counters of every consumer loop, summed per stream, read at scrape time."""

    _OUTCOMES = ("delivered", "acked", "nacked", "terminated", "undecodable")

    def __init__(self) -> None:
        self.consumers: list[Counted] = []

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples."""
        return list(self._families([]))

    def collect(self) -> Iterable[Metric]:
        """The metric families with one sample per stream and outcome."""
        return list(self._families(self.consumers))

    def _families(self, consumers: Sequence[Counted]) -> Iterable[Metric]:
        events = CounterMetricFamily(
            "cormorant_predictlog_consumer_events",
            "Events handled by the ingest consumers, by outcome.",
            labels=["stream", "outcome"],
        )
        failures = CounterMetricFamily(
            "cormorant_predictlog_consumer_failures",
            "Failed fetches and failed batches of the ingest consumers.",
            labels=["stream", "kind"],
        )
        outcomes: dict[tuple[str, str], int] = {}
        kinds: dict[tuple[str, str], int] = {}
        for consumer in consumers:
            stats = consumer.stats
            for outcome in self._OUTCOMES:
                key = (consumer.stream, outcome)
                outcomes[key] = outcomes.get(key, 0) + getattr(stats, outcome)
            for kind, count in (("fetch", stats.fetch_errors), ("handler", stats.handler_errors)):
                kinds[consumer.stream, kind] = kinds.get((consumer.stream, kind), 0) + count
        for labels, count in sorted(outcomes.items()):
            events.add_metric(list(labels), count)
        for labels, count in sorted(kinds.items()):
            failures.add_metric(list(labels), count)
        return [events, failures]


async def sample_lag(
    js: JetStreamContext,
    metrics: IngestMetrics,
    durables: Sequence[tuple[str, str]],
    *,
    interval: float,
    stopping: asyncio.Event,
) -> None:
    """Every ``interval`` s, set the pending gauges of each ``(stream, durable)``."""
    while not stopping.is_set():
        for stream, durable in durables:
            try:
                info = await js.consumer_info(stream, durable, timeout=min(interval, 2.0))
            except Exception as exc:  # server away or consumer not created yet: next time
                log.debug("consumer info of %s/%s unavailable: %s", stream, durable, exc)
                continue
            metrics.consumer_pending.labels(stream).set(info.num_pending or 0)
            metrics.consumer_ack_pending.labels(stream).set(info.num_ack_pending or 0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await stopping.wait()
