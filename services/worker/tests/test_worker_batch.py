"""``POST /predict/batch``: rows in, one result per row in order, a raising row isolated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from asgi_lifespan import LifespanManager

from cormorant.common.predictor import Predictor
from cormorant.worker import WorkerSettings, create_app


@asynccontextmanager
async def worker(predictor: Predictor, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    values: dict[str, Any] = {"publish_metrics": False, "log_predictions": False}
    app = create_app(WorkerSettings(**{**values, **overrides}), predictor, threads=2)
    async with LifespanManager(app, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            yield client


def add_or_raise(a: int, b: int) -> int:
    if a < 0:
        raise ValueError(f"negative {a}")
    return a + b


async def test_rows_are_predicted_in_order_and_a_raising_row_carries_its_error() -> None:
    """Each row is spread as arguments; the raising row gets an error, the others a value."""
    async with worker(Predictor(add_or_raise)) as client:
        response = await client.post("/predict/batch", json={"rows": [[1, 2], [-1, 0], [3, 4]]})
        assert response.status_code == 200
        assert response.json()["results"] == [
            {"prediction": 3},
            {"error": "ValueError: negative -1"},
            {"prediction": 7},
        ]
        # The replica still serves after a raising row.
        assert (await client.post("/predict", json={"input_params": [5, 5]})).json()[
            "prediction"
        ] == 10


async def test_a_batch_capable_predict_is_called_once_per_chunk() -> None:
    """With CORMORANT_PREDICT_BATCH=true predict gets every row at once."""
    calls: list[int] = []

    def total(rows: list[list[int]]) -> list[int]:
        calls.append(len(rows))
        return [sum(row) for row in rows]

    env = {"CORMORANT_PREDICT_BATCH": "true"}
    async with worker(Predictor(total), env=env) as client:
        response = await client.post("/predict/batch", json={"rows": [[1, 2], [3, 4, 5]]})
        assert response.json()["results"] == [{"prediction": 3}, {"prediction": 12}]
        assert calls == [2]


async def test_a_body_without_rows_is_400_with_an_example() -> None:
    """A body that is not ``{"rows": [...]}`` says what to send."""
    async with worker(Predictor(add_or_raise)) as client:
        response = await client.post("/predict/batch", json={"input_params": [1, 2]})
        assert response.status_code == 400
        assert "'rows'" in response.json()["error"]["message"]
