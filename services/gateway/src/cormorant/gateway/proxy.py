"""The predict path every transport shares: authorize, route, pick, send, and answer.

``/api/v1/endpoints/{slug}/predict`` (``predict.py``) and the Open Inference Protocol
(``inference.py``, for REST and gRPC) both call ``PredictPath``: they only translate their
request into a body for the worker and the worker's answer back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opentelemetry import trace

from cormorant.common.errors import CormorantError
from cormorant.common.internal import ReplicaKeys
from cormorant.common.telemetry import extract_context, inject_context
from cormorant.gateway.auth import Credentials
from cormorant.gateway.errors import (
    BatchEndpoint,
    NoReadyReplica,
    ReplicaFailed,
    ReplicasUnreachable,
    ReplicaTimeout,
    StreamEndpoint,
    UnknownEndpoint,
    VersionNotServing,
)
from cormorant.gateway.metrics import GatewayMetrics
from cormorant.gateway.prediction_log import PredictionLog
from cormorant.gateway.routing import Replica, Route, RoutingTable
from cormorant.gateway.upstream import ConnectFailed, Connection, UpstreamBroken, UpstreamTimedOut

if TYPE_CHECKING:
    # Only the type: shadow.py builds on this module, the app sets ``PredictPath.mirror``.
    from cormorant.gateway.shadow import ShadowMirror

# Answer headers that describe the hop, not the answer; the gateway's server writes its own.
_HOP_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"date",
        b"server",
        b"x-request-id",
        b"x-cormorant-version",
    }
)
_STREAM_TYPES = (b"application/x-ndjson", b"text/event-stream")
SHADOW_HEADER_LINE = b"x-cormorant-shadow: 1\r\n"
"""Marks a mirrored request to a shadow replica (the worker then does not log it)."""


@dataclass(slots=True)
class Answer:
    """A replica's answer being received: its head is in, the body follows."""

    route: Route
    replica: Replica
    conn: Connection
    status: int
    headers: list[tuple[bytes, bytes]]
    """The answer's headers minus hop-by-hop ones, ready for the client."""
    streaming: bool
    """The body is a stream (NDJSON or SSE) whose pieces must reach the client as they come."""
    content_type: bytes
    span: trace.Span | None = None

    @property
    def version(self) -> str:
        """The model version that answers."""
        return self.replica.version


