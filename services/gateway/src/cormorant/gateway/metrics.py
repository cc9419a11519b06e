"""Prometheus metrics of the gateway, on the app's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# From sub-millisecond no-op models to minutes-long generations.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip


class GatewayMetrics:
    """Predict requests by endpoint, version and status; latency; in-flight; upkeep counters."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "cormorant_gateway_requests",
            "Predict requests answered, by endpoint, version and HTTP status.",
            ["endpoint", "version", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "cormorant_gateway_request_duration_seconds",
            "Time from receiving a predict request to sending its last byte, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.in_flight_now = 0
        """Predict requests being answered now: a plain int on the hot path, read at scrape."""
        self.in_flight = Gauge(
            "cormorant_gateway_requests_in_flight",
            "Predict requests being answered now.",
            registry=registry,
        )
        self.in_flight.set_function(lambda: self.in_flight_now)
        self.connect_failures = Counter(
            "cormorant_gateway_connect_failures",
            "Connections to replicas that could not be made (the request went elsewhere).",
            ["endpoint"],
            registry=registry,
        )
        self.routing_loads = Counter(
            "cormorant_gateway_routing_loads",
            "Routing table loads from the deployer, by scope (all, endpoint) and outcome.",
            ["scope", "outcome"],
            registry=registry,
        )
        self.forwarded = Counter(
            "cormorant_gateway_forwarded_requests",
            "Management calls forwarded, by service and HTTP status.",
            ["service", "status"],
            registry=registry,
        )
        self.predictions_logged = Counter(
            "cormorant_gateway_logged_predictions",
            "Predict requests no worker answered, handed to the event publisher (published) "
            "or not (dropped: no NATS connection yet, or the publisher's buffer was full).",
            ["outcome"],
            registry=registry,
        )
        self.shadow_requests = Counter(
            "cormorant_gateway_shadow_requests",
            "Live requests mirrored to a shadow version, by outcome: answered (by a shadow "
            "replica, any status), failed (no answer) or dropped (the mirror's queue was full).",
            ["outcome"],
            registry=registry,
        )
        # Children looked up once: labels() takes a lock and hashes on every call.
        self._requests: dict[tuple[str, str, int], Counter] = {}
        self._latency: dict[str, Histogram] = {}

    def observe(self, endpoint: str, version: str, status: int, seconds: float) -> None:
        """Count one answered predict request and its duration."""
        key = (endpoint, version, status)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.requests.labels(endpoint, version, str(status))
        counter.inc()
        histogram = self._latency.get(endpoint)
        if histogram is None:
            histogram = self._latency[endpoint] = self.latency.labels(endpoint)
        histogram.observe(seconds)
