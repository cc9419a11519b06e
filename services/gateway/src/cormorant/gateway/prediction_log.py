"""``PredictionLogged`` for the predict requests that no worker answered.

Workers log every request they answer. A request that never got an answer from one would be
missing from the log: no ready replica (503), no replica accepting a connection (502), a
replica that broke off or timed out before its answer's head (502, 504), a body over the
limit (413). The gateway logs those itself, through a ``BatchedPublisher`` on its NATS
connection. Requests refused by auth (401, 403) or naming no endpoint (404) are not
predictions of an endpoint, and batch or stream endpoints do not predict over HTTP (409):
none of these is logged.

Only such failures pay anything here: the body of a request a worker answered is never parsed.
The input is logged as the worker would log it: the ``input_params`` of a JSON body (the body's
text when it is not JSON), the text or Base64 of a raw body, a note of its size when it is
over ``log_max_bytes``, and nothing for a body refused as too large.
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from random import getrandbits
from typing import Any

import orjson
from nats.aio.client import Client

from cormorant.common import bus
from cormorant.common.errors import CormorantError
from cormorant.common.events import PredictionLogged
from cormorant.gateway.errors import ReplicaFailed, ReplicasUnreachable, ReplicaTimeout
from cormorant.gateway.metrics import GatewayMetrics
from cormorant.gateway.routing import Route

log = logging.getLogger(__name__)

PUBLISHER_NAME = "gateway-predictions"
"""The ``publisher`` label of the gateway's publisher in ``cormorant_publisher_*`` metrics."""

NO_VERSION = "-"
"""The version logged when none was chosen (no ready replica): stored as no version."""