class PredictPath:
    """Auth, routing, replica choice with connect retries, timeouts, and the exchange."""

    def __init__(
        self,
        table: RoutingTable,
        credentials: Credentials,
        metrics: GatewayMetrics,
        *,
        connect_attempts: int = 3,
        replica_cooldown_s: float = 2.0,
        tracer: trace.Tracer | None = None,
        prediction_log: PredictionLog | None = None,
        replica_keys: ReplicaKeys | None = None,
    ) -> None:
        self.table = table
        self.replica_keys = replica_keys
        """Each replica's key, sent with every request to it (its port refuses others)."""
        self.credentials = credentials
        self.metrics = metrics
        self.prediction_log = prediction_log or PredictionLog(metrics, enabled=False, max_bytes=0)
        """Where the transports log the requests that no worker answered."""
        self.mirror: ShadowMirror | None = None
        """Where the transports hand answered requests for shadow traffic, once set."""
        self._attempts = connect_attempts
        self._cooldown_s = replica_cooldown_s
        self.tracer = tracer
        """Spans around the hop to the replica when tracing is on; None keeps the hot path bare."""

    def route(self, slug: str) -> Route:
        """The route of ``slug``; 404 if unknown."""
        route = self.table.routes.get(slug)
        if route is None:
            raise UnknownEndpoint(slug)
        return route

    async def open(
        self,
        route: Route,
        body: bytes,
        request_id: bytes,
        *,
        content_type: bytes = b"application/json",
        accept: bytes | None = None,
        trace_headers: list[tuple[bytes, bytes]] | None = None,
        version: str | None = None,
        user: bytes | None = None,
        suffix: bytes = b"",
        method: bytes = b"POST",
        shadow: bool = False,
    ) -> Answer:
        """Send ``body`` to a replica of ``route`` and wait for its answer's head.

        A replica that cannot be connected to is passed over for another (nothing was sent);
        once the request is written it is never sent again. ``trace_headers`` are the
        caller's W3C trace context, passed on (under a span of ours when tracing is on).
        ``version`` pins the request to one model version (the ``X-Cormorant-Version`` header);
        ``user`` (``X-Cormorant-User``) keeps one user on one version of a split (sticky A/B).
        ``suffix`` extends the replica's predict path (``/rows``, ``/signature``: the worker's
        routes for the Open Inference Protocol), sent with ``method``. ``shadow`` marks a
        mirrored request (``shadow.py``): the worker leaves its logging to the gateway, and it
        does not count in the endpoint's load.
        """
        extra = b"accept: %s\r\n" % accept if accept else b""
        if shadow:
            extra += SHADOW_HEADER_LINE
        span = None
        if self.tracer is not None:
            incoming = {k.decode("latin-1"): v.decode("latin-1") for k, v in trace_headers or ()}
            span = self.tracer.start_span(
                f"predict {route.slug}",
                context=extract_context(incoming),
                kind=trace.SpanKind.CLIENT,
            )
            carrier: dict[str, str] = {}
            with trace.use_span(span, end_on_exit=False):
                inject_context(carrier)
            extra += "".join(f"{k}: {v}\r\n" for k, v in carrier.items()).encode("latin-1")
        elif trace_headers:
            extra += b"".join(b"%s: %s\r\n" % pair for pair in trace_headers)
        try:
            replica, conn = await self._connect(route, version, user)
        except BaseException as exc:
            _end_span(span, exc)
            raise
        if not shadow:
            route.requests += 1
        keys = self.replica_keys
        key = keys(replica.id) if keys is not None else None
        if key is not None:
            extra += b"cormorant-replica-key: %s\r\n" % key.encode("latin-1")
        head = (
            b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n"
            b"x-request-id: %s\r\n%s\r\n"
        ) % (
            method,
            replica.predict_path + suffix,
            replica.host_header,
            content_type,
            len(body),
            request_id,
            extra,
        )
        conn.arm(route.timeout_s)
        conn.send(head, body)
        try:
            await conn.read_head()
        except BaseException as exc:
            self.release(replica, conn)
            _end_span(span, exc)
            if isinstance(exc, UpstreamTimedOut | UpstreamBroken):
                raise _translate(exc, route, replica.version) from exc
            raise
        headers = []
        answer_type = b""
        streaming = True
        for name, value in conn.headers:
            lower = name.lower()
            if lower in _HOP_HEADERS:
                continue
            if lower == b"content-type":
                answer_type = value
            elif lower == b"content-length":
                streaming = False
            headers.append((lower, value))
        if answer_type.startswith(_STREAM_TYPES):
            streaming = True
        if streaming:
            # A stream may rightly last longer than the timeout; each piece must come within it.
            conn.arm(route.timeout_s)
        return Answer(route, replica, conn, conn.status, headers, streaming, answer_type, span)

    async def read(self, answer: Answer) -> bytes | None:
        """The next body bytes of ``answer`` as they arrive; None once it is complete."""
        try:
            data = await answer.conn.read()
        except (UpstreamTimedOut, UpstreamBroken) as exc:
            raise _translate(exc, answer.route, answer.version) from exc
        if answer.streaming and data is not None and not answer.conn.complete:
            answer.conn.arm(answer.route.timeout_s)
        return data

    def finish(self, answer: Answer, error: BaseException | None = None) -> None:
        """Hand the connection back (kept only if the answer was read completely)."""
        self.release(answer.replica, answer.conn)
        _end_span(answer.span, error)

    def release(self, replica: Replica, conn: Connection) -> None:
        """End a request on ``replica`` and return its connection to the pool."""
        replica.end(time.monotonic())
        replica.pool.release(conn)

    async def _connect(
        self, route: Route, version: str | None, user: bytes | None = None
    ) -> tuple[Replica, Connection]:
        now = time.monotonic()
        # A stream endpoint's replicas are kafka-bridges: their URL serves only probes.
        replica = route.pick(now, version=version, user=user) if route.kind != "stream" else None
        if replica is None:
            if version is not None and route.kind != "stream":
                raise VersionNotServing(route.slug, version, route.versions())
            raise _unavailable(route)
        tried: frozenset[Replica] = frozenset()
        while True:
            replica.begin(now)
            try:
                conn = await replica.pool.acquire()
            except ConnectFailed as exc:
                now = time.monotonic()
                replica.end(now)
                replica.cooldown_until = now + self._cooldown_s
                self.metrics.connect_failures.labels(route.slug).inc()
                tried = tried | {replica}
                following = (
                    route.pick(now, tried, version=version) if len(tried) < self._attempts else None
                )
                if following is None:
                    raise ReplicasUnreachable(
                        route.slug, len(tried), str(exc), version=replica.version
                    ) from exc
                replica = following
                continue
            except BaseException:
                replica.end(time.monotonic())
                raise
            return replica, conn


def _unavailable(route: Route) -> CormorantError:
    if route.kind == "batch":
        return BatchEndpoint(route.slug)
    if route.kind == "stream":
        return StreamEndpoint(route.slug)
    return NoReadyReplica(route.slug, route.status)


def _translate(
    exc: UpstreamTimedOut | UpstreamBroken, route: Route, version: str
) -> CormorantError:
    if isinstance(exc, UpstreamTimedOut):
        return ReplicaTimeout(route.slug, route.timeout_s, version=version)
    return ReplicaFailed(route.slug, str(exc), version=version)


def _end_span(span: trace.Span | None, error: BaseException | None) -> None:
    if span is None:
        return
    if error is not None:
        span.record_exception(error)
        span.set_status(trace.StatusCode.ERROR)
    span.end()
