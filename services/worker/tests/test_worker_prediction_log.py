"""Every prediction is published as ``PredictionLogged``: read back from the real JetStream.

The worker app runs in-process against a real nats-server; events are read with a pull
consumer on the predictions stream, as predictlog reads them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import nats
import pyarrow as pa
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from cormorant.common.bus import PREDICTIONS_STREAM
from cormorant.common.predictor import Predictor
from cormorant.common.predictor.arrow_rows import ARROW_STREAM, encode_batch
from cormorant.common.telemetry import JsonFormatter
from cormorant.devstack.servers import NatsServer
from cormorant.devstack.testing.predictions import read_logged
from cormorant.devstack.testing.spooling import (
    DEAD_WRITER_RECEIVED_AT,
    spool_and_die,
    spool_segments,
)
from cormorant.devstack.testing.waits import eventually
from cormorant.worker import WorkerSettings, create_app
from cormorant.worker.publishing import ReplicaEvents

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def model(action: str, *args: Any) -> Any:
    """Echo, raise, or stream, as the first argument says."""
    if action == "raise":
        raise ValueError(f"boom: {args[0]}")
    if action == "stream":
        return _chunks(args[0])
    return [action, *args]


def _chunks(count: int) -> Iterator[dict[str, int]]:
    for index in range(count):
        yield {"index": index}


def raw(value: Any) -> Any:
    """A predict function for raw bytes: their length."""
    return len(value)


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            yield client


async def wait_until_connected(app: FastAPI) -> None:
    events: ReplicaEvents = app.state.events
    for _ in range(1000):
        if events.publisher is not None:
            return
        await asyncio.sleep(0.01)
    pytest.fail("the replica's publisher did not connect within 10 s")


def worker_settings(nats_url: str, **overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "nats_url": nats_url,
        "publish_metrics": False,
        "endpoint": "test-endpoint",
        "endpoint_id": "8b0f4a9e-7c43-4bb6-9d6e-5a1f2c3d4e5f",
        "version": "3",
    }
    return WorkerSettings(**(values | overrides))


async def test_a_prediction_is_logged_once_with_its_fields(nats_url: str) -> None:
    """One request, one event: ids, endpoint, version, input, output, status, timing, trace."""
    app = create_app(worker_settings(nats_url), Predictor(model), threads=1)
    before = datetime.now(UTC)
    async with serve(app) as client:
        await wait_until_connected(app)
        response = await client.post(
            "/predict",
            json={"input_params": ["hello", 1, {"a": [2.5]}]},
            headers={"X-Request-ID": "req-1", "traceparent": TRACEPARENT},
        )
        assert response.status_code == 200
        [event] = await read_logged(nats_url, 1)
    assert event.subject == "cormorant.predictions.test-endpoint"
    assert (event.request_id, event.endpoint, event.endpoint_id, event.version) == (
        "req-1",
        "test-endpoint",
        "8b0f4a9e-7c43-4bb6-9d6e-5a1f2c3d4e5f",
        "3",
    )
    assert event.input == ["hello", 1, {"a": [2.5]}]
    assert event.output == response.json()["prediction"] == ["hello", 1, {"a": [2.5]}]
    assert (event.status, event.error, event.trace_id) == (200, None, TRACE_ID)
    assert 0 < event.latency_ms < 5_000
    assert before - timedelta(seconds=1) <= event.received_at <= datetime.now(UTC)
    assert event.received_at.tzinfo is UTC


async def test_a_raising_predict_is_logged_as_a_500_with_its_error(nats_url: str) -> None:
    """The event of a failed prediction has status 500, ``Type: message`` and no output."""
    app = create_app(worker_settings(nats_url), Predictor(model), threads=1)
    async with serve(app) as client:
        await wait_until_connected(app)
        response = await client.post("/predict", json={"input_params": ["raise", 7]})
        assert response.status_code == 500
        [event] = await read_logged(nats_url, 1)
    assert (event.status, event.error, event.output) == (500, "ValueError: boom: 7", None)
    assert event.input == ["raise", 7]
    # Made by the worker when the caller sent none, and the same in the answer.
    assert event.request_id == response.headers["x-request-id"]
    assert len(event.request_id) == 32


async def test_a_stream_is_logged_with_its_chunks(nats_url: str) -> None:
    """A generator's prediction is logged once it ends, with the chunks it sent."""
    app = create_app(worker_settings(nats_url), Predictor(model), threads=1)
    async with serve(app) as client:
        await wait_until_connected(app)
        response = await client.post("/predict", json={"input_params": ["stream", 3]})
        assert response.status_code == 200
        assert len(response.text.splitlines()) == 3
        [event] = await read_logged(nats_url, 1)
    assert event.output == [{"index": 0}, {"index": 1}, {"index": 2}]
    assert (event.status, event.error) == (200, None)


