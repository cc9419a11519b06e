"""What predict code can reach while a worker runs it: its identity and the metric sink.

The worker sets both once per process; ``Endpoint().log_metric`` in the SDK calls
:func:`log_metric` (or :func:`current_metric_sink`) from the predict thread. Process-wide
state rather than context variables, because predict runs in pool threads that do not
inherit the event loop's context, and a worker process serves exactly one model version.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cormorant.common.errors import BadRequest

MetricSink = Callable[[str, float], None]
"""Receives one validated ``(key, value)``; must not block (it runs on the predict thread)."""

MAX_METRIC_KEY_LENGTH = 200


@dataclass(frozen=True, slots=True)
class PredictContext:
    """Which endpoint and model version the running predict code serves."""

    endpoint: str
    """Slug of the endpoint."""

    version: str
    """Model version of the endpoint this process serves."""


class InvalidMetric(BadRequest):
    """A logged metric has an unusable key or a non-numeric value."""

    code = "invalid_metric"


_lock = threading.Lock()
_sink: MetricSink | None = None
_context: PredictContext | None = None


def set_metric_sink(sink: MetricSink | None) -> None:
    """Route metrics logged by predict code to ``sink``; ``None`` stops routing."""
    global _sink
    with _lock:
        _sink = sink


def current_metric_sink() -> MetricSink | None:
    """The sink set by the worker, or ``None`` outside a worker."""
    with _lock:
        return _sink


def set_predict_context(context: PredictContext | None) -> None:
    """Record which endpoint and version this process serves."""
    global _context
    with _lock:
        _context = context


def current_predict_context() -> PredictContext | None:
    """The endpoint and version this process serves, or ``None`` outside a worker."""
    with _lock:
        return _context


def validate_metric(key: Any, value: Any) -> tuple[str, float]:
    """``(key, value)`` as a non-empty string and a finite float, or ``InvalidMetric``."""
    if not isinstance(key, str) or not key.strip():
        raise InvalidMetric(f"a metric key must be a non-empty string, not {key!r}")
    if len(key) > MAX_METRIC_KEY_LENGTH:
        raise InvalidMetric(f"metric key is longer than {MAX_METRIC_KEY_LENGTH} characters")
    # bool is an int to Python but never a measurement; numpy.bool_ is refused the same way.
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b":
        raise InvalidMetric(f"metric {key!r}: value must be a number, not a boolean")
    try:
        number = float(value) if _is_number(value) else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None:
        raise InvalidMetric(f"metric {key!r}: value must be a number, not {type(value).__name__}")
    if not math.isfinite(number):
        raise InvalidMetric(f"metric {key!r}: value must be finite, not {number}")
    return key, number


def log_metric(key: Any, value: Any) -> bool:
    """Validate and hand one metric to the current sink; ``False`` when no sink is set."""
    name, number = validate_metric(key, value)
    sink = current_metric_sink()
    if sink is None:
        return False
    sink(name, number)
    return True


def _is_number(value: Any) -> bool:
    if isinstance(value, int | float):
        return True
    # numpy numbers and Decimal: numeric types that are not str (float("1") would accept text),
    # and not arrays, whose float() works only by accident of having one element.
    if isinstance(value, str | bytes) or getattr(value, "ndim", 0) != 0:
        return False
    return hasattr(value, "__float__")
