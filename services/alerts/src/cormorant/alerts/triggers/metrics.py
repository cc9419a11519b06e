"""Prometheus metrics of the triggers, on the service's own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class TriggerMetrics:
    """Evaluations, firings and deliveries, by outcome."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.evaluations = Counter(
            "cormorant_alerts_evaluations",
            "Trigger evaluations, by outcome (fired, counting, recovered, idle, cooling_down).",
            ["outcome"],
            registry=registry,
        )
        self.firings = Counter(
            "cormorant_alerts_firings",
            "Trigger firings recorded, by action and severity.",
            ["action", "severity"],
            registry=registry,
        )
        self.deliveries = Counter(
            "cormorant_alerts_deliveries",
            "Attempts at a firing's action, by action and outcome (delivered, retry, failed).",
            ["action", "outcome"],
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "cormorant_alerts_delivery_seconds",
            "From a firing's evaluation to its delivered action, in seconds.",
            ["action"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800),
            registry=registry,
        )
