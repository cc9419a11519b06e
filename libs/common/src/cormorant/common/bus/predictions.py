"""``PredictionLogged`` bodies on the request path: written by orjson, the model as fallback.

Building and serializing the pydantic model costs a replica about 8 µs per prediction, a
tenth of what a no-op prediction costs it in all; orjson writes the same body in about 1 µs.
The caller vouches for what the model would check (a slug, a status between 100 and 599, a
latency not below zero, aware timestamps) because it builds those values itself;
``PredictionLogged`` still decodes every body, on the consumer's side.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from cormorant.common.events import PredictionLogged


def prediction_body(
    *,
    event_id: str,
    occurred_at: datetime,
    request_id: str,
    endpoint: str,
    endpoint_id: str | None,
    version: str,
    input: Any,
    output: Any,
    error: str | None,
    status: int,
    latency_ms: float,
    received_at: datetime,
    trace_id: str | None,
) -> bytes:
    """The JSON body of the ``PredictionLogged`` with these fields, in the model's field order.

    A value orjson cannot write (an integer past 64 bits, a dict with non-string keys...)
    sends the event through the model, which writes it or raises ``ValueError`` if it is
    not JSON.
    """
    fields = {
        "event_id": event_id,
        "occurred_at": occurred_at,
        "request_id": request_id,
        "endpoint": endpoint,
        "endpoint_id": endpoint_id,
        "version": version,
        "input": input,
        "output": output,
        "error": error,
        "status": status,
        "latency_ms": latency_ms,
        "received_at": received_at,
        "trace_id": trace_id,
    }
    try:
        return orjson.dumps(fields, option=orjson.OPT_UTC_Z)
    except TypeError:
        return PredictionLogged(**fields).encode()
