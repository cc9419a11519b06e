"""Predict through the gateway: auth, the round trip to real workers, limits and failures.

Workers are real processes; PostgreSQL and NATS are real servers; the deployer is a stand-in
serving the routing contract (see gateway_testkit.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from gateway_testkit import Gateway, Worker, demo_route, eventually, free_port, serve
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cormorant.common.events import EndpointChanged

PREDICT = "/api/v1/endpoints/{}/predict"


@pytest.fixture
async def gateway(workers: dict[str, Worker], start_gateway: Any) -> AsyncIterator[Gateway]:
    """A gateway routing ``demo`` to r1 and r2 (v1); batch endpoint ``batchy`` is at zero."""
    batchy = {"slug": "batchy", "kind": "batch", "status": "idle", "replicas": [], "weights": {}}
    async with start_gateway([demo_route(workers), batchy]) as gw:
        yield gw


async def test_round_trip_carries_request_id_and_version(gateway: Gateway) -> None:
    """The worker's answer comes back unchanged, with X-Request-ID and X-Cormorant-Version."""
    response = await gateway.predict("hello")
    assert response.status_code == 200, response.text
    assert response.json()["prediction"] == "hello"
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    int(request_id, 16)
    assert response.headers["x-cormorant-version"] == "v1"
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    # Once the worker echoes the id it received, it must be the gateway's.
    if "request_id" in body:
        assert body["request_id"] == request_id
    spread = await gateway.predict([[1, 2], [3, 4]])
    assert spread.json()["prediction"] == [[1, 2], [3, 4]]
    other = await gateway.predict("again")
    assert other.headers["x-request-id"] != request_id


