"""Custom metrics logged from predict code."""

from __future__ import annotations

from cormorant.common.predictor.context import InvalidMetric
from cormorant.common.predictor.context import log_metric as _to_worker_sink

MetricError = InvalidMetric


def log_metric(key: str, value: float) -> None:
    """Record a numeric metric for the endpoint whose predict code is running."""
    if not _to_worker_sink(key, value):
        raise RuntimeError(
            "Endpoint().log_metric() works inside predict code served by a Cormorant worker; "
            "from outside, name the endpoint: Endpoint('slug').log_metric(...)"
        )
