"""The Open Inference Protocol on the predict path, and the load reports for the autoscaler."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gateway_testkit import Gateway, Worker, demo_route, eventually

from cormorant.common.events import LoadReported, decode
from cormorant.gateway.inference import OutputTensor, stack, stack_outputs


@pytest.fixture
async def gateway(workers: dict[str, Worker], start_gateway: Any) -> AsyncIterator[Gateway]:
    """A gateway routing ``demo`` to r1 and r2 (v1), reporting load every 0.2 s."""
    async with start_gateway([demo_route(workers)], load_report_s=0.2) as gw:
        yield gw


async def test_v2_health_metadata_and_ready(gateway: Gateway) -> None:
    """Health needs no token; model metadata and readiness need the endpoint's token."""
    assert (await gateway.http.get("/v2/health/live")).json() == {"live": True}
    assert (await gateway.http.get("/v2/health/ready")).json() == {"ready": True}
    assert (await gateway.http.get("/v2/models/demo")).status_code == 401
    other = await gateway.http.get("/v2/models/demo", headers=gateway.auth("other"))
    assert other.status_code == 403
    metadata = (await gateway.http.get("/v2/models/demo", headers=gateway.auth())).json()
    assert metadata["name"] == "demo"
    assert metadata["versions"] == ["v1"]
    assert metadata["platform"] == "cormorant"
    # The toolbox's predict(*args): one input of any width per row.
    assert metadata["inputs"] == [{"name": "args", "datatype": "BYTES", "shape": [-1, -1]}]
    ready = await gateway.http.get("/v2/models/demo/ready", headers=gateway.auth())
    assert ready.json() == {"name": "demo", "ready": True}


