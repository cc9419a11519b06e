"""``GET /api/v1/endpoints/{slug}/charts``: per-minute series for the endpoint's charts.

- ``requests_per_minute``: predictions per minute, every minute of the window (zeros too);
- ``latency``: p50, p95 and p99 of ``latency_ms`` per minute that had requests;
- any other name: the custom metric of that key, count/avg/min/max per minute it was logged.

``shadow=true`` charts only the shadow version's answers to mirrored requests, ``false`` only
the live ones (both by default), so a shadow version's latency can be set beside the live one.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query
from starlette.responses import Response

from cormorant.common.errors import BadRequest
from cormorant.common.openapi import error_responses
from cormorant.common.predictor.context import MAX_METRIC_KEY_LENGTH
from cormorant.predictlog.database import Store, StoreDep
from cormorant.predictlog.filters import parse_shadow, parse_version

router = APIRouter(responses=error_responses(503))

REQUESTS = "requests_per_minute"
LATENCY = "latency"
MAX_WINDOW = timedelta(days=7)

_MINUTE = timedelta(minutes=1)
_WINDOW = re.compile(r"^(\d{1,6})([mhd])$")
_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}


@dataclass(slots=True, frozen=True)
class Window:
    """The minutes a chart covers: ``first`` to ``last`` inclusive (the current one last)."""

    first: datetime
    last: datetime

    @property
    def end(self) -> datetime:
        """The instant after the last minute."""
        return self.last + _MINUTE

    def minutes(self) -> list[datetime]:
        """Every minute of the window, in order."""
        count = int((self.last - self.first) / _MINUTE) + 1
        return [self.first + i * _MINUTE for i in range(count)]


def parse_window(value: str, *, now: datetime | None = None) -> Window:
    """The last ``15m``/``1h``/``24h``/``7d`` up to the current minute; ``BadRequest`` if bad."""
    match = _WINDOW.match(value.strip())
    span = int(match[1]) * _UNITS[match[2]] if match else None
    if span is None or not _MINUTE <= span <= MAX_WINDOW:
        raise BadRequest(
            "window must be a number of minutes, hours or days such as 15m, 1h, 24h or 7d,"
            f" from 1m to 7d, not {value!r}"
        )
    last = (now or datetime.now(UTC)).replace(second=0, microsecond=0)
    return Window(first=last - span + _MINUTE, last=last)


def minute_label(moment: datetime) -> str:
    """An ISO 8601 minute in UTC, e.g. ``2030-01-02T03:04:00Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:00Z")


@router.get("/api/v1/endpoints/{slug}/charts")
async def chart(
    slug: str,
    store: StoreDep,
    series: Annotated[
        str, Query(description="requests_per_minute, latency, or a custom metric's key.")
    ] = REQUESTS,
    window: Annotated[str, Query(description="How far back: 15m, 1h, 24h, 7d...")] = "1h",
    version: Annotated[str | None, Query(description="Only this model version.")] = None,
    shadow: Annotated[
        str | None,
        Query(description="true: only shadow answers to mirrored requests; false: only live."),
    ] = None,
) -> Response:
    """Per-minute points of one series over the window."""
    span = parse_window(window)
    number = parse_version(version)
    mirrored = parse_shadow(shadow)
    if not series or len(series) > MAX_METRIC_KEY_LENGTH:
        raise BadRequest(f"series must be 1 to {MAX_METRIC_KEY_LENGTH} characters")
    endpoint_id = await store.endpoints.require(slug)
    if series == REQUESTS:
        points = await requests_per_minute(store, endpoint_id, span, number, mirrored)
    elif series == LATENCY:
        points = await latency(store, endpoint_id, span, number, mirrored)
    else:
        points = await metric(store, endpoint_id, series, span, number)
    body = {"series": series, "window": window.strip(), "points": points}
    return Response(orjson.dumps(body), media_type="application/json")


def _scope(
    endpoint_id: uuid.UUID,
    span: Window,
    version: int | None,
    column: str,
    shadow: bool | None = None,
) -> tuple[str, list[Any]]:
    args: list[Any] = [endpoint_id, span.first, span.end]
    where = f"endpoint_id = $1 AND {column} >= $2 AND {column} < $3"
    if version is not None:
        args.append(version)
        where += f" AND version = ${len(args)}"
    if shadow is not None:
        where += " AND shadow" if shadow else " AND NOT shadow"
    return where, args


async def requests_per_minute(
    store: Store,
    endpoint_id: uuid.UUID,
    span: Window,
    version: int | None,
    shadow: bool | None = None,
) -> list[dict[str, Any]]:
    """Predictions per minute, zero for minutes without any."""
    where, args = _scope(endpoint_id, span, version, "received_at", shadow)
    rows = await store.pool.fetch(
        f"SELECT date_trunc('minute', received_at) AS t, count(*) AS n FROM predictions"
        f" WHERE {where} GROUP BY 1",
        *args,
    )
    counts = {row["t"]: row["n"] for row in rows}
    return [{"t": minute_label(t), "value": counts.get(t, 0)} for t in span.minutes()]


async def latency(
    store: Store,
    endpoint_id: uuid.UUID,
    span: Window,
    version: int | None,
    shadow: bool | None = None,
) -> list[dict[str, Any]]:
    """Latency percentiles (ms) per minute that had predictions; ``value`` is the p50."""
    where, args = _scope(endpoint_id, span, version, "received_at", shadow)
    rows = await store.pool.fetch(
        "SELECT date_trunc('minute', received_at) AS t, count(*) AS n,"
        " percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms) AS p"
        f" FROM predictions WHERE {where} GROUP BY 1 ORDER BY 1",
        *args,
    )
    points = []
    for row in rows:
        p50, p95, p99 = (round(value, 3) for value in row["p"])
        points.append(
            {
                "t": minute_label(row["t"]),
                "value": p50,
                "count": row["n"],
                "p50": p50,
                "p95": p95,
                "p99": p99,
            }
        )
    return points


async def metric(
    store: Store, endpoint_id: uuid.UUID, key: str, span: Window, version: int | None
) -> list[dict[str, Any]]:
    """A custom metric's count, average, minimum and maximum per minute it was logged."""
    where, args = _scope(endpoint_id, span, version, "logged_at")
    args.append(key)
    rows = await store.pool.fetch(
        "SELECT date_trunc('minute', logged_at) AS t, count(*) AS n, avg(value) AS avg,"
        f" min(value) AS min, max(value) AS max FROM metrics WHERE {where}"
        f" AND key = ${len(args)} GROUP BY 1 ORDER BY 1",
        *args,
    )
    return [
        {
            "t": minute_label(row["t"]),
            "value": row["avg"],
            "count": row["n"],
            "avg": row["avg"],
            "min": row["min"],
            "max": row["max"],
        }
        for row in rows
    ]
