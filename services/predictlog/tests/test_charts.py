"""Charts agree with the log: per-minute requests, latency percentiles, custom metrics."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import httpx

from cormorant.predictlog.testing import LogKit, minutes_ago

URL = "/api/v1/endpoints/iris/charts"


async def test_requests_per_minute_equal_the_rows_counted_per_minute(
    client: httpx.AsyncClient, kit: LogKit
) -> None:
    """Every point of the 1h chart is the number of log rows in that minute (zeros too)."""
    rng = random.Random(7)
    rows = []
    for minute in range(2, 55):
        for _ in range(rng.choice((0, 0, 1, 3, 17))):
            at = minutes_ago(minute) + timedelta(seconds=rng.uniform(-25, 25))
            rows.append(kit.row(len(rows), at, version=rng.choice((1, 2))))
    await kit.copy(rows)

    answer = await client.get(URL, params={"series": "requests_per_minute", "window": "1h"})
    assert answer.status_code == 200, answer.text
    chart = answer.json()
    assert (chart["series"], chart["window"]) == ("requests_per_minute", "1h")
    points = chart["points"]
    assert len(points) == 60
    starts = [datetime.fromisoformat(point["t"]) for point in points]
    assert starts == [starts[0] + timedelta(minutes=i) for i in range(60)]
    this_minute = datetime.now(UTC).replace(second=0, microsecond=0)
    assert starts[-1] in (this_minute, this_minute - timedelta(minutes=1))

    conn = await kit.connect()
    try:
        counted = await conn.fetch(
            "SELECT date_trunc('minute', received_at) AS t, count(*) AS n FROM predictions"
            " WHERE endpoint_id = $1 AND received_at >= $2 AND received_at < $3 GROUP BY 1",
            kit.endpoint_id,
            starts[0],
            starts[-1] + timedelta(minutes=1),
        )
    finally:
        await conn.close()
    per_minute = {row["t"]: row["n"] for row in counted}
    assert [point["value"] for point in points] == [per_minute.get(t, 0) for t in starts]
    assert sum(point["value"] for point in points) == len(rows) > 0

    by_version = await client.get(URL, params={"window": "1h", "version": "2"})
    assert sum(p["value"] for p in by_version.json()["points"]) == sum(
        1 for row in rows if row.version == 2
    )


async def test_latency_points_carry_percentiles(client: httpx.AsyncClient, kit: LogKit) -> None:
    """One minute with latencies 1..100 ms: p50 50.5, p95 95.05, p99 99.01 (interpolated)."""
    minute = minutes_ago(3).replace(second=0, microsecond=0)
    await kit.copy(
        kit.row(i, minute + timedelta(seconds=i / 4), latency_ms=float(i + 1)) for i in range(100)
    )
    answer = await client.get(URL, params={"series": "latency", "window": "15m"})
    assert answer.status_code == 200, answer.text
    points = answer.json()["points"]
    assert points == [
        {
            "t": minute.strftime("%Y-%m-%dT%H:%M:00Z"),
            "value": 50.5,
            "count": 100,
            "p50": 50.5,
            "p95": 95.05,
            "p99": 99.01,
        }
    ]


async def test_a_custom_metric_gives_count_avg_min_max_per_minute(
    client: httpx.AsyncClient,
) -> None:
    """Metrics posted from outside chart as count/avg/min/max in their minute."""
    for value in (0.5, 0.75, 1):
        answer = await client.post(
            "/api/v1/endpoints/iris/metrics", json={"key": "accuracy", "value": value}
        )
        assert answer.status_code == 202, answer.text
    posted = datetime.fromisoformat(answer.json()["logged_at"]).replace(second=0, microsecond=0)
    chart = (await client.get(URL, params={"series": "accuracy", "window": "24h"})).json()
    assert chart["series"] == "accuracy"
    # The three posts may straddle a minute boundary: add the points up.
    assert sum(point["count"] for point in chart["points"]) == 3
    assert min(point["min"] for point in chart["points"]) == 0.5
    assert max(point["max"] for point in chart["points"]) == 1.0
    last = chart["points"][-1]
    assert last["t"] == posted.strftime("%Y-%m-%dT%H:%M:00Z")
    if len(chart["points"]) == 1:
        assert last["avg"] == last["value"] == 0.75
    missing = (await client.get(URL, params={"series": "no-such-metric"})).json()
    assert missing["points"] == []


async def test_bad_windows_and_unknown_endpoints_are_refused(client: httpx.AsyncClient) -> None:
    """A window that is not 1m..7d in m/h/d is a 400; an unknown endpoint a 404."""
    for window in ("90s", "0m", "8d", "1w", "soon", "-1h"):
        answer = await client.get(URL, params={"window": window})
        assert answer.status_code == 400, window
        assert "window must be" in answer.json()["error"]["message"]
    answer = await client.get(URL, params={"version": "two"})
    assert answer.status_code == 400
    answer = await client.get("/api/v1/endpoints/nope/charts")
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "endpoint 'nope' not found"
