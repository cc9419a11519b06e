"""``POST /predict/batch``: rows in, one result per row in order, a raising row isolated."""

from __future__ import annotations

import datetime
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
from asgi_lifespan import LifespanManager

from cormorant.common.predictor import Predictor
from cormorant.common.predictor.arrow_rows import ARROW_STREAM, encode_batch, prediction_cells
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


def _arrow(columns: dict[str, list[Any]]) -> bytes:
    return encode_batch(pa.RecordBatch.from_pydict(columns))


async def _arrow_cells(client: httpx.AsyncClient, body: bytes) -> dict[str, list[Any]]:
    response = await client.post(
        "/predict/batch", content=body, headers={"Content-Type": ARROW_STREAM}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == ARROW_STREAM
    columns: dict[str, list[Any]] = pa.ipc.open_stream(response.content).read_all().to_pydict()
    return columns


def various(kind: str, x: float) -> Any:
    """A prediction of each kind a predict function returns, or a raise."""
    values: dict[str, Any] = {
        "int": int(x),
        "float": x / 4,
        "str": f"v{x}",
        "none": None,
        "bool": x > 1,
        "dict": {"x": x, "ok": True},
        "list": (x, "a"),
        "nan": math.nan,
        "numpy": np.float64(x),
        "huge": 2**63 + int(x),
    }
    if kind == "raise":
        raise ValueError(f"bad {x}")
    if kind == "stop":
        raise StopIteration
    return values[kind]


async def test_arrow_rows_give_the_same_cells_and_errors_as_json_rows() -> None:
    """A chunk sent as Arrow is answered with the output cells its JSON rows would give."""
    kinds = ["int", "float", "str", "none", "bool", "dict", "list", "nan", "numpy", "raise", "stop"]
    chunks = [[kind] for kind in kinds] + [kinds, ["float", "int"], ["float", "nan"]]
    chunks += [["float"] * 4 + ["huge"] * 2]
    async with worker(Predictor(various)) as client:
        for chosen in chunks:
            xs = [float(i) + 0.5 for i in range(len(chosen))]
            cells = await _arrow_cells(client, _arrow({"kind": chosen, "x": xs}))
            rows = [[kind, x] for kind, x in zip(chosen, xs, strict=True)]
            response = await client.post("/predict/batch", json={"rows": rows})
            results = response.json()["results"]
            expected = prediction_cells([r.get("prediction") for r in results]).to_pylist()
            assert cells["prediction"] == expected, chosen
            assert cells["error"] == [r.get("error") for r in results], chosen
        assert (await _arrow_cells(client, _arrow({"kind": ["raise"], "x": [2.0]})))["error"] == [
            "ValueError: bad 2.0"
        ]


async def test_arrow_values_reach_predict_as_json_would_decode_them() -> None:
    """Integers, floats, strings, booleans and nulls; an infinite float arrives as None."""

    def kinds(*row: Any) -> str:
        return " ".join(f"{type(v).__name__}:{v}" for v in row)

    body = _arrow(
        {
            "i": [1, None],
            "f": [0.5, math.inf],
            "s": ["a", None],
            "b": [True, False],
            "n": pa.nulls(2),
        }
    )
    async with worker(Predictor(kinds)) as client:
        cells = await _arrow_cells(client, body)
    assert cells["prediction"] == [
        "int:1 float:0.5 str:a bool:True NoneType:None",
        "NoneType:None NoneType:None NoneType:None bool:False NoneType:None",
    ]


async def test_a_bad_arrow_body_is_400_with_what_to_send() -> None:
    """A body that is not an Arrow stream, or has a column type JSON would not carry, is 400."""
    async with worker(Predictor(add_or_raise)) as client:
        response = await client.post(
            "/predict/batch", content=b"not arrow", headers={"Content-Type": ARROW_STREAM}
        )
        assert response.status_code == 400
        assert "not an Arrow IPC stream" in response.json()["error"]["message"]
        dated = _arrow({"when": [datetime.date(2026, 12, 4)]})
        response = await client.post(
            "/predict/batch", content=dated, headers={"Content-Type": ARROW_STREAM}
        )
        assert response.status_code == 400
        message = response.json()["error"]["message"]
        assert "column 'when' has type date32" in message
        assert "JSON rows" in message


async def test_a_batch_capable_predict_gets_arrow_rows_as_lists_once_per_chunk() -> None:
    """The chunk's rows arrive as lists, as with JSON; a raising chunk goes row by row."""
    calls: list[Any] = []

    def total(*args: Any) -> Any:
        calls.append(args)
        if len(args) == 1:
            if any(row[0] < 0 for row in args[0]):
                raise ValueError("a negative row")
            return [row[0] + row[1] for row in args[0]]
        return add_or_raise(*args)

    env = {"CORMORANT_PREDICT_BATCH": "true"}
    async with worker(Predictor(total), env=env) as client:
        cells = await _arrow_cells(client, _arrow({"a": [1, 2], "b": [3, 4]}))
        assert cells == {"prediction": ["4", "6"], "error": [None, None]}
        assert calls == [([[1, 3], [2, 4]],)]
        cells = await _arrow_cells(client, _arrow({"a": [-1, 2], "b": [3, 4]}))
        assert cells == {"prediction": [None, "6"], "error": ["ValueError: negative -1", None]}
