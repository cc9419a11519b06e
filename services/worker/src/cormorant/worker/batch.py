"""``POST /predict/batch``: many rows in one request, one result per row (batch jobs' path).

Body ``{"rows": [[...], ...]}``; answer ``{"results": [{"prediction": v} | {"error": "..."}],
"version": ...}`` in row order. A raising row gets an error result; the request still succeeds.

A body sent as an Arrow IPC stream (``Content-Type: application/vnd.apache.arrow.stream``, as
batch jobs send their chunks) is answered as one: a ``prediction`` column of output cells and an
``error`` column (``cormorant.common.predictor.arrow_rows``).

A chunk of a job that records its rows (``Cormorant-Log-As``, ``Cormorant-First-Row``) is also
logged, one prediction per row, when the replica logs predictions: the rows' values as input,
their prediction or error, each row's share of the chunk's time as its latency. The packs are
built off the event loop and sent after the answer, as a web prediction's are.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from cormorant.common.errors import BadRequest, PayloadTooLarge
from cormorant.common.predictor.arrow_rows import ARROW_STREAM, decode_columns, encode_results
from cormorant.common.predictor.rows import (
    FIRST_ROW_HEADER,
    LOG_AS_HEADER,
    declares_batch,
    predict_columns,
    predict_rows,
    rows_of,
)
from cormorant.worker.model import ModelState
from cormorant.worker.publishing import ReplicaEvents, RowPacks
from cormorant.worker.settings import WorkerSettings

BATCH_PATH = "/predict/batch"
_EXAMPLE = '{"rows": [[1, 2], [3, 4]]}'


def install_batch_route(
    app: FastAPI,
    model: ModelState,
    pool: Executor,
    settings: WorkerSettings,
    events: ReplicaEvents | None = None,
) -> None:
    """Add ``POST /predict/batch`` to the worker's app."""
    batch = declares_batch(settings.env)
    logs = events if events is not None and events.log_predictions else None

    @app.post(BATCH_PATH, include_in_schema=False)
    async def predict_batch(request: Request) -> Response:
        received, started = time.time(), time.perf_counter()
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > settings.max_body_bytes:
                raise PayloadTooLarge(
                    f"the request body is larger than {settings.max_body_bytes} bytes; "
                    "send fewer rows per request"
                )
        log_as = request.headers.get(LOG_AS_HEADER) if logs is not None else None
        first_row = _first_row(request.headers.get(FIRST_ROW_HEADER)) if log_as else 1
        loop = asyncio.get_running_loop()
        packs: RowPacks | None = None
        if request.headers.get("content-type", "").startswith(ARROW_STREAM):
            predictor = await model.get()
            data = bytes(body)

            def arrow() -> tuple[bytes, RowPacks | None]:
                columns, count = decode_columns(data)
                values, errors = predict_columns(predictor, columns, count, batch=batch)
                answer = encode_results(values, errors, settings.version)
                if logs is None or log_as is None:
                    return answer, None
                return answer, logs.row_packs(
                    log_as, first_row, rows_of(columns, count), values, errors, received,
                    time.perf_counter() - started, len(data) + len(answer),
                )  # fmt: skip

            content, packs = await loop.run_in_executor(pool, arrow)
            response = Response(content, 200, media_type=ARROW_STREAM)
        else:
            rows = _parse_rows(bytes(body))
            predictor = await model.get()

            def plain() -> tuple[bytes, RowPacks | None]:
                results = predict_rows(predictor, rows, batch=batch)
                answer = orjson.dumps({"results": results, "version": settings.version})
                if logs is None or log_as is None:
                    return answer, None
                outputs: list[Any] = [result.get("prediction") for result in results]
                errors: list[str | None] = [result.get("error") for result in results]
                return answer, logs.row_packs(
                    log_as, first_row, rows, outputs, errors, received,
                    time.perf_counter() - started, len(body) + len(answer),
                )  # fmt: skip

            content, packs = await loop.run_in_executor(pool, plain)
            response = Response(content, 200, media_type="application/json")
        if logs is not None and packs is not None:
            logs.publish_packs(packs)
        return response


def _first_row(value: str | None) -> int:
    if value is None or not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise BadRequest(
            f"{FIRST_ROW_HEADER} must be the number of the chunk's first row (from 1), not "
            f"{value!r}"
        )
    return int(value)


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
