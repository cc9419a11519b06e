"""Named inputs, one call per row: what the gateway's Open Inference Protocol sends a replica.

``POST /predict/rows`` takes ``{"inputs": [{"name": ..., "rows": [...]}], "parameters": {...}}``
(each input's value for each row of the request) and answers ``{"predictions": [...],
"version": ..., "request_id": ...}``, one prediction per row, or the first failing row's error
with its own status (400 for arguments that do not fit the function). The arguments of each
call follow ``cormorant.common.predictor.arguments``; a batch-capable predict is called once per
request, or once per group of concurrent requests when the version batches adaptively
(``batching.py``). The request is logged as one prediction: the inputs by name as its input,
the list of predictions as its output.

``GET /predict/signature`` describes the function's parameters and prediction as tensor
metadata, for the gateway's model metadata.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from random import getrandbits
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cormorant.common.errors import BadRequest, CormorantError, PayloadTooLarge
from cormorant.common.predictor import JSONValue, Predictor
from cormorant.common.predictor.arguments import (
    NamedInput,
    predict_named,
    signature_inputs,
    signature_outputs,
)
from cormorant.common.predictor.rows import declares_batch

# The same log text and trace id as /predict's events, so both read alike in the log.
from cormorant.worker.api import _error_text, _trace_id
from cormorant.worker.model import ModelState
from cormorant.worker.publishing import ReplicaEvents
from cormorant.worker.settings import WorkerSettings
from cormorant.worker.watchdog import Watchdog

log = logging.getLogger(__name__)

ROWS_PATH = "/predict/rows"
SIGNATURE_PATH = "/predict/signature"
_EXAMPLE = '{"inputs": [{"name": "x", "rows": [[1, 2], [3, 4]]}]}'

RowsRunner = Callable[
    [Predictor, Sequence[NamedInput], Mapping[str, Any]], Awaitable[list[JSONValue]]
]
"""Predicts a request's rows off the event loop (directly, or through adaptive batching)."""


def direct_runner(
    pool: Callable[[], Executor], *, batch: bool, watchdog: Watchdog | None = None
) -> RowsRunner:
    """A runner that predicts each request on its own in ``pool()`` (the worker's current
    pool), held to the per-request deadline by ``watchdog``."""
    watch = watchdog or Watchdog(None)

    async def run(
        predictor: Predictor, inputs: Sequence[NamedInput], parameters: Mapping[str, Any]
    ) -> list[JSONValue]:
        return await watch.run(
            pool(), lambda: predict_named(predictor, inputs, parameters, batch=batch)
        )

    return run


def install_infer_routes(
    app: FastAPI,
    model: ModelState,
    settings: WorkerSettings,
    runner: RowsRunner,
    events: ReplicaEvents | None = None,
    watchdog: Watchdog | None = None,
) -> None:
    """Add ``POST /predict/rows`` and ``GET /predict/signature`` to the worker's app."""
    batch = declares_batch(settings.env)
    logs = events if events is not None and events.log_predictions else None

    @app.get(SIGNATURE_PATH, include_in_schema=False)
    async def signature() -> Response:
        predictor = await model.get()
        return JSONResponse(
            {
                "inputs": signature_inputs(predictor, batch=batch),
                "outputs": signature_outputs(predictor),
                "batch": batch,
                "version": settings.version,
            }
        )

    @app.post(ROWS_PATH, include_in_schema=False)
    async def predict_rows(request: Request) -> Response:
        received, started = time.time(), time.perf_counter()
        # A request mirrored to a shadow version is logged by the gateway, tagged shadow.
        logging_to = None if request.headers.get("x-cormorant-shadow") else logs
        request_id = request.headers.get("x-request-id") or f"{getrandbits(128):032x}"
        traceparent = request.headers.get("traceparent")
        status = 500
        logged_input: Any = None
        output: Any = None
        error: str | None = None
        size = 0
        try:
            body = await _read(request, settings.max_body_bytes)
            size = len(body)
            inputs, parameters = _parse(body)
            logged_input = {i.name: list(i.rows) for i in inputs}
            predictor = await model.get()
            predictions = await runner(predictor, inputs, parameters)
            answer = {"predictions": predictions, "version": settings.version}
            content = orjson.dumps({**answer, "request_id": request_id})
            status = 200
            output = predictions
            size += len(content)
            return Response(content, 200, media_type="application/json")
        except CormorantError as exc:
            status = exc.status_code
            error = _error_text(exc)
            if watchdog is not None and watchdog.ending is not None:
                # Past the deadline: answer once this worker has stopped taking requests.
                await watchdog.settle()
            return JSONResponse(exc.to_body(), exc.status_code)
        except Exception as exc:
            error = _error_text(exc)
            log.exception("predict rows failed unexpectedly", extra={"request_id": request_id})
            failed = CormorantError("the worker failed; see its logs")
            return JSONResponse(failed.to_body(), 500)
        finally:
            if logging_to is not None:
                limit = settings.log_max_bytes
                if size > limit:
                    logged_input = f"(input and output of {size} bytes, over {limit}: not kept)"
                    output = None
                trace_id = _trace_id(traceparent.encode("latin-1") if traceparent else None)
                elapsed = time.perf_counter() - started
                logging_to.prediction(request_id, received, elapsed, status, logged_input,
                                      output, error, trace_id, min(size, limit))  # fmt: skip


async def _read(request: Request, limit: int) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
    return bytes(body)


def _parse(body: bytes) -> tuple[list[NamedInput], dict[str, Any]]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON ({exc}); send e.g. {_EXAMPLE}") from exc
    raw = document.get("inputs") if isinstance(document, dict) else None
    if not isinstance(raw, list) or not all(
        isinstance(i, dict) and isinstance(i.get("name"), str) and isinstance(i.get("rows"), list)
        for i in raw
    ):
        raise BadRequest(f"the body must hold 'inputs', a list of {{name, rows}}, e.g. {_EXAMPLE}")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    return [NamedInput(i["name"], i["rows"]) for i in raw], parameters
