"""``GET /api/v1/endpoints/{slug}/logs.csv``: every prediction, streamed with constant memory.

Rows are read page by page on the ``(received_at, request_id)`` key, oldest first, each
page in a short query of its own: memory stays at one page whatever the export's size, and
no transaction stays open while a slow client downloads. The export stops at the instant
it started, so rows arriving meanwhile cannot keep it running.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter
from starlette.responses import StreamingResponse

from cormorant.common.openapi import error_responses
from cormorant.predictlog.database import Store, StoreDep
from cormorant.predictlog.filters import LogFilters, LogFiltersDep, after, prediction_filter

router = APIRouter(responses=error_responses(503))

HEADER = (
    "request_id",
    "received_at",
    "version",
    "status",
    "latency_ms",
    "input",
    "output",
    "error",
    "trace_id",
    "shadow",
)

# A spreadsheet runs a cell starting with one of these as a formula (OWASP CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\x00")

_COLUMNS = (
    "request_id, received_at, version, status, round(latency_ms::numeric, 3)::float8,"
    " input::text, output::text, error, trace_id, shadow"
)


def escape_cell(value: str) -> str:
    """``value`` prefixed with a single quote if a spreadsheet would read it as a formula."""
    return "'" + value if value.startswith(FORMULA_TRIGGERS) else value


def compact_json(text: str | None) -> str:
    """PostgreSQL's JSON text without its spaces (empty for SQL NULL)."""
    if text is None:
        return ""
    try:
        return orjson.dumps(orjson.loads(text)).decode()
    except orjson.JSONDecodeError:
        # Beyond orjson's range (integers over 64 bits): the standard library keeps them.
        return json.dumps(json.loads(text), ensure_ascii=False, separators=(",", ":"))


def csv_cells(row: Iterable[Any]) -> list[str]:
    """One prediction as CSV cells, in ``HEADER`` order, escaped against formulas."""
    request_id, received_at, version, status, latency, inp, out, error, trace_id, shadow = row
    cells = (
        request_id,
        received_at.isoformat(),
        "" if version is None else str(version),
        str(status),
        repr(latency),
        compact_json(inp),
        compact_json(out),
        error or "",
        trace_id or "",
        "true" if shadow else "false",
    )
    return [escape_cell(cell) for cell in cells]


@router.get("/api/v1/endpoints/{slug}/logs.csv")
async def export_csv(slug: str, store: StoreDep, filters: LogFiltersDep) -> StreamingResponse:
    """The endpoint's predictions matching the filters as CSV, oldest first."""
    # Resolved before the response starts, so an unknown endpoint is a 404, not a broken file.
    endpoint_id = await store.endpoints.require(slug)
    return StreamingResponse(
        stream_csv(store, endpoint_id, filters),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{slug}-predictions.csv"'},
    )


async def stream_csv(
    store: Store, endpoint_id: uuid.UUID, filters: LogFilters
) -> AsyncIterator[bytes]:
    """The CSV document, one chunk per page of rows."""
    now = datetime.now(UTC)
    bounded = replace(filters, until=now if filters.until is None else min(filters.until, now))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(HEADER)
    yield _take(buffer)
    page = store.settings.export_page_rows
    position: tuple[datetime, str] | None = None
    while True:
        sql = prediction_filter(bounded, endpoint_id)
        if position is not None:
            after(sql, position, "asc")
        query = (
            f"SELECT {_COLUMNS} FROM predictions {sql.where()}"
            f" ORDER BY received_at, request_id LIMIT {sql.arg(page)}"
        )
        rows = await store.pool.fetch(query, *sql.args)
        if not rows:
            return
        writer.writerows(csv_cells(row) for row in rows)
        position = (rows[-1][1], rows[-1][0])
        yield _take(buffer)
        if len(rows) < page:
            return


def _take(buffer: io.StringIO) -> bytes:
    data = buffer.getvalue().encode()
    buffer.seek(0)
    buffer.truncate()
    return data
