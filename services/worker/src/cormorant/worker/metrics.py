"""Prometheus metrics of one worker process, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Predictions range from sub-millisecond lookups to minutes-long generations.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip


class WorkerMetrics:
    """Requests by status, latency, in-flight, model readiness and event publishing."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "cormorant_worker_requests",
            "Predict requests answered, by HTTP status.",
            ["status"],
            registry=registry,
        )
        self.latency = Histogram(
            "cormorant_worker_request_duration_seconds",
            "Time from receiving a predict request to its last byte.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "cormorant_worker_requests_in_flight",
            "Predict requests (and streams) being answered now.",
            registry=registry,
        )
        self.model_ready = Gauge(
            "cormorant_worker_model_ready",
            "1 once the model imported in this process, 0 while loading or after a failure.",
            registry=registry,
        )
        self.predict_threads = Gauge(
            "cormorant_worker_predict_threads",
            "Threads of this process that run predict.",
            registry=registry,
        )
        self.metrics_published = Counter(
            "cormorant_worker_logged_metrics",
            "Metrics logged by predict code, by outcome (published, dropped).",
            ["outcome"],
            registry=registry,
        )
        self.predictions_logged = Counter(
            "cormorant_worker_logged_predictions",
            "Predictions handed to the event publisher (published) or not (dropped: no NATS "
            "connection yet, or the publisher's buffer was full).",
            ["outcome"],
            registry=registry,
        )
        # Children looked up once: labels() takes a lock and hashes on every call.
        self._by_status: dict[int, Counter] = {}

    def observe(self, status: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = self.requests.labels(status=str(status))
        child.inc()
        self.latency.observe(seconds)
