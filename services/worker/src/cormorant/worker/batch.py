"""``POST /predict/batch``: many rows in one request, one result per row (batch jobs' path).

Body ``{"rows": [[...], ...]}``; answer ``{"results": [{"prediction": v} | {"error": "..."}],
"version": ...}`` in row order. A raising row gets an error result; the request still succeeds.

A body sent as an Arrow IPC stream (``Content-Type: application/vnd.apache.arrow.stream``, as
batch jobs send their chunks) is answered as one: a ``prediction`` column of output cells and an
``error`` column (``cormorant.common.predictor.arrow_rows``).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from cormorant.common.errors import BadRequest, PayloadTooLarge
from cormorant.common.predictor import Predictor
from cormorant.common.predictor.arrow_rows import ARROW_STREAM, decode_columns, encode_results
from cormorant.common.predictor.rows import declares_batch, predict_columns, predict_rows
from cormorant.worker.model import ModelState
from cormorant.worker.settings import WorkerSettings

BATCH_PATH = "/predict/batch"
_EXAMPLE = '{"rows": [[1, 2], [3, 4]]}'


def install_batch_route(
    app: FastAPI, model: ModelState, pool: Executor, settings: WorkerSettings
) -> None:
    """Add ``POST /predict/batch`` to the worker's app."""
    batch = declares_batch(settings.env)

    @app.post(BATCH_PATH, include_in_schema=False)
    async def predict_batch(request: Request) -> Response:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise PayloadTooLarge(
                    f"the request body is larger than {settings.max_body_bytes} bytes; "
                    "send fewer rows per request"
                )
        loop = asyncio.get_running_loop()
        if request.headers.get("content-type", "").startswith(ARROW_STREAM):
            predictor = await model.get()
            data = bytes(body)
            answer = await loop.run_in_executor(
                pool, lambda: _arrow_answer(predictor, data, batch, settings.version)
            )
            return Response(answer, 200, media_type=ARROW_STREAM)
        rows = _parse_rows(bytes(body))
        predictor = await model.get()
        results = await loop.run_in_executor(
            pool, lambda: predict_rows(predictor, rows, batch=batch)
        )
        document = {"results": results, "version": settings.version}
        return Response(orjson.dumps(document), 200, media_type="application/json")


def _arrow_answer(predictor: Predictor, body: bytes, batch: bool, version: str) -> bytes:
    # Decoded here too, off the loop: pyarrow is imported by the first such request.
    columns, count = decode_columns(body)
    values, errors = predict_columns(predictor, columns, count, batch=batch)
    return encode_results(values, errors, version)


def _parse_rows(body: bytes) -> list[object]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"the request body is not valid JSON ({exc}); send e.g. {_EXAMPLE}"
        ) from exc
    rows = document.get("rows") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        raise BadRequest(
            f"the request body must be a JSON object with a 'rows' list, e.g. {_EXAMPLE}"
        )
    return rows
