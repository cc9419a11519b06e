"""Cormorant's Python SDK and ``cormorant`` command line."""

from cormorant.sdk.client import Client, CormorantAPIError, Endpoint
from cormorant.sdk.metrics import MetricError, log_metric

__all__ = ["Client", "CormorantAPIError", "Endpoint", "MetricError", "log_metric"]
