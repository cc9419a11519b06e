"""Shadow traffic: a share of live requests mirrored to a shadow version, off the caller's path.

Once a live request is answered, its transport calls ``ShadowMirror.offer``, which draws
whether the request is mirrored (the route's ``shadow_share``) and queues a copy of its body.
A few sender tasks take copies from the bounded queue and send each to a replica of the shadow
version (``PredictPath.open(..., shadow=True)``), read the whole answer and log it as
``PredictionLogged(shadow=True)`` under the live request's id, so the two rows compare.

The caller never waits for any of it: ``offer`` never awaits, a full queue (in copies or in
bytes of bodies) drops the copy and counts it in
``cormorant_gateway_shadow_requests{outcome="dropped"}``, and a slow or crashing shadow
version only fills the queue. Mirrored requests count neither in the gateway's request
metrics nor in the load that autoscales the endpoint; the worker does not log them (the gateway
does, tagged shadow), so nothing a canary policy reads includes them.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import orjson

from cormorant.common.errors import CormorantError
from cormorant.gateway.inference import read_all
from cormorant.gateway.prediction_log import PredictionLog
from cormorant.gateway.proxy import PredictPath
from cormorant.gateway.routing import Route

log = logging.getLogger(__name__)

ROWS_SUFFIX = b"/rows"
"""The worker's route of Open Inference Protocol requests (named inputs, one row each)."""


@dataclass(slots=True)
class _Copy:
    """A mirrored request waiting for a shadow replica."""

    route: Route
    version: str
    body: bytes
    request_id: bytes
    content_type: bytes
    suffix: bytes
    trace_headers: list[tuple[bytes, bytes]] | None


class ShadowMirror:
    """Mirrors a share of live requests to each route's shadow version, in the background."""

    def __init__(
        self,
        path: PredictPath,
        prediction_log: PredictionLog,
        *,
        max_queue: int = 1000,
        max_queue_bytes: int = 64 << 20,
        senders: int = 8,
    ) -> None:
        self.path = path
        self.prediction_log = prediction_log
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.senders = senders
        self._queue: asyncio.Queue[_Copy] | None = None
        self._queued_bytes = 0
        outcomes = path.metrics.shadow_requests
        self._answered = outcomes.labels(outcome="answered")
        self._failed = outcomes.labels(outcome="failed")
        self._dropped = outcomes.labels(outcome="dropped")

    def offer(
        self,
        route: Route,
        body: bytes,
        request_id: bytes,
        *,
        content_type: bytes = b"application/json",
        suffix: bytes = b"",
        trace_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Queue a copy of a live request for the shadow version, if the draw says so; never
        waits and never raises."""
        version = route.shadow_version
        queue = self._queue
        if version is None or queue is None or random.random() >= route.shadow_share:
            return
        if self._queued_bytes + len(body) > self.max_queue_bytes:
            self._dropped.inc()
            return
        copy = _Copy(route, version, body, request_id, content_type, suffix, trace_headers)
        try:
            queue.put_nowait(copy)
        except asyncio.QueueFull:
            self._dropped.inc()
            return
        self._queued_bytes += len(body)

    async def run(self) -> None:
        """Send queued copies until cancelled (``senders`` at a time)."""
        self._queue = asyncio.Queue(self.max_queue)
        self._queued_bytes = 0
        try:
            async with asyncio.TaskGroup() as group:
                for index in range(self.senders):
                    group.create_task(self._send_forever(), name=f"shadow-sender-{index}")
        finally:
            self._queue = None

    async def _send_forever(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            copy = await queue.get()
            self._queued_bytes -= len(copy.body)
            try:
                await self.send(copy)
            except Exception:  # one copy's failure must not end its sender
                self._failed.inc()
                log.exception("shadow request %s failed unexpectedly", copy.request_id.decode())

    async def send(self, copy: _Copy) -> None:
        """Send one copy to a shadow replica and log its answer tagged shadow."""
        path = self.path
        sent_at = time.time()
        started = time.perf_counter()
        output: Any = None
        error: str | None = None
        try:
            answer = await path.open(
                copy.route,
                copy.body,
                copy.request_id,
                content_type=copy.content_type,
                trace_headers=copy.trace_headers,
                version=copy.version,
                suffix=copy.suffix,
                shadow=True,
            )
            content = await read_all(path, answer)
        except CormorantError as exc:
            self._failed.inc()
            status = exc.status_code
            error = f"{type(exc).__name__}: {exc.message}"
        else:
            self._answered.inc()
            status = answer.status
            output, error = self._outcome(content, status, rows=copy.suffix == ROWS_SUFFIX)
        self.prediction_log.shadow(
            copy.route,
            request_id=copy.request_id.decode("latin-1"),
            version=copy.version,
            status=status,
            input_value=self._input(copy),
            output=output,
            error=error,
            received_at=sent_at,
            latency_s=time.perf_counter() - started,
            trace_headers=copy.trace_headers,
        )

    def _input(self, copy: _Copy) -> Any:
        limit = self.prediction_log.max_bytes
        if copy.suffix != ROWS_SUFFIX or len(copy.body) > limit:
            return self.prediction_log.input_of(copy.body, copy.content_type)
        # Named inputs by name, as the worker logs an Open Inference Protocol request.
        document = orjson.loads(copy.body)
        return {column["name"]: column["rows"] for column in document["inputs"]}

    def _outcome(self, content: bytes, status: int, *, rows: bool) -> tuple[Any, str | None]:
        limit = self.prediction_log.max_bytes
        if len(content) > limit:
            note = f"[output of {len(content)} bytes not logged: over log_max_bytes ({limit})]"
            return (note, None) if status < 400 else (None, note)
        try:
            document = orjson.loads(content)
        except orjson.JSONDecodeError:
            # A stream's lines, kept as text.
            text = content.decode("utf-8", "replace")
            return (text, None) if status < 400 else (None, text)
        if not isinstance(document, dict):
            return document, None
        if status >= 400:
            failure = document.get("error")
            if isinstance(failure, dict):
                return None, f"{failure.get('code', 'error')}: {failure.get('message', '')}"
            return None, str(document)
        key = "predictions" if rows else "prediction"
        return document.get(key, document), None