async def test_bytes_bad_json_and_large_inputs_are_logged_readably(nats_url: str) -> None:
    """Raw bytes as text or Base64, an unparseable body as text, a large one as a note."""
    settings = worker_settings(nats_url, log_max_bytes=1000)
    app = create_app(settings, Predictor(raw), threads=1)
    binary = bytes([0xFF, 0x00, 0x81])
    octets = {"Content-Type": "application/octet-stream"}
    async with serve(app) as client:
        await wait_until_connected(app)
        for request_id, body, headers in (
            ("text", b"plain words", octets),
            ("binary", binary, octets),
            ("bad-json", b"{nope", {}),
            ("large", b"x" * 2000, octets),
        ):
            await client.post(
                "/predict", content=body, headers={"X-Request-ID": request_id, **headers}
            )
        events = {e.request_id: e for e in await read_logged(nats_url, 4)}
    assert (events["text"].input, events["text"].output) == ("plain words", 11)
    assert events["binary"].input == base64.b64encode(binary).decode()
    assert (events["bad-json"].input, events["bad-json"].status) == ("{nope", 400)
    assert events["bad-json"].error is not None
    assert events["bad-json"].error.startswith("BadRequest: the request body is not valid JSON")
    assert events["large"].input == "[input of 2000 bytes not logged: over log_max_bytes (1000)]"
    assert events["large"].output == 2000


async def test_large_predictions_are_all_logged_in_packs_the_server_takes(nats_url: str) -> None:
    """Inputs and outputs of 150 kB each: packs are cut by size, each under NATS's
    max_payload, and every prediction arrives whole."""
    app = create_app(worker_settings(nats_url), Predictor(model), threads=1)
    text = "é" * 75_000  # 150 kB of UTF-8
    async with serve(app) as client:
        await wait_until_connected(app)
        for index in range(12):
            response = await client.post(
                "/predict", json={"input_params": text}, headers={"X-Request-ID": f"big-{index}"}
            )
            assert response.status_code == 200
        events = await read_logged(nats_url, 12)
        nc = await nats.connect(nats_url)
        try:
            stored = (await nc.jetstream().stream_info(PREDICTIONS_STREAM)).state.messages
        finally:
            await nc.close()
    assert sorted(e.request_id for e in events) == sorted(f"big-{i}" for i in range(12))
    assert all(e.input == text and e.output == [text] for e in events)
    assert stored >= 4  # 3.6 MB of predictions, at most 1 MB a message


def add_or_raise(a: int, b: int) -> int:
    """A batch model: the sum, or an error for negative rows."""
    if a < 0:
        raise ValueError(f"negative row {a}")
    return a + b


