"""The logs API: newest first, keyset pages, filters, and clear 4xx answers."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from cormorant.predictlog.testing import LogKit

BASE = datetime(2030, 1, 2, 3, 0, tzinfo=UTC)
URL = "/api/v1/endpoints/iris/logs"


async def all_pages(client: httpx.AsyncClient, **params: Any) -> list[list[dict[str, Any]]]:
    """Every page of a listing, following next_cursor."""
    pages = []
    cursor = None
    while True:
        answer = await client.get(URL, params=params | ({"cursor": cursor} if cursor else {}))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


async def test_pages_are_newest_first_and_cover_everything_once(
    client: httpx.AsyncClient, kit: LogKit
) -> None:
    """125 rows in pages of 50: 50, 50, 25, newest first, each row exactly once."""
    # Pairs of rows share an instant: the request id breaks the tie, across page borders too.
    await kit.copy(kit.row(i, BASE + timedelta(seconds=i // 2)) for i in range(125))
    pages = await all_pages(client, limit=50)
    assert [len(page) for page in pages] == [50, 50, 25]
    ids = [item["request_id"] for page in pages for item in page]
    assert ids == [kit.row(i, BASE).request_id for i in reversed(range(125))]


async def test_an_item_carries_the_prediction(client: httpx.AsyncClient, kit: LogKit) -> None:
    """Each item has the request id, version, input, output, error, status, latency, time."""
    await kit.copy(
        [
            kit.row(
                1,
                BASE,
                input=["I love it", {"deep": [1, None, True]}],
                output={"label": "positive", "score": 0.75},
                latency_ms=12.3,
                version=4,
                trace_id="0af7651916cd43dd8448eb211c80319c",
            )
        ]
    )
    answer = await client.get(URL)
    assert answer.status_code == 200
    assert answer.json() == {
        "items": [
            {
                "request_id": kit.row(1, BASE).request_id,
                "version": "4",
                "input": ["I love it", {"deep": [1, None, True]}],
                "output": {"label": "positive", "score": 0.75},
                "error": None,
                "status": 200,
                "latency_ms": 12.3,
                "received_at": "2030-01-02T03:00:00+00:00",
                "trace_id": "0af7651916cd43dd8448eb211c80319c",
                "shadow": False,
            }
        ],
        "next_cursor": None,
    }


async def test_filters_by_time_version_status_and_text(
    client: httpx.AsyncClient, kit: LogKit
) -> None:
    """since/until, version, status (code, class, ok/error) and q narrow the listing."""
    rows = [
        kit.row(0, BASE, version=1, input={"text": "hello world"}),
        kit.row(1, BASE + timedelta(minutes=1), version=2, output={"label": "Spam_100%"}),
        kit.row(2, BASE + timedelta(minutes=2), version=2, status=500, error="Boom: division"),
        kit.row(3, BASE + timedelta(minutes=3), version=1, status=422, error="bad input"),
    ]
    await kit.copy(rows)

    async def ids(**params: Any) -> list[int]:
        answer = await client.get(URL, params=params)
        assert answer.status_code == 200, answer.text
        return [int(item["request_id"].rsplit("-", 1)[1]) for item in answer.json()["items"]]

    assert await ids() == [3, 2, 1, 0]
    assert await ids(since="2030-01-02T03:01:00Z", until="2030-01-02T03:03:00Z") == [2, 1]
    assert await ids(since="2030-01-02T04:01:00+01:00") == [3, 2, 1]  # an offset is honoured
    assert await ids(since="2030-01-02T03:02:00") == [3, 2]  # no offset: UTC
    assert await ids(version="2") == [2, 1]
    assert await ids(version="v1") == [3, 0]
    assert await ids(status="500") == [2]
    assert await ids(status="4xx") == [3]
    assert await ids(status="error") == [3, 2]
    assert await ids(status="ok") == [1, 0]
    assert await ids(q="HELLO") == [0]  # input, case-insensitive
    assert await ids(q="spam_100%") == [1]  # output; % and _ are literal
    assert await ids(q="_100") == [1]
    assert await ids(q="100%x") == []
    assert await ids(q="division") == [2]  # error text
    assert await ids(q="input", version="1", status="4xx") == [3]


async def test_an_unknown_endpoint_is_a_404(client: httpx.AsyncClient) -> None:
    """A slug with no endpoint answers 404 with a message that names it."""
    answer = await client.get("/api/v1/endpoints/nope/logs")
    assert answer.status_code == 404
    assert answer.json()["error"] == {"code": "not_found", "message": "endpoint 'nope' not found"}


BAD = [
    ({"since": "yesterday"}, "since must be an ISO 8601 date-time"),
    ({"until": "2030-13-01"}, "until must be an ISO 8601 date-time"),
    ({"since": "2030-01-02T00:00Z", "until": "2030-01-01T00:00Z"}, "since must be earlier"),
    ({"version": "latest"}, "version must be a version number"),
    ({"status": "600"}, "status must be an HTTP status"),
    ({"status": "boom"}, "status must be an HTTP status"),
    ({"limit": "0"}, "limit must be between 1 and 1000"),
    ({"limit": "1001"}, "limit must be between 1 and 1000"),
    ({"limit": "many"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor is not one this API returned"),
    ({"q": "x" * 201}, "q is longer than 200 characters"),
]


async def test_bad_parameters_are_a_400_with_a_message(client: httpx.AsyncClient) -> None:
    """Each unusable parameter is refused with a message saying what is wrong."""
    for params, message in BAD:
        answer = await client.get(URL, params=params)
        assert answer.status_code == 400, (params, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "bad_request"
        assert message in error["message"], (params, error)


async def test_shadow_rows_are_ingested_filtered_exported_and_charted(
    client: httpx.AsyncClient, kit: LogKit
) -> None:
    """A live prediction and the shadow version's answer to the same request (as the gateway
    publishes it) are two rows under one request id: ``shadow`` tells them apart in the
    listing, its filter, the CSV export and the charts; a bad ``shadow`` value is a 400."""
    now = datetime.now(UTC)
    live = [kit.prediction(i, received_at=now - timedelta(seconds=30 - i)) for i in range(3)]
    mirrored = [
        kit.prediction(
            i,
            received_at=now - timedelta(seconds=29 - i),
            version="2",
            shadow=True,
            output={"label": "shadow"},
        )
        for i in range(2)
    ]
    await kit.publish([*live, *mirrored], columns=False)
    await kit.wait_rows(5, within=30)

    items = [item for page in await all_pages(client) for item in page]
    assert sorted((i["request_id"], i["shadow"]) for i in items) == sorted(
        [(e.request_id, False) for e in live] + [(e.request_id, True) for e in mirrored]
    )
    only_shadow = [item for page in await all_pages(client, shadow="true") for item in page]
    assert {i["version"] for i in only_shadow} == {"2"}
    assert {i["output"]["label"] for i in only_shadow} == {"shadow"}
    assert len(only_shadow) == 2
    only_live = [item for page in await all_pages(client, shadow="false") for item in page]
    assert len(only_live) == 3
    assert not any(i["shadow"] for i in only_live)

    refused = await client.get(URL, params={"shadow": "maybe"})
    assert refused.status_code == 400
    assert "shadow" in refused.json()["error"]["message"]

    export = await client.get(f"{URL}.csv", params={"shadow": "true"})
    assert export.status_code == 200
    header, *rows = list(csv.reader(io.StringIO(export.text)))
    assert header[-1] == "shadow"
    assert [row[-1] for row in rows] == ["true", "true"]

    charts = "/api/v1/endpoints/iris/charts"
    counts = {}
    for flag in ("true", "false"):
        answer = await client.get(charts, params={"window": "5m", "shadow": flag})
        assert answer.status_code == 200, answer.text
        counts[flag] = sum(point["value"] for point in answer.json()["points"])
    assert counts == {"true": 2, "false": 3}
