"""The gateway logs the predict requests no worker answered, and only those.

Read back from the real JetStream predictions stream, as predictlog reads it.
"""

from __future__ import annotations

import uuid
from typing import Any

from gateway_testkit import Gateway, eventually, free_port

from cormorant.devstack.testing.predictions import read_logged
from cormorant.gateway.prediction_log import NO_VERSION

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


def route(slug: str, replicas: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "slug": slug,
        "endpoint_id": str(uuid.uuid4()),
        "kind": "web",
        "status": "running",
        "timeout_s": 30,
        "generation": 1,
        "weights": {"v1": 100},
        "replicas": replicas,
    }
    return values | overrides


async def test_unanswered_requests_are_logged_refused_ones_are_not(
    start_gateway: Any, nats_url: str
) -> None:
    """503 without a ready replica and 502 for a dead one are logged; 401 and 403 are not."""
    waiting = route("demo", [], status="deploying")
    dead = route(
        "other",
        [{"id": "gone", "version": "v1", "url": f"http://127.0.0.1:{free_port()}"}],
    )
    gw: Gateway
    async with start_gateway([waiting, dead]) as gw:
        log = gw.app.state.prediction_log
        await eventually(lambda: log.publisher is not None, what="prediction log publisher")
        url = "/api/v1/endpoints/demo/predict"
        assert (await gw.http.post(url, json={"input_params": 1})).status_code == 401
        wrong = await gw.http.post(url, json={"input_params": 1}, headers=gw.auth("other"))
        assert wrong.status_code == 403
        traceparent = f"00-{TRACE_ID}-b7ad6b7169203331-01"
        no_replica = await gw.predict(["x", 2], headers={"traceparent": traceparent})
        assert no_replica.status_code == 503
        unreachable = await gw.predict({"k": "v"}, slug="other")
        assert unreachable.status_code == 502
        events = {e.endpoint: e for e in await read_logged(nats_url, 2)}
    logged = events["demo"]
    assert logged.request_id == no_replica.headers["x-request-id"]
    assert (logged.endpoint_id, logged.version) == (waiting["endpoint_id"], NO_VERSION)
    assert (logged.status, logged.input, logged.output) == (503, ["x", 2], None)
    assert logged.error is not None
    assert logged.error.startswith("NoReadyReplica: endpoint 'demo' has no ready replica")
    assert logged.trace_id == TRACE_ID
    assert 0 <= logged.latency_ms < 5_000
    other = events["other"]
    assert (other.status, other.version, other.input) == (502, "v1", {"k": "v"})
    assert other.error is not None
    assert other.error.startswith("ReplicasUnreachable: no replica of endpoint 'other'")
