"""Reading ``PredictionLogged`` bodies on the ingest's hot path, without pydantic.

``read_prediction`` takes the usual shape of the event (what the worker, the gateway and the
kafka-bridge send) with pydantic-core's JSON parser, the one the model uses (orjson would turn
integers past 64 bits into floats), and a few type checks: a third of the cost of
``PredictionLogged.model_validate_json``. Anything unusual (a missing field, a string where a
number belongs, a timestamp that is not ISO 8601) returns None, and the event goes through the
model, which has the last word on what is valid.

``read_prediction_pack`` reads a replica's column pack (``bus.prediction_pack``) the same way,
checking each column in bulk: about a third of the cost again per event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic_core import from_json

from cormorant.common.bus import column_event_id, read_prediction_columns
from cormorant.common.events import (
    EVENT_TYPE_HEADER,
    EventDecodeError,
    InvalidSubjectToken,
    PredictionLogged,
)


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
    shadow: bool = False


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
    shadow = get("shadow", False)
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
        and type(shadow) is bool
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
        shadow,
    )


def read_prediction_pack(
    data: bytes, headers: Mapping[str, str]
) -> list[tuple[LoggedPrediction, Mapping[str, str]]] | None:
    """Each prediction of a column pack with its own headers, when all have the usual shape;
    None to read them one by one (``bus.unpack``), so that only the odd ones are refused."""
    try:
        columns = read_prediction_columns(data, headers)
    except EventDecodeError:
        return None  # unpack says what is wrong with it
    endpoint, endpoint_id, version = columns.endpoint, columns.endpoint_id, columns.version
    occurred_at = _utc(columns.occurred_at)
    if not (
        occurred_at is not None
        and type(endpoint) is str
        and type(version) is str
        and version
        and (endpoint_id is None or type(endpoint_id) is str)
        and all(type(r) is str and r for r in columns.request_id)
        and all(type(s) is int and 100 <= s <= 599 for s in columns.status)
        and all(type(x) in _NUMBERS and x >= 0 for x in columns.latency_ms)
        and all(type(t) in _NUMBERS and math.isfinite(t) for t in columns.received_at)
        and all(e is None or type(e) is str for e in columns.error)
        and all(t is None or type(t) is str for t in columns.trace_id)
    ):
        return None
    try:
        PredictionLogged.subject_filter(endpoint)
        received = [datetime.fromtimestamp(t, UTC) for t in columns.received_at]
    except (InvalidSubjectToken, OverflowError, OSError, ValueError):
        return None
    base = {EVENT_TYPE_HEADER: PredictionLogged.event_type}
    own = columns.headers
    every = (
        [base] * len(columns)
        if own is None
        else [base | h if type(h) is dict and h else base for h in own]
    )
    if own is not None and not all(all(type(v) is str for v in h.values()) for h in every):
        return None
    rows = zip(
        columns.request_id, received, columns.latency_ms, columns.status, columns.input,
        columns.output, columns.error, columns.trace_id, every, strict=True,
    )  # fmt: skip
    out: list[tuple[LoggedPrediction, Mapping[str, str]]] = []
    for index, row in enumerate(rows):
        request_id, at, latency, status, value, output, error, trace_id, own_headers = row
        event = LoggedPrediction(
            column_event_id(headers, index), occurred_at, request_id, endpoint, endpoint_id,
            version, value, output, error, status, float(latency), at, trace_id,
        )  # fmt: skip
        out.append((event, own_headers))
    return out


_NUMBERS = (int, float)


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
