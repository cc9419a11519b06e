"""``POST /api/v1/endpoints/{slug}/predict`` as raw ASGI, answered before FastAPI sees it.

This is the hot path: FastAPI's per-request machinery (its telemetry check and body-limit
layers, Starlette's error middleware, the route walk, dependency solving, request and
response objects) would cost as much as the rest of the hop, so the app hands predict
requests straight to ``PredictHandler``, which reads the ASGI scope directly, never parses the
JSON it forwards, and passes the worker's answer through piece by piece. It answers its own
errors, since it has to count every status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from random import getrandbits

import orjson
from starlette.types import Receive, Scope, Send

from cormorant.common.errors import CormorantError
from cormorant.gateway.errors import BodyTooLarge
from cormorant.gateway.prediction_log import is_unanswered, log_fields
from cormorant.gateway.proxy import Answer, PredictPath
from cormorant.gateway.routing import Route

log = logging.getLogger(__name__)

PREFIX = "/api/v1/endpoints/"
SUFFIX = "/predict"
_PREFIX_LEN = len(PREFIX)
_SUFFIX_LEN = len(SUFFIX)
_TRACE_HEADERS = frozenset({b"traceparent", b"tracestate"})
# Version 4 and the RFC 4122 variant, as uuid.uuid4() sets them.
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)
# Not an HTTP status: the client went away before its request was whole (as nginx logs it).
CLIENT_GONE = 499


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


def predict_slug(path: str) -> str | None:
    """The slug of a ``/api/v1/endpoints/{slug}/predict`` path, else None."""
    if path.endswith(SUFFIX) and path.startswith(PREFIX):
        slug = path[_PREFIX_LEN:-_SUFFIX_LEN]
        if slug and "/" not in slug:
            return slug
    return None


def new_request_id() -> bytes:
    """A random UUID4 in hex, from the process's PRNG: an id, not a secret, so no syscall."""
    bits = getrandbits(128) & _UUID4_CLEAR | _UUID4_SET
    return b"%032x" % bits