_TRACEPARENT = re.compile(rb"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
_NO_TRACE = b"0" * 32
_NOT_GIVEN: Any = object()


def is_unanswered(status: int) -> bool:
    """Whether a predict request that failed with ``status`` before any answer is logged."""
    return status == 413 or status >= 500


class PredictionLog:
    """Publishes ``PredictionLogged`` for unanswered predict requests, once NATS is there."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        *,
        enabled: bool,
        max_bytes: int,
        streams: tuple[bus.StreamSpec, ...] | None = None,
    ) -> None:
        self.enabled = enabled
        self.max_bytes = max_bytes
        self.streams = streams
        """The streams as the settings size them (None: create missing ones, change none)."""
        self.publisher: bus.BatchedPublisher | None = None
        """Set while the gateway's NATS connection is up (see ``attached``)."""
        self._registry = metrics.registry
        self._published = metrics.predictions_logged.labels(outcome="published")
        self._dropped = metrics.predictions_logged.labels(outcome="dropped")

    @asynccontextmanager
    async def attached(self, nc: Client) -> AsyncIterator[None]:
        """Publish on ``nc`` while the block runs; flush what is pending as it ends."""
        if not self.enabled:
            yield
            return
        try:
            await bus.ensure_streams(nc.jetstream(), self.streams)
        except Exception as exc:  # the publisher retries until the stream exists
            log.warning("prediction log stream not checked: %s: %s", type(exc).__name__, exc)
        # Failures come in bursts (a replica gone, a timeout): those queued together leave as
        # one pack.
        try:
            publisher = bus.BatchedPublisher(
                nc, name=PUBLISHER_NAME, registry=self._registry, max_pack=bus.PACK_EVENTS
            )
        except ValueError:
            # The publisher of a previous connection still reports under this name.
            publisher = bus.BatchedPublisher(nc, name=PUBLISHER_NAME, max_pack=bus.PACK_EVENTS)
        await publisher.start()
        self.publisher = publisher
        try:
            yield
        finally:
            self.publisher = None
            await publisher.stop()

    def unanswered(
        self,
        route: Route,
        *,
        request_id: str,
        status: int,
        error: BaseException,
        started: float,
        body: bytes | None = None,
        content_type: bytes = b"application/json",
        input_value: Any = _NOT_GIVEN,
        trace_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Log a predict request of ``route`` that failed with ``error`` before any answer.

        ``started`` is the request's ``time.perf_counter()`` when it arrived.

        The input is ``input_value`` when given, else read from ``body``. Never raises.
        """
        if not self.enabled:
            return
        publisher = self.publisher
        if publisher is None:
            self._dropped.inc()
            return
        elapsed = time.perf_counter() - started
        if input_value is _NOT_GIVEN:
            input_value = self._input(body, content_type)
        version = (
            error.version
            if isinstance(error, ReplicaTimeout | ReplicaFailed | ReplicasUnreachable)
            else None
        )
        try:
            event = PredictionLogged(
                event_id=f"{getrandbits(128):032x}",
                request_id=request_id,
                endpoint=route.slug,
                endpoint_id=route.endpoint_id or None,
                version=version or NO_VERSION,
                input=input_value,
                error=f"{type(error).__name__}: {_message(error)}",
                status=status,
                latency_ms=elapsed * 1000.0,
                received_at=datetime.fromtimestamp(time.time() - elapsed, UTC),
                trace_id=_trace_id(trace_headers),
            )
        except ValueError as exc:  # a value the event refuses must not fail the answer
            log.warning("prediction %s not logged: %s", request_id, exc)
            self._dropped.inc()
            return
        (self._published if publisher.publish(event) else self._dropped).inc()

    def shadow(
        self,
        route: Route,
        *,
        request_id: str,
        version: str,
        status: int,
        input_value: Any,
        output: Any,
        error: str | None,
        received_at: float,
        latency_s: float,
        trace_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> bool:
        """Log a shadow version's answer to a mirrored request (``shadow.py``) under the live
        request's id, tagged shadow. ``received_at`` is the POSIX time it was sent. Never
        raises; False when it could not be handed to the publisher."""
        publisher = self.publisher
        if not self.enabled or publisher is None:
            self._dropped.inc()
            return False
        event_id = f"{getrandbits(128):032x}"
        try:
            # Written by orjson, not through the model: a third of the cost, on the loop that
            # also answers live requests (see bus.prediction_body).
            body = bus.prediction_body(
                event_id=event_id,
                occurred_at=datetime.now(UTC),
                request_id=request_id,
                endpoint=route.slug,
                endpoint_id=route.endpoint_id or None,
                version=version,
                input=input_value,
                output=output,
                error=error,
                status=status,
                latency_ms=latency_s * 1000.0,
                received_at=datetime.fromtimestamp(received_at, UTC),
                trace_id=_trace_id(trace_headers),
                shadow=True,
            )
        except ValueError as exc:
            log.warning("shadow prediction %s not logged: %s", request_id, exc)
            self._dropped.inc()
            return False
        subject = f"{PredictionLogged.subject_prefix}.{route.slug}"
        published = publisher.publish_encoded(subject, PredictionLogged.event_type, event_id, body)
        (self._published if published else self._dropped).inc()
        return published

    def input_of(self, body: bytes | None, content_type: bytes) -> Any:
        """A request body's input as the log keeps it (see the module's docstring)."""
        return self._input(body, content_type)

    def _input(self, body: bytes | None, content_type: bytes) -> Any:
        if body is None:
            return None
        if len(body) > self.max_bytes:
            return f"[input of {len(body)} bytes not logged: over log_max_bytes ({self.max_bytes})]"
        if content_type.startswith(b"application/octet-stream"):
            return _text_or_base64(body)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _text_or_base64(body)
        if isinstance(document, dict) and "input_params" in document:
            return document["input_params"]
        return document


def log_fields(
    request_id: bytes, trace_headers: list[tuple[bytes, bytes]] | None
) -> dict[str, str]:
    """A predict request's ids for a log line (JSON logs carry them as fields); the trace id
    is the client's, when it sent a ``traceparent`` (a traced gateway's span has it too)."""
    fields = {"request_id": request_id.decode("latin-1")}
    trace_id = _trace_id(trace_headers)
    if trace_id is not None:
        fields["trace_id"] = trace_id
    return fields


def _message(error: BaseException) -> str:
    return error.message if isinstance(error, CormorantError) else str(error)


def _text_or_base64(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii")


def _trace_id(trace_headers: list[tuple[bytes, bytes]] | None) -> str | None:
    for name, value in trace_headers or ():
        if name == b"traceparent":
            match = _TRACEPARENT.fullmatch(value.strip())
            if match is not None and match.group(1) != _NO_TRACE:
                return match.group(1).decode("ascii")
    return None
