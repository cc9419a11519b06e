"""Shadow traffic in the gateway: live requests mirrored to a shadow version's replicas in the
background, their answers logged tagged shadow under the live request id, never returned.

Real workers (r1 serves v1, r3 serves v2) and real NATS; the answers are read back from the
JetStream predictions stream as predictlog reads them (the workers here log nothing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_grpc
from gateway_testkit import Gateway, demo_route, eventually, free_port

from cormorant.common.events import TrafficChanged
from cormorant.devstack.testing.predictions import read_logged

SHADOW_V2 = {"version": "v2", "percent": 100}


def shadow_count(gateway: Gateway, outcome: str) -> float:
    """``cormorant_gateway_shadow_requests_total`` of one outcome."""
    registry = gateway.app.state.metrics.registry
    value = registry.get_sample_value(
        "cormorant_gateway_shadow_requests_total", {"outcome": outcome}
    )
    return value or 0.0


async def test_mirrored_answers_are_logged_never_returned_and_stop_with_the_shadow(
    workers: Any, start_gateway: Any, nats_url: str
) -> None:
    """At 100 % every REST, V2 REST and gRPC request is mirrored to v2: callers only ever see
    v1, each shadow answer is logged tagged shadow under the live request id; once a
    TrafficChanged without shadow arrives, nothing more is mirrored."""
    route = demo_route(workers, "r1", "r3", shadow=SHADOW_V2)
    async with start_gateway([route], grpc_port=free_port()) as gateway:
        log = gateway.app.state.prediction_log
        await eventually(lambda: log.publisher is not None, what="prediction log publisher")
        live_ids = []
        for _ in range(20):
            response = await gateway.predict(["whoami"])
            assert response.status_code == 200, response.text
            assert response.json()["prediction"] == "r1"
            assert response.headers["x-cormorant-version"] == "v1"
            live_ids.append(response.headers["x-request-id"])
        tensor = {"name": "x", "shape": [2], "datatype": "BYTES", "data": ["whoami", "whoami"]}
        v2 = await gateway.http.post(
            "/v2/models/demo/infer", json={"inputs": [tensor]}, headers=gateway.auth()
        )
        assert v2.status_code == 200, v2.text
        assert v2.json()["outputs"][0]["data"] == ["r1", "r1"]
        port = gateway.app.state.settings.grpc_port
        client = triton_grpc.InferenceServerClient(f"127.0.0.1:{port}")
        try:
            grpc_input = triton_grpc.InferInput("x", [1], "BYTES")
            grpc_input.set_data_from_numpy(np.array([b"whoami"], dtype=object))
            answered = await client.infer(
                "demo", [grpc_input], headers={"authorization": gateway.auth()["Authorization"]}
            )
        finally:
            await client.close()
        grpc_output = answered.as_numpy(answered.get_response().outputs[0].name)
        assert grpc_output is not None
        assert [value.decode() for value in grpc_output] == ["r1"]

        events = await read_logged(nats_url, 22, exactly=False)
        assert all(e.shadow for e in events)
        assert {e.version for e in events} == {"v2"}
        by_id = {e.request_id: e for e in events}
        assert set(live_ids) <= set(by_id)
        assert {by_id[i].output for i in live_ids} == {"r3"}
        assert by_id[live_ids[0]].input == ["whoami"]
        [rows] = [e for e in events if e.request_id == v2.headers["x-request-id"]]
        assert (rows.input, rows.output) == ({"x": ["whoami", "whoami"]}, ["r3", "r3"])
        assert sum(1 for e in events if e.output == ["r3"]) == 1  # the gRPC request's
        # The answers were never counted as the endpoint's requests.
        requests = gateway.app.state.metrics.registry.get_sample_value(
            "cormorant_gateway_requests_total",
            {"endpoint": "demo", "version": "v2", "status": "200"},
        )
        assert requests is None

        await gateway.publish(TrafficChanged(endpoint="demo", generation=2, weights={"v1": 100}))
        table_route = gateway.app.state.routing.routes["demo"]
        await eventually(lambda: table_route.generation == 2, what="generation 2 applied")
        assert table_route.shadow_version is None
        answered = shadow_count(gateway, "answered")
        for _ in range(10):
            assert (await gateway.predict(["whoami"])).status_code == 200
        assert shadow_count(gateway, "answered") == answered


async def test_an_unreachable_shadow_never_fails_a_caller(
    workers: Any, start_gateway: Any, nats_url: str
) -> None:
    """A shadow version whose replica refuses connections: every caller gets its answer from
    v1; the shadow's failures are counted and logged as its own (502)."""
    dead = {"id": "gone", "version": "v9", "url": f"http://127.0.0.1:{free_port()}"}
    route = demo_route(workers, "r1", shadow={"version": "v9", "percent": 100})
    route["replicas"].append(dead)
    async with start_gateway([route]) as gateway:
        log = gateway.app.state.prediction_log
        await eventually(lambda: log.publisher is not None, what="prediction log publisher")
        for _ in range(10):
            response = await gateway.predict(["whoami"])
            assert response.status_code == 200, response.text
            assert response.json()["prediction"] == "r1"
        events = await read_logged(nats_url, 10, exactly=False)
        assert {(e.shadow, e.version, e.status) for e in events} == {(True, "v9", 502)}
        await eventually(lambda: shadow_count(gateway, "failed") == 10, what="10 failures")
