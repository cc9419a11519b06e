"""The metric sink and identity predict code sees inside a worker."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from cormorant.common.errors import BadRequest
from cormorant.common.predictor import (
    InvalidMetric,
    PredictContext,
    current_metric_sink,
    current_predict_context,
    log_metric,
    set_metric_sink,
    set_predict_context,
    validate_metric,
)


@pytest.fixture(autouse=True)
def _clean_context() -> Iterator[None]:
    yield
    set_metric_sink(None)
    set_predict_context(None)


def test_outside_a_worker_there_is_no_sink() -> None:
    """Without a worker, no sink is set and log_metric reports it was not taken."""
    assert current_metric_sink() is None
    assert log_metric("accuracy", 0.9) is False


def test_logged_metrics_reach_the_sink_from_any_thread() -> None:
    """A sink set by the worker receives metrics logged on predict threads."""
    received: list[tuple[str, float]] = []
    set_metric_sink(lambda key, value: received.append((key, value)))
    threads = [threading.Thread(target=log_metric, args=("k", i)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(received) == [("k", float(i)) for i in range(8)]


def test_predict_context_names_endpoint_and_version() -> None:
    """The worker records which endpoint and version the process serves."""
    set_predict_context(PredictContext(endpoint="churn", version="3"))
    assert current_predict_context() == PredictContext("churn", "3")


@pytest.mark.parametrize("value", [1, 2.5, np.float32(0.25), np.int64(4), Decimal("1.5")])
def test_numeric_values_are_accepted_as_floats(value: Any) -> None:
    """ints, floats, numpy numbers and Decimals are numbers."""
    key, number = validate_metric("m", value)
    assert (key, number) == ("m", float(value))


@pytest.mark.parametrize(
    "value", [True, False, np.bool_(True), "1.0", None, [1.0], np.array([1.0]), float("nan")]
)
def test_non_numeric_values_are_refused(value: Any) -> None:
    """Booleans, strings, lists, arrays and NaN are refused with a 400 naming the metric."""
    with pytest.raises(InvalidMetric, match="metric 'm'") as caught:
        validate_metric("m", value)
    assert isinstance(caught.value, BadRequest)


@pytest.mark.parametrize("key", ["", "  ", 3, None])
def test_bad_keys_are_refused(key: Any) -> None:
    """A metric key must be a non-empty string."""
    with pytest.raises(InvalidMetric, match="key"):
        validate_metric(key, 1.0)
