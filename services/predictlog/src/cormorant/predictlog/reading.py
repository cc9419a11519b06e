"""Reading ``PredictionLogged`` bodies on the ingest's hot path, without pydantic.

``read_prediction`` takes the usual shape of the event (what the worker, the gateway and the
kafka-bridge send) with pydantic-core's JSON parser, the one the model uses (orjson would turn
integers past 64 bits into floats), and a few type checks: a third of the cost of
``PredictionLogged.model_validate_json``. Anything unusual (a missing field, a string where a
number belongs, a timestamp that is not ISO 8601) returns None, and the event goes through the
model, which has the last word on what is valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic_core import from_json

from cormorant.common.events import InvalidSubjectToken, PredictionLogged


@dataclass(slots=True)
class LoggedPrediction:
    """The fields of a ``PredictionLogged`` the ingest stores."""

    event_type: ClassVar[str] = PredictionLogged.event_type

    event_id: str
    occurred_at: datetime
    request_id: str
    endpoint: str
    endpoint_id: str | None
    version: str
    input: Any
    output: Any
    error: str | None
    status: int
    latency_ms: float
    received_at: datetime
    trace_id: str | None


def read_prediction(body: bytes) -> LoggedPrediction | None:
    """The prediction ``body`` holds in its usual shape; None to leave it to pydantic."""
    try:
        d = from_json(body)
    except ValueError:
        return None
    if type(d) is not dict or "input" not in d:
        return None
    get = d.get
    event_id, request_id, endpoint = get("event_id"), get("request_id"), get("endpoint")
    version, status, latency = get("version"), get("status"), get("latency_ms")
    endpoint_id, error, trace_id = get("endpoint_id"), get("error"), get("trace_id")
    if not (
        type(event_id) is str
        and 0 < len(event_id) <= 64
        and type(request_id) is str
        and request_id
        and type(endpoint) is str
        and type(version) is str
        and version
        and type(status) is int
        and 100 <= status <= 599
        and isinstance(latency, int | float)
        and not isinstance(latency, bool)
        and latency >= 0
        and (endpoint_id is None or type(endpoint_id) is str)
        and (error is None or type(error) is str)
        and (trace_id is None or type(trace_id) is str)
    ):
        return None
    occurred_at = _utc(get("occurred_at"))
    received_at = _utc(get("received_at"))
    if occurred_at is None or received_at is None:
        return None
    try:
        PredictionLogged.subject_filter(endpoint)  # the slug rule, as the model applies it
    except InvalidSubjectToken:
        return None
    return LoggedPrediction(
        event_id,
        occurred_at,
        request_id,
        endpoint,
        endpoint_id,
        version,
        get("input"),
        get("output"),
        error,
        status,
        float(latency),
        received_at,
        trace_id,
    )


def _utc(value: object) -> datetime | None:
    if type(value) is not str:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None  # the model refuses naive timestamps
    return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)
