"""``GET /api/v1/endpoints/{slug}/logs``: an endpoint's predictions, newest first, paged."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from cormorant.common.errors import BadRequest
from cormorant.common.openapi import error_responses
from cormorant.predictlog.database import StoreDep
from cormorant.predictlog.filters import (
    LogFiltersDep,
    after,
    decode_cursor,
    encode_cursor,
    prediction_filter,
)

router = APIRouter(responses=error_responses(503))

DEFAULT_LIMIT = 50

# JSON columns come back as text and go out as orjson fragments: never parsed here.
# latency_ms is a REAL; rounded to the microsecond it reads as it was logged.
COLUMNS = (
    "request_id, version, input::text AS input, output::text AS output, error, status,"
    " round(latency_ms::numeric, 3)::float8 AS latency_ms, received_at, trace_id, shadow"
)


@router.get("/api/v1/endpoints/{slug}/logs")
async def list_logs(
    slug: str,
    store: StoreDep,
    filters: LogFiltersDep,
    limit: Annotated[int, Query(description="Predictions per page.")] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page.")] = None,
) -> Response:
    """A page of the endpoint's predictions, newest first, and the cursor of the next one."""
    most = store.settings.logs_max_limit
    if not 1 <= limit <= most:
        raise BadRequest(f"limit must be between 1 and {most}, not {limit}")
    position = decode_cursor(cursor) if cursor else None
    endpoint_id = await store.endpoints.require(slug)
    sql = prediction_filter(filters, endpoint_id)
    if position is not None:
        after(sql, position, "desc")
    query = (
        f"SELECT {COLUMNS} FROM predictions {sql.where()}"
        f" ORDER BY received_at DESC, request_id DESC LIMIT {sql.arg(limit + 1)}"
    )
    rows = await store.pool.fetch(query, *sql.args)
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(last["received_at"], last["request_id"])
    body = {"items": [item(row) for row in page], "next_cursor": next_cursor}
    return Response(orjson.dumps(body), media_type="application/json")


def item(row: Any) -> dict[str, Any]:
    """One prediction as the API shows it."""
    version = row["version"]
    return {
        "request_id": row["request_id"],
        "version": None if version is None else str(version),
        "input": _json(row["input"]),
        "output": _json(row["output"]),
        "error": row["error"],
        "status": row["status"],
        "latency_ms": row["latency_ms"],
        "received_at": row["received_at"],
        "trace_id": row["trace_id"],
        "shadow": row["shadow"],
    }


def _json(text: str | None) -> orjson.Fragment | None:
    return None if text is None else orjson.Fragment(text)
