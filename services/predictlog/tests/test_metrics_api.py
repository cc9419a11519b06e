"""POST /api/v1/endpoints/{slug}/metrics: finite numbers are stored, anything else is a 400."""

from __future__ import annotations

import httpx

from cormorant.predictlog.testing import LogKit

URL = "/api/v1/endpoints/iris/metrics"


async def test_a_number_is_accepted_and_stored(client: httpx.AsyncClient, kit: LogKit) -> None:
    """202 with what was stored; the row is in ``metrics`` under the endpoint's id."""
    answer = await client.post(URL, json={"key": "accuracy", "value": 0.93, "version": "3"})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert (body["endpoint"], body["key"], body["value"], body["version"]) == (
        "iris",
        "accuracy",
        0.93,
        "3",
    )
    assert (await client.post(URL, json={"key": "count", "value": 7})).status_code == 202
    conn = await kit.connect()
    try:
        rows = await conn.fetch(
            "SELECT event_id, endpoint_id, version, key, value FROM metrics ORDER BY id"
        )
    finally:
        await conn.close()
    assert [tuple(row.values()) for row in rows] == [
        (body["id"], kit.endpoint_id, 3, "accuracy", 0.93),
        (rows[1]["event_id"], kit.endpoint_id, None, "count", 7.0),
    ]


async def test_anything_but_a_finite_number_is_a_400(client: httpx.AsyncClient) -> None:
    """Strings, booleans, null, NaN, infinities, bad keys and versions are refused clearly."""
    cases = [
        ({"key": "accuracy", "value": "0.9"}, "value must be a number, not str"),
        ({"key": "accuracy", "value": True}, "value must be a number, not a boolean"),
        ({"key": "accuracy", "value": None}, "value must be a number, not NoneType"),
        ({"key": "accuracy", "value": [1]}, "value must be a number, not list"),
        ({"key": "accuracy", "value": {"v": 1}}, "value must be a number, not dict"),
        ({"key": "", "value": 1}, "a metric key must be a non-empty string"),
        ({"key": 5, "value": 1}, "a metric key must be a non-empty string"),
        ({"key": "k" * 201, "value": 1}, "longer than 200 characters"),
        ({"value": 1}, "key: Field required"),
        ({"key": "accuracy"}, "value: Field required"),
        ({"key": "accuracy", "value": 1, "extra": 1}, "extra: Extra inputs are not permitted"),
        ({"key": "accuracy", "value": 1, "version": "latest"}, "version must be a version"),
        (
            {"key": "accuracy", "value": 1, "version": True},
            "version must be a version number such as 3, not True",
        ),
    ]
    for body, message in cases:
        answer = await client.post(URL, json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert message in answer.json()["error"]["message"], (body, answer.json())
    for raw in (b'{"key": "a", "value": NaN}', b'{"key": "a", "value": 1e999}'):
        answer = await client.post(URL, content=raw, headers={"content-type": "application/json"})
        assert answer.status_code == 400, raw
        assert "value must be finite" in answer.json()["error"]["message"]
    answer = await client.post(
        URL, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400


async def test_an_unknown_endpoint_is_a_404(client: httpx.AsyncClient) -> None:
    """Metrics of an endpoint that does not exist are refused with a 404."""
    answer = await client.post("/api/v1/endpoints/nope/metrics", json={"key": "k", "value": 1})
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == "endpoint 'nope' not found"