class PredictHandler:
    """Answers predict requests: headers in, auth, route, the replica's answer out."""

    def __init__(self, path: PredictPath, *, max_body_bytes: int) -> None:
        self.path = path
        self.credentials = path.credentials
        self.metrics = path.metrics
        self.prediction_log = path.prediction_log
        self.max_body_bytes = max_body_bytes

    async def handle(self, slug: str, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one predict request."""
        started = time.perf_counter()
        request_id = new_request_id()
        metrics = self.metrics
        metrics.in_flight_now += 1
        status = 500
        endpoint = version = ""
        answer: Answer | None = None
        # Known once auth passed and the endpoint exists: only then is a failure logged.
        route: Route | None = None
        body: bytes | None = None
        content_type = b"application/json"
        trace_headers = None
        try:
            if scope["method"] != "POST":
                status = 405
                await _send_error(send, 405, "method_not_allowed", "use POST to predict",
                                  request_id, [(b"allow", b"POST")])  # fmt: skip
                return
            authorization = length = accept = pinned = user = None
            for name, value in scope["headers"]:
                if name == b"authorization":
                    authorization = value
                elif name == b"content-length":
                    length = value
                elif name == b"content-type":
                    content_type = value
                elif name == b"accept":
                    accept = value
                elif name == b"x-cormorant-version":
                    pinned = value.decode("latin-1").strip() or None
                elif name == b"x-cormorant-user":
                    user = value.strip() or None
                elif name in _TRACE_HEADERS:
                    trace_headers = [*(trace_headers or ()), (name, value)]
            await self.credentials.check_predict(
                authorization.decode("latin-1") if authorization is not None else None, slug
            )
            route = self.path.route(slug)
            endpoint = slug
            limit = self.max_body_bytes
            if length is not None and length.isdigit() and int(length) > limit:
                raise BodyTooLarge(limit)
            body = await read_body(receive, limit)
            answer = await self.path.open(
                route,
                body,
                request_id,
                content_type=content_type,
                accept=accept,
                trace_headers=trace_headers,
                version=pinned,
                user=user,
            )
            version = answer.version
            status = answer.status
            headers = answer.headers
            headers.append((b"x-request-id", request_id))
            headers.append((b"x-cormorant-version", answer.replica.version_bytes))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            if answer.streaming:
                await self._stream(answer, receive, send)
            else:
                await self._relay(answer, send)
        except CormorantError as exc:
            if answer is None:
                status = exc.status_code
                if route is not None and is_unanswered(status):
                    self.prediction_log.unanswered(
                        route,
                        request_id=request_id.decode("latin-1"),
                        status=status,
                        error=exc,
                        started=started,
                        body=body,
                        content_type=content_type,
                        trace_headers=trace_headers,
                    )
                await _send_error(send, status, exc.code, exc.message, request_id,
                                  details=exc.details)  # fmt: skip
            else:
                # The head is gone with a length the body can no longer fill: only dropping
                # the client's connection tells it the answer is incomplete.
                log.warning("predict answer of %s broke off: %s", endpoint, exc.message,
                            extra=log_fields(request_id, trace_headers))  # fmt: skip
                self.path.finish(answer, exc)
                answer = None
                raise
        except ClientGone:
            status = CLIENT_GONE
        except Exception as exc:
            log.exception("predict request of %r failed unexpectedly", slug,
                          extra=log_fields(request_id, trace_headers))  # fmt: skip
            if answer is not None:
                self.path.finish(answer)
                answer = None
                raise
            status = 500
            if route is not None:
                self.prediction_log.unanswered(
                    route,
                    request_id=request_id.decode("latin-1"),
                    status=status,
                    error=exc,
                    started=started,
                    body=body,
                    content_type=content_type,
                    trace_headers=trace_headers,
                )
            await _send_error(send, 500, "internal_error", "the gateway failed; see its logs",
                              request_id)  # fmt: skip
        finally:
            if answer is not None:
                self.path.finish(answer)
            # The caller has its answer: a copy for the shadow version, if the route has one.
            mirror = self.path.mirror
            if mirror is not None and route is not None and body is not None:
                # Only a route with a shadow version takes the copy.
                mirror.offer(route, body, request_id, content_type=content_type,
                             trace_headers=trace_headers)  # fmt: skip
            metrics.in_flight_now -= 1
            metrics.observe(endpoint, version, status, time.perf_counter() - started)

    async def _relay(self, answer: Answer, send: Send) -> None:
        conn = answer.conn
        if conn.complete:
            # The usual case: the whole answer came with its head.
            await send({"type": "http.response.body", "body": conn.take(), "more_body": False})
            return
        while (data := await self.path.read(answer)) is not None:
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _stream(self, answer: Answer, receive: Receive, send: Send) -> None:
        # Without a watcher a client that hangs up would leave the model generating for nobody:
        # closing the replica's connection makes the worker stop the generator.
        done = False

        async def on_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done:
                answer.conn.close()

        watcher = asyncio.ensure_future(on_disconnect())
        try:
            while True:
                try:
                    data = await self.path.read(answer)
                except CormorantError as exc:
                    # The status is sent: the error travels as the stream's last item, as the
                    # worker sends its own.
                    done = True
                    tail = _stream_error(answer.content_type, exc)
                    await send({"type": "http.response.body", "body": tail, "more_body": False})
                    return
                if data is None:
                    done = True
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                await send({"type": "http.response.body", "body": data, "more_body": True})
        finally:
            watcher.cancel()


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body; ``BodyTooLarge`` past ``limit``, ``ClientGone`` on disconnect."""
    message = await receive()
    if message["type"] != "http.request":
        raise ClientGone
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise BodyTooLarge(limit)
        return body
    buffer = bytearray(body)
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        buffer += message.get("body", b"")
        if len(buffer) > limit:
            raise BodyTooLarge(limit)
        if not message.get("more_body", False):
            return bytes(buffer)


async def _send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    request_id: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    details: dict[str, object] | None = None,
) -> None:
    error: dict[str, object] = {"code": code, "message": message}
    if details:
        error["details"] = details
    body = orjson.dumps({"error": error})
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"x-request-id", request_id),
        *(extra or ()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _stream_error(content_type: bytes, exc: CormorantError) -> bytes:
    document = orjson.dumps(exc.to_body())
    if content_type.startswith(b"text/event-stream"):
        return b"event: error\ndata: " + document + b"\n\n"
    return document + b"\n"