@pytest.mark.parametrize("arrow", [False, True], ids=["json-rows", "arrow-rows"])
async def test_a_batch_chunk_asked_to_is_logged_one_prediction_per_row(
    nats_url: str, arrow: bool
) -> None:
    """A job's chunk with Cormorant-Log-As: each row one prediction, numbered from the
    chunk's first row; a chunk without it logs nothing."""
    app = create_app(worker_settings(nats_url), Predictor(add_or_raise), threads=1)
    rows = [[1, 2], [-3, 4], [5, 6]]
    if arrow:
        body = encode_batch(pa.RecordBatch.from_pydict({"a": [1, -3, 5], "b": [2, 4, 6]}))
        media = ARROW_STREAM
    else:
        body = json.dumps({"rows": rows}).encode()
        media = "application/json"
    async with serve(app) as client:
        await wait_until_connected(app)
        plain = await client.post("/predict/batch", content=body, headers={"Content-Type": media})
        assert plain.status_code == 200
        logged = await client.post(
            "/predict/batch",
            content=body,
            headers={
                "Content-Type": media,
                "Cormorant-Log-As": "job7",
                "Cormorant-First-Row": "41",
            },
        )
        assert logged.status_code == 200
        bad = await client.post(
            "/predict/batch",
            content=body,
            headers={"Content-Type": media, "Cormorant-Log-As": "job7", "Cormorant-First-Row": "0"},
        )
        assert bad.status_code == 400
        assert "Cormorant-First-Row" in bad.json()["error"]["message"]
        events = {e.request_id: e for e in await read_logged(nats_url, 3)}
    assert set(events) == {"job7-41", "job7-42", "job7-43"}
    assert (events["job7-41"].input, events["job7-41"].output) == ([1, 2], 3)
    assert (events["job7-41"].status, events["job7-41"].error) == (200, None)
    assert (events["job7-42"].status, events["job7-42"].output) == (500, None)
    assert events["job7-42"].error == "ValueError: negative row -3"
    assert events["job7-43"].output == 11
    assert all(e.version == "3" and e.latency_ms >= 0 for e in events.values())


async def test_without_nats_predictions_succeed_and_the_drops_are_counted(
    unused_tcp_port: int,
) -> None:
    """Nothing listens at the NATS URL: every prediction is answered and counted as dropped."""
    settings = worker_settings(f"nats://127.0.0.1:{unused_tcp_port}", nats_connect_timeout=0.2)
    app = create_app(settings, Predictor(model), threads=1)
    async with serve(app) as client:
        for index in range(3):
            response = await client.post("/predict", json={"input_params": ["ok", index]})
            assert response.json()["prediction"] == ["ok", index]
        stream = await client.post("/predict", json={"input_params": ["stream", 2]})
        assert stream.status_code == 200
    dropped = app.state.metrics.registry.get_sample_value(
        "cormorant_worker_logged_predictions_total", {"outcome": "dropped"}
    )
    assert dropped == 4


