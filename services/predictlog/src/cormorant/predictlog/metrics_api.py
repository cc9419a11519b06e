"""``POST /api/v1/endpoints/{slug}/metrics``: a custom metric logged from outside predict code.

The metric is inserted into PostgreSQL directly rather than published on NATS: the rate is
a person's or a script's, the caller learns at once that it is stored (and charted), and a
metric may name no version, which a ``MetricLogged`` event cannot express. It gets an event
id like the ingested ones, so both kinds share the table's shape.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field, JsonValue
from starlette.responses import JSONResponse

from cormorant.common.errors import BadRequest
from cormorant.common.openapi import error_responses
from cormorant.common.predictor.context import validate_metric
from cormorant.predictlog.database import METRIC_COLUMNS, StoreDep, clean_text
from cormorant.predictlog.filters import parse_version

router = APIRouter(responses=error_responses(503))


class MetricIn(BaseModel):
    """A metric to log: ``value`` must be a finite number (not a boolean, not a string)."""

    model_config = ConfigDict(extra="forbid")

    key: JsonValue
    value: JsonValue
    version: JsonValue = None
    """The model version the metric is about (``3``), if any."""
    request_id: str | None = Field(default=None, max_length=200)
    """The prediction the metric is about, if any."""


def metric_version(value: JsonValue) -> int | None:
    """The version number a metric names (``3``, ``"3"`` or ``"v3"``), if any."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"version must be a version number such as 3, not {value!r}")
    return parse_version(str(value))


@router.post("/api/v1/endpoints/{slug}/metrics", status_code=202)
async def log_metric(slug: str, body: MetricIn, store: StoreDep) -> JSONResponse:
    """Store one metric for the endpoint; 400 unless its value is a finite number."""
    key, value = validate_metric(body.key, body.value)
    version = metric_version(body.version)
    endpoint_id = await store.endpoints.require(slug)
    event_id = uuid.uuid4().hex
    logged_at = datetime.now(UTC)
    request_id = None if body.request_id is None else clean_text(body.request_id)
    columns = ", ".join(METRIC_COLUMNS)
    await store.pool.execute(
        f"INSERT INTO metrics ({columns}) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        event_id,
        endpoint_id,
        version,
        clean_text(key),
        value,
        request_id,
        logged_at,
    )
    answer: dict[str, Any] = {
        "id": event_id,
        "endpoint": slug,
        "key": key,
        "value": value,
        "version": None if version is None else str(version),
        "logged_at": logged_at.isoformat(),
    }
    return JSONResponse(answer, status_code=202)
