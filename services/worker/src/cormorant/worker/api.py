"""``POST /predict``: read the input, run predict off the loop, answer JSON or a stream.

The handler answers errors itself rather than raising into the app's handlers: it has to
count every status for the metrics, and it is the hot path.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import request_response
from starlette.types import ASGIApp, Receive, Scope, Send

from cormorant.common.errors import BadRequest, CormorantError, PayloadTooLarge
from cormorant.common.predictor import END, ChunkStream, Prediction
from cormorant.worker.metrics import WorkerMetrics
from cormorant.worker.model import ModelState

log = logging.getLogger(__name__)

# Renders one stream item (a chunk or the closing error) with its optional SSE event name.
Encoder = Callable[[dict[str, Any], str | None], bytes]

PREDICT_PATH = "/predict"
REQUEST_ID_HEADER = "X-Request-ID"
JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
_BODY_EXAMPLE = '{"input_params": [1, 2, 3]}'


class BodyTooLarge(PayloadTooLarge):
    """The request body exceeds ``max_body_bytes``."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than {limit} bytes", details={"limit": limit})


class PredictHandler:
    """The ``/predict`` endpoint of one worker process."""

    def __init__(
        self,
        model: ModelState,
        pool: Executor,
        metrics: WorkerMetrics,
        *,
        max_body_bytes: int,
        version: str,
    ) -> None:
        self.model = model
        self.pool = pool
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.version = version

    async def handle(self, request: Request) -> Response:
        """Answer one predict request."""
        started = time.perf_counter()
        self.metrics.in_flight.inc()
        streaming = False
        status = 500
        try:
            input_value = await self._read_input(request)
            predictor = await self.model.get()
            loop = asyncio.get_running_loop()
            outcome = await loop.run_in_executor(self.pool, predictor.predict, input_value)
            if isinstance(outcome, Prediction):
                status = 200
                # The gateway passes this body through untouched, so it carries the version
                # and the gateway's request id itself.
                request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
                body = {
                    "prediction": outcome.value,
                    "version": self.version,
                    "request_id": request_id,
                }
                return Response(orjson.dumps(body), 200, {REQUEST_ID_HEADER: request_id}, JSON)
            response = await self._stream(outcome, request, started)
            streaming = True
            status = 200
            return response
        except CormorantError as exc:
            status = exc.status_code
            if status >= 500:
                log.warning("predict failed: %s", exc.message)
            return _error_response(exc)
        except Exception:
            log.exception("predict request failed unexpectedly")
            return _error_response(CormorantError("the worker failed; see its logs"))
        finally:
            # A stream is counted when it ends, by the generator that sends it.
            if not streaming:
                self.metrics.in_flight.dec()
                self.metrics.observe(status, time.perf_counter() - started)

    async def _read_input(self, request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise BodyTooLarge(self.max_body_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/octet-stream"):
            # Raw bytes are the input itself, as a Kafka message value would be.
            return bytes(body)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(
                f"the request body is not valid JSON ({exc}); send e.g. {_BODY_EXAMPLE}"
            ) from exc
        if not isinstance(document, dict) or "input_params" not in document:
            raise BadRequest(
                f"the request body must be a JSON object with an 'input_params' key, "
                f"e.g. {_BODY_EXAMPLE}"
            )
        return document["input_params"]

    async def _stream(self, stream: ChunkStream, request: Request, started: float) -> Response:
        loop = asyncio.get_running_loop()
        try:
            # The first chunk is fetched before answering, so an error raised as the generator
            # starts still gets its own status instead of a 200 with an error line.
            first = await loop.run_in_executor(self.pool, stream.next_chunk)
        except BaseException:
            self._close_later(stream)
            raise
        sse = SSE in request.headers.get("accept", "")
        encode = _sse_event if sse else _ndjson_line
        return StreamingResponse(
            self._send_chunks(stream, first, encode, started),
            media_type=SSE if sse else NDJSON,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _send_chunks(
        self,
        stream: ChunkStream,
        first: object,
        encode: Encoder,
        started: float,
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        status = 200
        chunk = first
        try:
            while chunk is not END:
                yield encode({"prediction": chunk}, None)
                chunk = await loop.run_in_executor(self.pool, stream.next_chunk)
        except CormorantError as exc:
            # Headers are gone already: the error travels as the stream's last item.
            status = exc.status_code
            log.warning("predict stream failed: %s", exc.message)
            yield encode(exc.to_body(), "error")
        except Exception:
            status = 500
            log.exception("predict stream failed unexpectedly")
            yield encode(CormorantError("the worker failed; see its logs").to_body(), "error")
        finally:
            self._close_later(stream)
            self.metrics.in_flight.dec()
            self.metrics.observe(status, time.perf_counter() - started)

    def _close_later(self, stream: ChunkStream) -> None:
        # Not awaited: this may run while a client's disconnect cancels us; the stream's lock
        # makes close wait for a chunk still being produced in the pool.
        try:
            self.pool.submit(stream.close)
        except RuntimeError:  # the pool is shut down: the process is stopping
            stream.close()


class PredictEndpoint:
    """Pure ASGI middleware that answers ``/predict`` itself and passes everything else on."""

    def __init__(self, app: ASGIApp, *, handler: PredictHandler) -> None:
        self.app = app
        self.handler = handler
        self._predict = request_response(handler.handle)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route ``POST /predict`` to the handler, anything else to the wrapped app."""
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH:
            await self.app(scope, receive, send)
        elif scope["method"] == "POST":
            await self._predict(scope, receive, send)
        else:
            error = {"error": {"code": "method_not_allowed", "message": "use POST to predict"}}
            response = Response(orjson.dumps(error), 405, {"Allow": "POST"}, JSON)
            await response(scope, receive, send)


def _ndjson_line(document: dict[str, Any], event: str | None) -> bytes:
    return orjson.dumps(document) + b"\n"


def _sse_event(document: dict[str, Any], event: str | None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(document) + b"\n\n"


def _error_response(exc: CormorantError) -> Response:
    return Response(orjson.dumps(exc.to_body()), exc.status_code, None, JSON)
