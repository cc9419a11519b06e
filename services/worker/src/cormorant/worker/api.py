"""``POST /predict``: read the input, run predict off the loop, answer JSON or a stream.

The handler answers errors itself rather than raising into the app's handlers: it has to
count every status for the metrics and log every prediction, and it is the hot path.

Every answered request is logged once (``ReplicaEvents.prediction``) with the input as
received: the ``input_params`` value of a JSON body; the text of a raw
(``application/octet-stream``) body, or its Base64 when it is not UTF-8; the body's text when
it was not valid JSON. The output is the prediction, or the list of a stream's chunks as they
were sent. An input or output over ``log_max_bytes`` is logged as a note of its size.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from random import getrandbits
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from cormorant.common.errors import BadRequest, CormorantError, PayloadTooLarge
from cormorant.common.predictor import END, ChunkStream, FunctionRaised, Outcome, Prediction
from cormorant.worker.batching import AdaptiveBatcher
from cormorant.worker.metrics import WorkerMetrics
from cormorant.worker.model import ModelState
from cormorant.worker.publishing import ReplicaEvents, loggable_bytes, too_large
from cormorant.worker.watchdog import Watchdog, is_out_of_memory

log = logging.getLogger(__name__)

# Renders one stream item (a chunk or the closing error) with its optional SSE event name.
Encoder = Callable[[dict[str, Any], str | None], bytes]

PREDICT_PATH = "/predict"
REQUEST_ID_HEADER = "X-Request-ID"
SHADOW_HEADER = b"x-cormorant-shadow"
"""Set by the gateway on a request mirrored to a shadow version: not logged here."""
JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
_BODY_EXAMPLE = '{"input_params": [1, 2, 3]}'
# Not an HTTP status: the client went away before its answer was complete (as nginx logs it).
CLIENT_GONE = 499
# W3C trace context: version-traceid-parentid-flags, lowercase hex.
_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_NO_TRACE = b"0" * 32


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
        events: ReplicaEvents | None = None,
        log_max_bytes: int = 256 * 1024,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.model = model
        self.pool = pool
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.version = version
        self.events = events if events is not None and events.log_predictions else None
        """Where each prediction is logged; None when prediction logging is off."""
        self.log_max_bytes = log_max_bytes
        self.batcher: AdaptiveBatcher | None = None
        """Set when the version batches adaptively: each request is one row of a shared call."""
        self.watchdog = watchdog or Watchdog(None)
        """Ends this worker when a predict call passes the deadline or runs out of memory."""

    async def handle(self, request: Request) -> Response:
        """Answer one predict request."""
        started = time.perf_counter()
        received = time.time()
        self.metrics.in_flight.inc()
        events = self.events
        streaming = False
        status = 500
        request_id: str | None = None
        length: bytes | None = None
        content_type: bytes | None = None
        traceparent: bytes | None = None
        for name, value in request.scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")
            elif name == b"content-length":
                length = value
            elif name == b"content-type":
                content_type = value
            elif name == b"traceparent":
                traceparent = value
            elif name == SHADOW_HEADER:
                # A mirrored request: the gateway logs the answer itself, tagged shadow.
                events = None
        # The gateway's id when it sent one, so its log, ours and the answer agree.
        request_id = request_id or f"{getrandbits(128):032x}"
        logged_input: Any = None
        output: Any = None
        error: str | None = None
        logged_size = 0  # about the bytes of the logged input and output
        try:
            body = await self._read_body(request, length)
            if events is not None:
                size = len(body)
                limit = self.log_max_bytes
                logged_input = body if size <= limit else too_large("input", size, limit)
                logged_size = min(size, limit)
            input_value = _parse_input(body, content_type)
            if logged_input is body and not isinstance(input_value, bytes):
                logged_input = input_value
            predictor = await self.model.get()
            if self.batcher is not None:
                outcome: Outcome = Prediction(await self.batcher.one(predictor, input_value))
            else:
                outcome = await self.watchdog.run(self.pool, predictor.predict, input_value)
            if isinstance(outcome, Prediction):
                # The gateway passes this body through untouched, so it carries the version
                # and the gateway's request id itself.
                answer = {"prediction": outcome.value, "version": self.version,
                          "request_id": request_id}  # fmt: skip
                content = orjson.dumps(answer)
                status = 200
                if events is not None:
                    size = len(content)
                    limit = self.log_max_bytes
                    output = outcome.value if size <= limit else too_large("output", size, limit)
                    logged_size += min(size, limit)
                return Response(content, 200, {REQUEST_ID_HEADER: request_id}, JSON)
            stream = _LoggedStream(
                request_id, received, logged_input, traceparent, logged_size, events
            )
            response = await self._stream(outcome, request, started, stream)
            streaming = True
            status = 200
            return response
        except CormorantError as exc:
            status = exc.status_code
            error = _error_text(exc)
            if status >= 500:
                log.warning("predict failed: %s", exc.message,
                            extra=_log_fields(request_id, traceparent))  # fmt: skip
                if is_out_of_memory(exc):
                    self.watchdog.condemn("oom")
            if self.watchdog.ending is not None:
                await self.watchdog.settle()
            return _error_response(exc, request_id)
        except Exception as exc:
            error = _error_text(exc)
            if is_out_of_memory(exc):
                self.watchdog.condemn("oom")
                await self.watchdog.settle()
            log.exception("predict request failed unexpectedly",
                          extra=_log_fields(request_id, traceparent))  # fmt: skip
            return _error_response(CormorantError("the worker failed; see its logs"), request_id)
        except asyncio.CancelledError:
            status = CLIENT_GONE
            error = "CancelledError: the request was cancelled before it was answered"
            raise
        finally:
            # A stream is counted and logged when it ends, by the generator that sends it.
            if not streaming:
                elapsed = time.perf_counter() - started
                self.metrics.in_flight.dec()
                self.metrics.observe(status, elapsed)
                if events is not None:
                    if type(logged_input) is bytes:
                        logged_input = loggable_bytes(logged_input)
                    events.prediction(request_id, received, elapsed, status, logged_input,
                                      output, error, _trace_id(traceparent),
                                      logged_size)  # fmt: skip

    async def _read_body(self, request: Request, length: bytes | None) -> bytes:
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            raise BodyTooLarge(self.max_body_bytes)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise BodyTooLarge(self.max_body_bytes)
        return bytes(body)

    async def _stream(
        self, stream: ChunkStream, request: Request, started: float, logged: _LoggedStream
    ) -> Response:
        try:
            # The first chunk is fetched before answering, so an error raised as the generator
            # starts still gets its own status instead of a 200 with an error line.
            first = await self.watchdog.run(self.pool, stream.next_chunk)
        except BaseException:
            self._close_later(stream)
            raise
        sse = SSE in request.headers.get("accept", "")
        encode = _sse_event if sse else _ndjson_line
        return StreamingResponse(
            self._send_chunks(stream, first, encode, started, logged),
            media_type=SSE if sse else NDJSON,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def _send_chunks(
        self,
        stream: ChunkStream,
        first: object,
        encode: Encoder,
        started: float,
        logged: _LoggedStream,
    ) -> AsyncIterator[bytes]:
        status = 200
        error: str | None = None
        # Chunks are kept for the log as they are sent, until they outgrow log_max_bytes.
        chunks: list[Any] | None = [] if logged.events is not None else None
        size = 0
        sent = 0
        finished = False
        chunk = first
        try:
            while chunk is not END:
                line = encode({"prediction": chunk}, None)
                if chunks is not None:
                    size += len(line)
                    if size <= self.log_max_bytes:
                        chunks.append(chunk)
                yield line
                sent += 1
                chunk = await self.watchdog.run(self.pool, stream.next_chunk)
            finished = True
        except CormorantError as exc:
            # Headers are gone already: the error travels as the stream's last item.
            status = exc.status_code
            error = _error_text(exc)
            finished = True
            log.warning("predict stream failed: %s", exc.message,
                        extra=_log_fields(logged.request_id, logged.traceparent))  # fmt: skip
            yield encode(exc.to_body(), "error")
        except Exception as exc:
            status = 500
            error = _error_text(exc)
            finished = True
            log.exception("predict stream failed unexpectedly",
                          extra=_log_fields(logged.request_id, logged.traceparent))  # fmt: skip
            yield encode(CormorantError("the worker failed; see its logs").to_body(), "error")
        finally:
            if not finished:
                # Cancelled or closed while sending: the client hung up.
                status = CLIENT_GONE
                error = f"ClientGone: the client went away after {sent} chunk(s)"
            self._close_later(stream)
            elapsed = time.perf_counter() - started
            self.metrics.in_flight.dec()
            self.metrics.observe(status, elapsed)
            events = logged.events
            if events is not None:
                output = (
                    chunks
                    if size <= self.log_max_bytes
                    else too_large("output", size, self.log_max_bytes)
                )
                events.prediction(logged.request_id, logged.received, elapsed, status,
                                  logged.input_for_log(), output, error,
                                  _trace_id(logged.traceparent),
                                  logged.size + min(size, self.log_max_bytes))  # fmt: skip

    def _close_later(self, stream: ChunkStream) -> None:
        # Not awaited: this may run while a client's disconnect cancels us; the stream's lock
        # makes close wait for a chunk still being produced in the pool.
        try:
            self.pool.submit(stream.close)
        except RuntimeError:  # the pool is shut down: the process is stopping
            stream.close()


class _LoggedStream:
    """What a stream's log event needs from the request that started it."""

    __slots__ = ("events", "input", "received", "request_id", "size", "traceparent")

    def __init__(
        self,
        request_id: str,
        received: float,
        input_value: Any,
        traceparent: bytes | None,
        size: int,
        events: ReplicaEvents | None = None,
    ) -> None:
        self.events = events
        """Where the stream is logged when it ends; None when it is not."""
        self.request_id = request_id
        self.received = received
        self.input = input_value
        self.traceparent = traceparent
        self.size = size
        """About the bytes of the logged input."""

    def input_for_log(self) -> Any:
        """The input as the log keeps it (raw bytes as text or Base64)."""
        value = self.input
        return loggable_bytes(value) if type(value) is bytes else value


