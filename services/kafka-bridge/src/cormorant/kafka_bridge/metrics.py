"""Prometheus metrics of one replica, on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From a sub-millisecond lookup to a minutes-long generation, as the worker's.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class BridgeMetrics:
    """Throughput, dead letters, predict latency, batch sizes, commits and rebalances."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.consumed = Counter(
            "cormorant_kafka_bridge_messages_consumed",
            "Messages taken from the input topics into a batch.",
            registry=registry,
        )
        self.produced = Counter(
            "cormorant_kafka_bridge_messages_produced",
            "Predictions produced to the output topic and acknowledged.",
            registry=registry,
        )
        self.dead_lettered = Counter(
            "cormorant_kafka_bridge_messages_dlq",
            "Messages produced to the dead-letter topic after predict failed on them.",
            registry=registry,
        )
        self.predict_latency = Histogram(
            "cormorant_kafka_bridge_predict_duration_seconds",
            "Time predict took on one message, retries included.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "cormorant_kafka_bridge_batch_size",
            "Messages per batch (one fetch, one produce round, one commit).",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.batch_latency = Histogram(
            "cormorant_kafka_bridge_batch_duration_seconds",
            "Time from fetching a batch to committing its offsets.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.commit_failures = Counter(
            "cormorant_kafka_bridge_uncommitted_messages",
            "Messages produced whose offsets could not be committed (predicted again later).",
            registry=registry,
        )
        self.duplicates_avoided = Counter(
            "cormorant_kafka_bridge_duplicates_avoided",
            "Messages of in-flight batches finished and committed before a handover.",
            registry=registry,
        )
        self.rebalances = Counter(
            "cormorant_kafka_bridge_rebalances",
            "Partition assignments received (the first join included).",
            registry=registry,
        )
        self.assigned = Gauge(
            "cormorant_kafka_bridge_assigned_partitions",
            "Input partitions assigned to this replica.",
            registry=registry,
        )
        self.ready = Gauge(
            "cormorant_kafka_bridge_ready",
            "1 once the model imported and the consumer joined its group, 0 otherwise.",
            registry=registry,
        )
        self.logged = Counter(
            "cormorant_kafka_bridge_predictions_logged",
            "Predictions handed to the NATS publisher, by outcome (published, dropped).",
            ["outcome"],
            registry=registry,
        )
