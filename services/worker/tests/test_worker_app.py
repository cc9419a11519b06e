"""The worker app in-process: readiness, limits, stream errors, and metrics from predict code."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from cormorant.common.bus import decode_all
from cormorant.common.events import MetricLogged
from cormorant.common.predictor import Predictor
from cormorant.devstack.testing.waits import eventually
from cormorant.worker import WorkerSettings, create_app
from cormorant.worker.publishing import ReplicaEvents


def settings(**overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "publish_metrics": False,
        "log_predictions": False,
        "endpoint": "test-endpoint",
    }
    return WorkerSettings(**{**values, **overrides})


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            yield client


def predictor(function: Callable[..., Any], **options: Any) -> Predictor:
    return Predictor(function, **options)


async def test_healthz_is_503_until_the_model_imported() -> None:
    """/healthz says not ready while the model imports; a predict request waits for it."""
    release = threading.Event()

    def slow_import() -> Predictor:
        release.wait(10)
        return predictor(lambda x: x + 1)

    app = create_app(settings(), slow_import, threads=2)
    async with serve(app) as client:
        loading = await client.get("/healthz")
        assert loading.status_code == 503
        assert loading.json()["error"]["code"] == "not_ready"
        pending = asyncio.create_task(client.post("/predict", json={"input_params": 1}))
        await asyncio.sleep(0.05)
        assert not pending.done()
        release.set()
        assert (await pending).json()["prediction"] == 2
        assert (await client.get("/healthz")).status_code == 200


async def test_failed_import_keeps_healthz_503_with_the_reason(tmp_path: Path) -> None:
    """A model whose import fails never turns ready; /healthz and /predict say why."""
    (tmp_path / "model.py").write_text("raise RuntimeError('weights missing')\n")
    app = create_app(settings(source=tmp_path, file="model.py"), threads=1)
    async with serve(app) as client:
        await eventually(lambda: app.state.model.error is not None, within=10)
        health = await client.get("/healthz")
        assert health.status_code == 503
        error = health.json()["error"]
        assert error["code"] == "model_load_failed"
        assert "RuntimeError: weights missing" in error["message"]
        response = await client.post("/predict", json={"input_params": 1})
        assert response.status_code == 503
        assert response.json()["error"]["message"] == error["message"]


async def test_body_over_the_limit_is_a_413() -> None:
    """A request body larger than max_body_bytes is refused before it is parsed."""
    app = create_app(settings(max_body_bytes=64), predictor(lambda x: x), threads=1)
    async with serve(app) as client:
        response = await client.post("/predict", json={"input_params": "x" * 100})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        small = await client.post("/predict", json={"input_params": "ok"})
        assert small.json()["prediction"] == "ok"


async def test_predict_runs_off_the_event_loop() -> None:
    """predict runs in a pool thread where no event loop is running."""

    def where() -> dict[str, Any]:
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        return {"on_loop": on_loop, "thread": threading.current_thread().name}

    app = create_app(settings(), predictor(where), threads=1)
    async with serve(app) as client:
        body = (await client.post("/predict", json={"input_params": []})).json()
    assert body["prediction"]["on_loop"] is False
    assert body["prediction"]["thread"].startswith("predict")


async def test_stream_error_after_first_chunk_ends_the_stream_with_an_error_line() -> None:
    """A generator failing mid-stream sends its chunks, then one error line."""

    def tokens() -> Iterator[str]:
        yield "a"
        raise ValueError("model crashed")

    app = create_app(settings(), predictor(tokens), threads=1)
    async with serve(app) as client:
        response = await client.post("/predict", json={"input_params": []})
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert response.status_code == 200
    assert lines[0] == {"prediction": "a"}
    assert lines[1]["error"]["code"] == "predict_error"
    assert lines[1]["error"]["message"] == "ValueError: model crashed"


async def test_stream_error_before_the_first_chunk_is_a_plain_500() -> None:
    """A generator failing before its first chunk gets a regular 500 error answer."""

    def tokens() -> Iterator[str]:
        raise ValueError("no input")
        yield "never"

    app = create_app(settings(), predictor(tokens), threads=1)
    async with serve(app) as client:
        response = await client.post("/predict", json={"input_params": []})
    assert response.status_code == 500
    assert response.json()["error"]["message"] == "ValueError: no input"


async def test_framework_response_is_refused_clearly() -> None:
    """Returning a Starlette Response is a 500 telling the user to return data instead."""
    from starlette.responses import JSONResponse

    app = create_app(settings(), predictor(lambda: JSONResponse({"a": 1})), threads=1)
    async with serve(app) as client:
        response = await client.post("/predict", json={"input_params": []})
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "invalid_prediction"
    assert "return the data, not a Response" in response.json()["error"]["message"]


async def test_a_1000_deep_output_is_a_422_naming_the_depth() -> None:
    """Lists nested 1,000 deep: a short 422 naming the limit, for answers and stream chunks."""

    def deep() -> list[Any]:
        value: list[Any] = []
        for _ in range(1000):
            value = [value]
        return value

    def chunks() -> Iterator[list[Any]]:
        yield deep()

    app = create_app(settings(), predictor(deep), threads=1)
    async with serve(app) as client:
        response = await client.post("/predict", json={"input_params": []})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "prediction_too_deep"
    assert "nested deeper than 100 levels" in error["message"]
    assert len(error["message"]) < 200
    app = create_app(settings(), predictor(chunks), threads=1)
    async with serve(app) as client:
        streamed = await client.post("/predict", json={"input_params": []})
    assert streamed.status_code == 422
    assert "chunk is nested deeper than 100 levels" in streamed.json()["error"]["message"]


async def test_get_on_predict_is_405() -> None:
    """Only POST predicts."""
    app = create_app(settings(), predictor(lambda: 1), threads=1)
    async with serve(app) as client:
        response = await client.get("/predict")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


async def test_log_metric_without_nats_never_fails_the_prediction() -> None:
    """Endpoint().log_metric in predict works without NATS; the metric is counted as dropped."""
    from cormorant.sdk import Endpoint

    def predict(x: float) -> float:
        Endpoint().log_metric("confidence", x)
        return x

    app = create_app(settings(), predictor(predict), threads=1)
    async with serve(app) as client:
        response = await client.post("/predict", json={"input_params": 0.5})
        assert response.json()["prediction"] == 0.5
        await asyncio.sleep(0)  # let the hop to the loop run

        def dropped_counted() -> bool:
            text = (app.state.metrics.registry.get_sample_value(
                "cormorant_worker_logged_metrics_total", {"outcome": "dropped"}
            ))  # fmt: skip
            return text == 1.0

        await eventually(dropped_counted, within=10)


async def test_logged_metrics_are_published_to_nats(nats_url: str) -> None:
    """A metric logged by predict code reaches NATS as a MetricLogged event for the endpoint."""
    from cormorant.sdk import Endpoint

    def predict(x: float) -> str:
        Endpoint().log_metric("accuracy", x)
        return "ok"

    nc = await nats.connect(nats_url)
    received: asyncio.Queue[MetricLogged] = asyncio.Queue()

    async def on_message(msg: Any) -> None:
        for event in decode_all(msg.data, msg.headers):  # a pack carries several
            assert isinstance(event, MetricLogged)
            await received.put(event)

    await nc.subscribe("cormorant.metrics.>", cb=on_message)
    worker_settings = settings(publish_metrics=True, nats_url=nats_url, version="7")
    app = create_app(worker_settings, predictor(predict), threads=1)
    try:
        async with serve(app) as client:
            events: ReplicaEvents = app.state.events
            await eventually(lambda: events.publisher is not None, within=10)
            response = await client.post("/predict", json={"input_params": 0.75})
            assert response.json()["prediction"] == "ok"
            async with asyncio.timeout(10):
                event = await received.get()
    finally:
        await nc.close()
    assert (event.endpoint, event.version, event.key, event.value) == (
        "test-endpoint",
        "7",
        "accuracy",
        0.75,
    )


async def test_answer_carries_version_and_the_callers_request_id() -> None:
    """The JSON answer names the serving version and echoes X-Request-ID (or makes one)."""
    app = create_app(settings(version="7"), predictor(lambda: 1), threads=1)
    async with serve(app) as client:
        given = await client.post(
            "/predict", json={"input_params": []}, headers={"X-Request-ID": "req-42"}
        )
        made = await client.post("/predict", json={"input_params": []})
    assert given.json() == {"prediction": 1, "version": "7", "request_id": "req-42"}
    assert given.headers["x-request-id"] == "req-42"
    assert len(made.json()["request_id"]) == 32