async def test_a_failures_log_line_carries_request_and_trace_ids(
    nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The JSON log line of a failed prediction names its request and its trace."""
    app = create_app(worker_settings(nats_url, log_predictions=False), Predictor(model), threads=1)
    caplog.set_level(logging.WARNING, logger="cormorant.worker")
    async with serve(app) as client:
        response = await client.post(
            "/predict",
            json={"input_params": ["raise", 1]},
            headers={"X-Request-ID": "req-failed", "traceparent": TRACEPARENT},
        )
    assert response.status_code == 500
    [record] = [r for r in caplog.records if r.getMessage().startswith("predict failed")]
    line = json.loads(JsonFormatter().format(record))
    assert (line["request_id"], line["trace_id"], line["level"]) == (
        "req-failed",
        TRACE_ID,
        "WARNING",
    )


async def test_an_open_inference_request_is_logged_once(nats_url: str) -> None:
    """``/predict/rows`` (the gateway's V2 path) logs one event per request: the inputs by
    name, the list of predictions; a failing row's error with its status."""
    app = create_app(worker_settings(nats_url), Predictor(model), threads=1)
    async with serve(app) as client:
        await wait_until_connected(app)
        good = await client.post(
            "/predict/rows",
            json={"inputs": [{"name": "x", "rows": [["a", 1], ["b", 2]]}]},
            headers={"X-Request-ID": "v2-1", "traceparent": TRACEPARENT},
        )
        assert good.status_code == 200, good.text
        assert good.json()["predictions"] == [["a", 1], ["b", 2]]
        bad = await client.post(
            "/predict/rows",
            json={"inputs": [{"name": "x", "rows": [["a"], ["raise", 7]]}]},
            headers={"X-Request-ID": "v2-2"},
        )
        assert bad.status_code == 500
        events = await read_logged(nats_url, 2)
    first, second = sorted(events, key=lambda e: e.request_id)
    assert (first.request_id, first.status, first.trace_id) == ("v2-1", 200, TRACE_ID)
    assert first.input == {"x": [["a", 1], ["b", 2]]}
    assert first.output == [["a", 1], ["b", 2]]
    assert (second.status, second.error) == (500, "row 1: ValueError: boom: 7")


async def test_spooled_predictions_leave_the_spool_once_acked(
    nats_url: str, tmp_path: Path
) -> None:
    """With a spool, every prediction is published once and its segment is deleted once
    JetStream acknowledged it: nothing is left to replay."""
    app = create_app(worker_settings(nats_url, spool_dir=tmp_path), Predictor(model), threads=1)
    async with serve(app) as client:
        await wait_until_connected(app)
        for i in range(5):
            response = await client.post(
                "/predict", json={"input_params": ["echo", i]}, headers={"X-Request-ID": f"s-{i}"}
            )
            assert response.status_code == 200
        events = await read_logged(nats_url, 5)
        assert sorted(e.request_id for e in events) == [f"s-{i}" for i in range(5)]
        await eventually(lambda: not spool_segments(tmp_path), within=10, what="an empty spool")


async def test_predictions_answered_before_nats_connects_are_published_once_it_does(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """A replica serves before its NATS connection is up (a restart under load): with a spool,
    what it answers meanwhile is on disk and waits for the publisher, instead of being dropped
    (so a kill in that window leaves it to the replayer), and is published once connected."""
    nats_server.stop()
    settings = worker_settings(nats_server.url, spool_dir=tmp_path, nats_connect_timeout=0.2)
    app = create_app(settings, Predictor(model), threads=1)
    async with serve(app) as client:
        for i in range(3):
            response = await client.post(
                "/predict", json={"input_params": ["echo", i]}, headers={"X-Request-ID": f"e-{i}"}
            )
            assert response.status_code == 200
        assert spool_segments(tmp_path), "answered predictions must be on disk already"
        nats_server.start()
        await wait_until_connected(app)
        events = await read_logged(nats_server.url, 3)
        assert sorted(e.request_id for e in events) == [f"e-{i}" for i in range(3)]
        await eventually(lambda: not spool_segments(tmp_path), within=10, what="an empty spool")
    dropped = app.state.metrics.registry.get_sample_value(
        "cormorant_worker_logged_predictions_total", {"outcome": "dropped"}
    )
    assert not dropped


async def test_a_killed_workers_answered_predictions_are_published_by_the_next(
    nats_url: str, tmp_path: Path
) -> None:
    """A worker SIGKILLed after answering, before publishing: the next worker process of the
    replica publishes its rows (under its own endpoint and version) and empties the spool."""
    spool_and_die(tmp_path, 3)
    assert len(spool_segments(tmp_path)) == 1
    app = create_app(worker_settings(nats_url, spool_dir=tmp_path), Predictor(model), threads=1)
    async with serve(app):
        await wait_until_connected(app)
        events = await read_logged(nats_url, 3)
        await eventually(lambda: not spool_segments(tmp_path), within=10, what="an empty spool")
    assert sorted(e.request_id for e in events) == ["dead-0", "dead-1", "dead-2"]
    assert {(e.endpoint, e.version, e.status) for e in events} == {("test-endpoint", "3", 200)}
    assert min(e.received_at.timestamp() for e in events) == DEAD_WRITER_RECEIVED_AT
