"""Adaptive batching in the worker app: concurrent requests share calls, each keeps its own
answer and its own error; and ``/predict/rows``, the Open Inference Protocol's worker route."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from cormorant.common.predictor import Predictor
from cormorant.worker import WorkerSettings, create_app
from cormorant.worker.app import WorkerApp
from cormorant.worker.batching import (
    AdaptiveBatcher,
    BatchingConfig,
    InvalidBatching,
    batching_config,
)

BATCHED = {
    "CORMORANT_PREDICT_BATCH": "true",
    "CORMORANT_PREDICT_BATCH_MAX_SIZE": "8",
    "CORMORANT_PREDICT_BATCH_MAX_WAIT_MS": "50",
}


class GatedModel:
    """A batch predict whose first call waits for a gate, so later requests queue meanwhile."""

    def __init__(self) -> None:
        self.calls: list[list[list[Any]]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, rows: list[list[Any]]) -> list[Any]:
        self.calls.append(rows)
        if len(self.calls) == 1:
            self.entered.set()
            self.gate.wait(10)
        if any(row[0] < 0 for row in rows):
            raise ValueError("negative input")
        return [row[0] * 10 for row in rows]


@asynccontextmanager
async def serve(
    model: GatedModel, env: dict[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, AdaptiveBatcher]]:
    settings = WorkerSettings(
        publish_metrics=False, log_predictions=False, endpoint="batched", env=env
    )
    app = create_app(settings, Predictor(model), threads=1)
    assert isinstance(app, WorkerApp)
    assert app.predict is not None
    batcher = app.predict.batcher
    assert batcher is not None
    async with LifespanManager(app, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            yield client, batcher


async def _wait(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail("condition not reached within 10 s")


async def test_concurrent_requests_share_calls_and_keep_their_answers() -> None:
    """While one call runs, nine requests queue; they go as one call of up to 8 rows, then
    the rest, and each caller gets the value of its own input."""
    model = GatedModel()
    async with serve(model, BATCHED) as (client, batcher):
        first = asyncio.ensure_future(client.post("/predict", json={"input_params": [1]}))
        await _wait(model.entered.is_set)
        others = [
            asyncio.ensure_future(client.post("/predict", json={"input_params": [n]}))
            for n in range(2, 11)
        ]
        await _wait(lambda: batcher.waiting == 10)
        # The queued requests wait on the running call, not on calls of their own.
        assert len(model.calls) == 1
        model.gate.set()
        answers = await asyncio.gather(first, *others)
    assert [a.json()["prediction"] for a in answers] == [n * 10 for n in range(1, 11)]
    assert [len(call) for call in model.calls] == [1, 8, 1]


async def test_an_items_error_stays_with_its_item() -> None:
    """A shared call that raises is retried item by item: only the bad request fails."""
    model = GatedModel()
    async with serve(model, BATCHED) as (client, batcher):
        first = asyncio.ensure_future(client.post("/predict", json={"input_params": [1]}))
        await _wait(model.entered.is_set)
        good = asyncio.ensure_future(client.post("/predict", json={"input_params": [2]}))
        bad = asyncio.ensure_future(client.post("/predict", json={"input_params": [-1]}))
        also_good = asyncio.ensure_future(client.post("/predict", json={"input_params": [3]}))
        await _wait(lambda: batcher.waiting == 4)
        model.gate.set()
        answers = await asyncio.gather(first, good, bad, also_good)
    assert [a.status_code for a in answers] == [200, 200, 500, 200]
    assert answers[1].json()["prediction"] == 20
    assert answers[2].json()["error"]["message"] == "ValueError: negative input"
    assert answers[3].json()["prediction"] == 30
    # The shared call of the three queued requests, then each of them alone.
    assert model.calls[1:] == [[[2], [-1], [3]], [[2]], [[-1]], [[3]]]


async def test_rows_route_batches_a_v2_request_and_names_a_failing_row() -> None:
    """``/predict/rows`` calls the batch predict once for the request's rows."""
    model = GatedModel()
    model.gate.set()
    async with serve(model, BATCHED) as (client, _):
        body = {"inputs": [{"name": "x", "rows": [1, 2, 3]}]}
        answer = await client.post("/predict/rows", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == [10, 20, 30]
        assert model.calls[-1] == [[1], [2], [3]]
        signature = await client.get("/predict/signature")
        assert signature.json()["batch"] is True
        assert signature.json()["inputs"] == [
            {"name": "rows", "datatype": "BYTES", "shape": [-1, -1]}
        ]
        malformed = await client.post("/predict/rows", json={"rows": [1]})
        assert malformed.status_code == 400
        assert "'inputs'" in malformed.json()["error"]["message"]


def test_batching_settings() -> None:
    """The env keys are read and checked; without a batch-capable predict they are refused."""
    assert batching_config({}) is None
    assert batching_config(BATCHED) == BatchingConfig(8, 50.0)
    with pytest.raises(InvalidBatching, match="batch-capable"):
        batching_config({"CORMORANT_PREDICT_BATCH_MAX_SIZE": "8"})
    with pytest.raises(InvalidBatching, match="at least 1"):
        batching_config({**BATCHED, "CORMORANT_PREDICT_BATCH_MAX_SIZE": "0"})