async def test_v2_infer_reshapes_inputs_and_types_the_output(gateway: Gateway) -> None:
    """The first dimension is the batch: a row of one input is spread, several inputs are the
    arguments in order; the rows' predictions are stacked and typed."""
    url = "/v2/models/demo/infer"
    one = await gateway.http.post(
        url,
        json={
            "id": "req-1",
            "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [1.0, 2, 3, 4]}],
        },
        headers=gateway.auth(),
    )
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["model_name"] == "demo"
    assert body["model_version"] == "v1"
    assert body["id"] == "req-1"
    # Rows [1, 2] and [3, 4]: predict(1, 2) and predict(3, 4), which echo their arguments.
    assert body["outputs"] == [
        {"name": "prediction", "shape": [2, 2], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}
    ]
    assert one.headers["x-cormorant-version"] == "v1"
    several = await gateway.http.post(
        url,
        json={
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "INT64", "data": [1, 2]},
                {"name": "b", "shape": [2], "datatype": "INT64", "data": [3, 4]},
            ]
        },
        headers=gateway.auth(),
    )
    output = several.json()["outputs"][0]
    # Row 0 is predict(1, 3), row 1 predict(2, 4).
    assert output == {
        "name": "prediction",
        "shape": [2, 2],
        "datatype": "INT64",
        "data": [1, 3, 2, 4],
    }
    assert several.json()["id"] == several.headers["x-request-id"]
    text = await gateway.http.post(
        url,
        json={"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]},
        headers=gateway.auth(),
    )
    assert text.json()["outputs"][0] == {
        "name": "prediction",
        "shape": [1],
        "datatype": "BYTES",
        "data": ["hello"],
    }
    untyped = await gateway.http.post(
        url,
        content=b'{"inputs": [{"name": "t", "shape": [], "datatype": "INT64", "data": [7]}]}',
        headers=gateway.auth(),
    )
    assert untyped.status_code == 200, untyped.text
    assert untyped.json()["outputs"][0]["data"] == [7]
    bad = await gateway.http.post(
        url,
        json={"inputs": [{"name": "x", "shape": [3], "datatype": "FP64", "data": [1.0]}]},
        headers=gateway.auth(),
    )
    assert bad.status_code == 400
    assert "shape [3] holds 3 value(s), but data has 1" in bad.json()["error"]
    unauthorized = await gateway.http.post(url, json={"inputs": []})
    assert unauthorized.status_code == 401


async def test_v2_body_limit(workers: dict[str, Worker], start_gateway: Any) -> None:
    """The predict body limit holds for /v2 infer too."""
    async with start_gateway([demo_route(workers)], max_body_bytes=500) as gateway:
        data = list(range(300))
        response = await gateway.http.post(
            "/v2/models/demo/infer",
            json={"inputs": [{"name": "x", "shape": [300], "datatype": "INT64", "data": data}]},
            headers=gateway.auth(),
        )
        assert response.status_code == 413
        assert "500 bytes" in response.json()["error"]


def test_output_datatypes() -> None:
    """BOOL, INT64, FP64 and BYTES read from the rows' values; structures one JSON per row."""
    assert stack("p", [True, False]) == OutputTensor("p", "BOOL", [2], [True, False])
    assert stack("p", [1, 2.5]).datatype == "FP64"
    assert stack("p", [1, 2.5]).data == [1.0, 2.5]
    assert stack("p", [[1], [2]]).shape == [2, 1]
    ragged = stack("p", [[1], [2, 3]])
    assert (ragged.datatype, ragged.shape, ragged.data) == ("BYTES", [2], ["[1]", "[2,3]"])
    assert stack("p", [["a", 1]]).data == ['["a",1]']
    assert stack("p", [True, 1]).datatype == "BYTES"
    assert stack("p", [2**64]).datatype == "BYTES"
    outputs = stack_outputs([{"label": "x", "p": 0.5}, {"label": "y", "p": 1}])
    assert outputs == [
        OutputTensor("label", "BYTES", [2], ["x", "y"]),
        OutputTensor("p", "FP64", [2], [0.5, 1.0]),
    ]
    # Keys that differ between rows: one BYTES output of JSON objects.
    mixed = stack_outputs([{"a": 1}, {"b": 2}])
    assert mixed == [OutputTensor("prediction", "BYTES", [2], ['{"a":1}', '{"b":2}'])]


async def test_load_reports_time_averaged_in_flight(gateway: Gateway) -> None:
    """While requests are in flight, LoadReported carries each replica's average concurrency."""
    reports: list[LoadReported] = []

    async def on_report(msg: Any) -> None:
        event = decode(msg.data, msg.headers)
        assert isinstance(event, LoadReported)
        reports.append(event)

    await gateway.nc.subscribe(LoadReported.subject_filter("demo"), cb=on_report)
    await gateway.nc.flush()
    # Four one-second predictions at once: about two in flight on each replica.
    calls = [asyncio.ensure_future(gateway.predict(["sleep", 1.0])) for _ in range(4)]
    await eventually(lambda: any(sum(r.concurrency.values()) > 3 for r in reports), what="load")
    answers = await asyncio.gather(*calls)
    assert all(a.status_code == 200 for a in answers)
    busy = max(reports, key=lambda r: sum(r.concurrency.values()))
    assert busy.gateway == "gw-test"
    assert busy.endpoint == "demo"
    assert set(busy.concurrency) == {"r1", "r2"}
    assert sum(busy.concurrency.values()) <= 4.0 + 1e-6
    assert busy.interval_s == pytest.approx(0.2, abs=0.1)
    assert sum(r.requests for r in reports) == 4


async def test_v2_follows_the_canary_split_and_the_version_pin(
    workers: dict[str, Worker], start_gateway: Any
) -> None:
    """V2 requests take the route's weights; /versions/{v}/ and X-Cormorant-Version pin one."""
    route = demo_route(workers, "r1", "r3", weights={"v1": 50, "v2": 50})
    async with start_gateway([route]) as gateway:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["whoami"]}]}
        seen = set()
        for _ in range(40):
            answer = await gateway.http.post(
                "/v2/models/demo/infer", json=body, headers=gateway.auth()
            )
            assert answer.status_code == 200, answer.text
            seen.add((answer.json()["model_version"], answer.json()["outputs"][0]["data"][0]))
        assert seen == {("v1", "r1"), ("v2", "r3")}
        pinned = await gateway.http.post(
            "/v2/models/demo/versions/v2/infer", json=body, headers=gateway.auth()
        )
        assert pinned.json()["model_version"] == "v2"
        header = await gateway.http.post(
            "/v2/models/demo/infer",
            json=body,
            headers={**gateway.auth(), "X-Cormorant-Version": "v1"},
        )
        assert header.json()["outputs"][0]["data"] == ["r1"]
        ready = await gateway.http.get("/v2/models/demo/versions/v9/ready", headers=gateway.auth())
        assert ready.status_code == 503
        missing = await gateway.http.post(
            "/v2/models/demo/versions/v9/infer", json=body, headers=gateway.auth()
        )
        assert missing.status_code == 503
        assert "version 'v9'" in missing.json()["error"]
