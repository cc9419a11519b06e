"""The ingest's quick reading of predictions agrees with the event model, or defers to it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from cormorant.common.events import PredictionLogged
from cormorant.predictlog.reading import read_prediction

USUAL: dict[str, Any] = {
    "event_id": "a" * 32,
    "occurred_at": "2026-11-25T10:00:00.123456Z",
    "request_id": "req-1",
    "endpoint": "iris",
    "endpoint_id": "8b0f4a9e-7c43-4bb6-9d6e-5a1f2c3d4e5f",
    "version": "3",
    "input": [[5.1, 3.5], {"text": "é\u0000"}],
    "output": {"label": "setosa"},
    "error": None,
    "status": 200,
    "latency_ms": 1.25,
    "received_at": "2026-11-25T10:00:00.100000Z",
    "trace_id": "0af7651916cd43dd8448eb211c80319c",
}
FIELDS = (
    "event_id", "occurred_at", "request_id", "endpoint", "endpoint_id", "version", "input",
    "output", "error", "status", "latency_ms", "received_at", "trace_id",
)  # fmt: skip


def body(**changes: Any) -> bytes:
    values = {key: value for key, value in (USUAL | changes).items() if value is not ...}
    return orjson.dumps(values)


@pytest.mark.parametrize(
    "data",
    [
        body(),
        body(endpoint_id=None, trace_id=None, output=None, error="ValueError: boom", status=500),
        body(received_at="2026-11-25T12:00:00+02:00", latency_ms=3),  # offset, integer latency
        body(output=..., error=..., trace_id=..., endpoint_id=...),  # defaults
        body(input=0).replace(b'"input":0', b'"input":' + str(10**30).encode()),  # exact
        body(unknown_field=1),  # ignored, as the model ignores it
        body(input="text"),
    ],
)
def test_the_usual_shape_reads_as_the_model_reads_it(data: bytes) -> None:
    quick = read_prediction(data)
    model = PredictionLogged.model_validate_json(data)
    assert quick is not None
    for name in FIELDS:
        assert getattr(quick, name) == getattr(model, name), name
    assert quick.received_at.tzinfo is not None
    assert quick.received_at.utcoffset() == model.received_at.utcoffset()


@pytest.mark.parametrize(
    "data",
    [
        body().replace(b'"status":200', b'"status":"200"'),  # lax strings: the model's call
        body(received_at=1_764_064_800),  # a POSIX timestamp
        b"[1, 2]",
        b"not json",
    ],
)
def test_anything_unusual_is_left_to_the_model(data: bytes) -> None:
    assert read_prediction(data) is None


@pytest.mark.parametrize(
    "data",
    [
        body(endpoint="Not A Slug"),
        body(status=99),
        body(status=True),
        body(latency_ms=-1),
        body(request_id=""),
        body(version=""),
        body(event_id="x" * 65),
        body(received_at="2026-11-25T10:00:00"),  # naive
        body(request_id=...),
        body(input=...),  # required, even if null
    ],
)
def test_what_the_model_refuses_is_never_read(data: bytes) -> None:
    assert read_prediction(data) is None
    with pytest.raises(ValidationError):
        PredictionLogged.model_validate_json(data)