async def test_auth_matrix(gateway: Gateway) -> None:
    """Each wrong credential gets its status and a message that says what to send."""
    url = PREDICT.format("demo")
    body = {"input_params": 1}
    missing = await gateway.http.post(url, json=body)
    assert missing.status_code == 401
    assert "send Authorization: Bearer <endpoint token>" in missing.json()["error"]["message"]
    wrong = await gateway.http.post(url, json=body, headers={"Authorization": "Bearer cmt_nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "unauthorized"
    not_bearer = await gateway.http.post(
        url, json=body, headers={"Authorization": f"Basic {gateway.credentials.tokens['demo']}"}
    )
    assert not_bearer.status_code == 401
    other = await gateway.http.post(url, json=body, headers=gateway.auth("other"))
    assert other.status_code == 403
    assert "another endpoint" in other.json()["error"]["message"]
    admin = await gateway.http.post(url, json=body, headers=gateway.admin())
    assert admin.status_code == 403
    assert "admin key cannot call predict" in admin.json()["error"]["message"]
    token_on_management = await gateway.http.get("/api/v1/keys", headers=gateway.auth())
    assert token_on_management.status_code == 403
    assert "<admin key>" in token_on_management.json()["error"]["message"]
    forwarded_with_token = await gateway.http.get("/api/v1/endpoints", headers=gateway.auth())
    assert forwarded_with_token.status_code == 403
    no_key = await gateway.http.get("/api/v1/endpoints")
    assert no_key.status_code == 401
    assert "send Authorization: Bearer <admin key>" in no_key.json()["error"]["message"]
    bad_key = await gateway.http.get(
        "/api/v1/endpoints", headers={"Authorization": "Bearer cmk_unknown"}
    )
    assert bad_key.status_code == 401
    assert (await gateway.http.get("/api/v1/keys", headers=gateway.admin())).status_code == 200
    assert (await gateway.predict(1)).status_code == 200


async def test_new_token_works_at_once_and_rotation_revokes(gateway: Gateway) -> None:
    """A token created a moment ago is found in the database; a rotation event drops the old."""
    old = gateway.credentials.tokens["demo"]
    assert (await gateway.predict(1)).status_code == 200
    fresh = await gateway.credentials.add_token("demo")
    headers = {"Authorization": f"Bearer {fresh}"}
    response = await gateway.http.post(
        PREDICT.format("demo"), json={"input_params": 1}, headers=headers
    )
    assert response.status_code == 200
    # Rotation: the deployer revokes the old token in the database, then says so.
    await gateway.credentials.revoke_tokens("demo")
    gateway.credentials.tokens["demo"] = await gateway.credentials.add_token("demo")
    await gateway.publish(
        EndpointChanged(endpoint="demo", change="updated", attributes={"token_rotated": True})
    )

    async def old_refused() -> bool:
        answer = await gateway.http.post(
            PREDICT.format("demo"),
            json={"input_params": 1},
            headers={"Authorization": f"Bearer {old}"},
        )
        return answer.status_code == 401

    await eventually(old_refused, what="old token refused")
    assert (await gateway.predict(1)).status_code == 200


async def test_unknown_slug_batch_at_zero_and_no_replica(
    gateway: Gateway, workers: dict[str, Worker]
) -> None:
    """404 for an unknown endpoint, 409 for a batch endpoint at zero, 503 without replicas."""
    batch = await gateway.predict(1, slug="batchy")
    assert batch.status_code == 409
    assert batch.json()["error"]["message"] == (
        "batch endpoints serve batch jobs: POST /api/v1/endpoints/batchy/batch-jobs"
    )
    gateway.app.state.routing.remove_route("demo")
    gone = await gateway.predict(1)
    assert gone.status_code == 404
    assert "no endpoint 'demo'" in gone.json()["error"]["message"]
    gateway.deployer.routes["demo"] = demo_route(workers, status="deploying", replicas=[])
    await gateway.publish(EndpointChanged(endpoint="demo", change="updated"))
    routes = gateway.app.state.routing.routes
    await eventually(lambda: "demo" in routes and not routes["demo"].replicas, what="reload")
    empty = await gateway.predict(1)
    assert empty.status_code == 503
    assert "no ready replica" in empty.json()["error"]["message"]
    assert "deploying" in empty.json()["error"]["message"]
    get = await gateway.http.get(PREDICT.format("demo"), headers=gateway.auth())
    assert get.status_code == 405


async def test_timeout_is_a_504(workers: dict[str, Worker], start_gateway: Any) -> None:
    """A replica slower than the route's timeout_s: 504 saying which timeout was exceeded."""
    async with start_gateway([demo_route(workers, timeout_s=0.3)]) as gateway:
        started = time.monotonic()
        response = await gateway.predict(["sleep", 2])
        elapsed = time.monotonic() - started
        assert response.status_code == 504
        assert "timeout of 0.3 s" in response.json()["error"]["message"]
        assert elapsed < 1.5
        assert (await gateway.predict("fast")).status_code == 200


async def test_body_too_large_is_a_413(workers: dict[str, Worker], start_gateway: Any) -> None:
    """Bodies over max_body_bytes get 413 naming the limit, by Content-Length or by count."""
    async with start_gateway([demo_route(workers)], max_body_bytes=1000) as gateway:
        big = await gateway.predict("x" * 2000)
        assert big.status_code == 413
        assert "1000 bytes" in big.json()["error"]["message"]

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"input_params": "'
            for _ in range(10):
                yield b"y" * 200
            yield b'"}'

        streamed = await gateway.http.post(
            PREDICT.format("demo"),
            content=chunks(),
            headers={**gateway.auth(), "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413
        assert (await gateway.predict("small")).status_code == 200


async def test_stream_passes_through_chunk_by_chunk(gateway: Gateway) -> None:
    """The first NDJSON chunk reaches the client while the generator is still producing."""
    count, delay = 5, 0.3
    arrivals: list[float] = []
    chunks: list[Any] = []
    async with gateway.http.stream(
        "POST",
        PREDICT.format("demo"),
        json={"input_params": ["stream", count, delay]},
        headers=gateway.auth(),
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        assert response.headers["x-cormorant-version"] == "v1"
        async for line in response.aiter_lines():
            if line:
                arrivals.append(time.monotonic())
                chunks.append(json.loads(line)["prediction"])
    assert [c["index"] for c in chunks] == list(range(count))
    # The first chunk arrived well before the last was produced, not all at the end.
    assert arrivals[-1] - arrivals[0] > 0.6 * delay * (count - 1)
    sse = await gateway.http.post(
        PREDICT.format("demo"),
        json={"input_params": ["stream", 2, 0]},
        headers={**gateway.auth(), "Accept": "text/event-stream"},
    )
    assert sse.headers["content-type"].startswith("text/event-stream")
    assert sse.text.count("data: ") == 2


async def test_connection_refused_goes_to_another_replica(
    workers: dict[str, Worker], start_gateway: Any
) -> None:
    """A replica that refuses connections is skipped: every request still succeeds."""
    dead = {"id": "dead", "version": "v1", "url": f"http://127.0.0.1:{free_port()}"}
    route = demo_route(workers, "r1")
    route["replicas"].append({**dead, "state": "ready"})
    async with start_gateway([route]) as gateway:
        answers = [await gateway.predict(["whoami"]) for _ in range(20)]
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        assert {a.json()["prediction"] for a in answers} == {"r1"}
        metrics = (await gateway.http.get("/metrics")).text
        assert 'cormorant_gateway_connect_failures_total{endpoint="demo"}' in metrics


async def test_only_dead_replicas_is_a_502(start_gateway: Any) -> None:
    """No replica accepts a connection: 502 saying none could be reached."""
    dead = [
        {"id": f"dead{i}", "version": "v1", "url": f"http://127.0.0.1:{free_port()}"}
        for i in range(2)
    ]
    route = {"slug": "demo", "weights": {"v1": 100}, "replicas": dead}
    async with start_gateway([route]) as gateway:
        response = await gateway.predict(1)
        assert response.status_code == 502
        assert "no replica of endpoint 'demo' accepted a connection" in response.text


async def test_request_id_and_trace_context_reach_the_replica(start_gateway: Any) -> None:
    """The replica receives X-Request-ID and the caller's W3C traceparent."""
    received: list[dict[str, str]] = []

    async def fake_predict(request: Request) -> Response:
        received.append(dict(request.headers))
        return JSONResponse({"prediction": (await request.json())["input_params"]})

    replica = Starlette(routes=[Route("/predict", fake_predict, methods=["POST"])])
    async with serve(replica) as (url, _):
        route = {"slug": "demo", "replicas": [{"id": "fake", "version": "7", "url": url}]}
        async with start_gateway([route]) as gateway:
            parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            response = await gateway.predict(3, headers={"traceparent": parent})
            assert response.status_code == 200
            assert response.headers["x-cormorant-version"] == "7"
    assert received[0]["x-request-id"] == response.headers["x-request-id"]
    assert received[0]["traceparent"] == parent
    assert "authorization" not in received[0]


async def test_with_tracing_the_replica_gets_a_child_of_the_callers_trace(
    start_gateway: Any,
) -> None:
    """With a tracer, the hop is a span of the caller's trace and the replica sees it."""
    received: list[dict[str, str]] = []

    async def fake_predict(request: Request) -> Response:
        received.append(dict(request.headers))
        return JSONResponse({"prediction": 1})

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    replica = Starlette(routes=[Route("/predict", fake_predict, methods=["POST"])])
    async with serve(replica) as (url, _):
        route = {"slug": "demo", "replicas": [{"id": "fake", "version": "7", "url": url}]}
        async with start_gateway([route]) as gateway:
            gateway.app.state.predict_path.tracer = provider.get_tracer("test")
            trace_id = "0af7651916cd43dd8448eb211c80319c"
            parent = f"00-{trace_id}-b7ad6b7169203331-01"
            response = await gateway.predict(3, headers={"traceparent": parent})
            assert response.status_code == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "predict demo"
    assert format(span.context.trace_id, "032x") == trace_id
    sent = received[0]["traceparent"]
    assert sent.split("-")[1] == trace_id
    assert sent.split("-")[2] == format(span.context.span_id, "016x")


async def test_metrics_count_requests_by_endpoint_version_status(gateway: Gateway) -> None:
    """Requests total by endpoint, version and status; latency; in-flight."""
    await gateway.predict(1)
    await gateway.http.post(PREDICT.format("demo"), json={"input_params": 1})
    text = (await gateway.http.get("/metrics")).text
    assert 'cormorant_gateway_requests_total{endpoint="demo",status="200",version="v1"}' in text
    assert 'cormorant_gateway_requests_total{endpoint="",status="401",version=""}' in text
    assert 'cormorant_gateway_request_duration_seconds_bucket{endpoint="demo"' in text
    assert "cormorant_gateway_requests_in_flight 0.0" in text


async def test_no_retry_once_the_replica_accepted_the_request(
    workers: dict[str, Worker], start_gateway: Any
) -> None:
    """A replica that takes the request and hangs up gives 502; the request is not resent."""
    received = 0

    async def take_and_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        await reader.readuntil(b"\r\n\r\n")
        received += 1
        writer.close()

    server = await asyncio.start_server(take_and_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    route = demo_route(workers, "r1")
    route["replicas"].append(
        {"id": "rude", "version": "v1", "url": f"http://127.0.0.1:{port}", "state": "ready"}
    )
    async with server, start_gateway([route]) as gateway:
        answers = [await gateway.predict(["whoami"]) for _ in range(30)]
    failed = [a for a in answers if a.status_code != 200]
    assert failed, "the rude replica was never picked"
    assert all(a.status_code == 502 for a in failed)
    assert "was not retried" in failed[0].json()["error"]["message"]
    assert len(failed) == received
    assert {a.json()["prediction"] for a in answers if a.status_code == 200} == {"r1"}


async def test_client_hanging_up_ends_the_stream_upstream(gateway: Gateway) -> None:
    """A client that leaves mid-stream releases the replica at once, not when the model ends."""
    metrics = gateway.app.state.metrics
    async with gateway.http.stream(
        "POST",
        PREDICT.format("demo"),
        json={"input_params": ["stream", 100, 0.2]},
        headers=gateway.auth(),
    ) as response:
        async for line in response.aiter_lines():
            if line:
                break
        assert metrics.in_flight_now == 1
    await eventually(lambda: metrics.in_flight_now == 0, within=3, what="stream released")
    route = gateway.app.state.routing.routes["demo"]
    assert sum(r.in_flight for r in route.replicas.values()) == 0