class PredictEndpoint:
    """Pure ASGI middleware that answers ``/predict`` itself and passes everything else on."""

    def __init__(self, app: ASGIApp, *, handler: PredictHandler) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route ``/predict`` to ``answer``, anything else to the wrapped app."""
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH:
            await self.app(scope, receive, send)
        else:
            await answer_predict(self.handler, scope, receive, send)


async def answer_predict(
    handler: PredictHandler, scope: Scope, receive: Receive, send: Send
) -> None:
    """Answer a request for ``/predict``: POST predicts, other methods get 405."""
    if scope["method"] == "POST":
        response = await handler.handle(Request(scope, receive))
    else:
        error = {"error": {"code": "method_not_allowed", "message": "use POST to predict"}}
        response = Response(orjson.dumps(error), 405, {"Allow": "POST"}, JSON)
    await response(scope, receive, send)


def _ndjson_line(document: dict[str, Any], event: str | None) -> bytes:
    return orjson.dumps(document) + b"\n"


def _sse_event(document: dict[str, Any], event: str | None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + orjson.dumps(document) + b"\n\n"


def _parse_input(body: bytes, content_type: bytes | None) -> Any:
    if content_type is not None and content_type.startswith(b"application/octet-stream"):
        # Raw bytes are the input itself, as a Kafka message value would be.
        return body
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


def _error_text(exc: BaseException) -> str:
    """``Type: message`` of a failure, for the log; the user's own exception when it raised."""
    if isinstance(exc, FunctionRaised):
        return exc.message  # already "ValueError: ...", or "preprocess raised ValueError: ..."
    if isinstance(exc, CormorantError):
        return f"{type(exc).__name__}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _trace_id(traceparent: bytes | None) -> str | None:
    if traceparent is None:
        return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None or match.group(1) == _NO_TRACE:
        return None
    return match.group(1).decode("ascii")


def _log_fields(request_id: str, traceparent: bytes | None) -> dict[str, str]:
    """The request's ids for a log line (JSON logs carry them as fields)."""
    fields = {"request_id": request_id}
    trace_id = _trace_id(traceparent)
    if trace_id is not None:
        fields["trace_id"] = trace_id
    return fields


def _error_response(exc: CormorantError, request_id: str) -> Response:
    return Response(orjson.dumps(exc.to_body()), exc.status_code, {REQUEST_ID_HEADER: request_id},
                    JSON)  # fmt: skip
