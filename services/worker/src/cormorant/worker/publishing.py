"""The replica's event publisher: ``PredictionLogged`` for every prediction, ``MetricLogged``
for every ``Endpoint().log_metric`` in predict code, over one NATS connection.

Both go through one ``BatchedPublisher``, which only queues: a prediction never waits for, nor
fails because of, NATS. Predictions are logged on the event loop, once their answer is known;
metrics come from predict threads and hop to the loop with ``call_soon_threadsafe``. The
connection is made in the background at start-up and retried until NATS answers: meanwhile
the replica serves all the same and counts what it could not publish as dropped.

A prediction's request only appends its values to a list; every ``BATCH_DELAY_S``, or once
``BATCH_MAX`` events or ``BATCH_BYTES`` are waiting, the list leaves as one column pack
(``bus.prediction_pack``): one JSON object of columns written by one ``orjson.dumps``, one NATS
message and one ack. What each hand-over costs does not depend on its size: the worker's
publisher, its NATS client's flusher and ack reader wake once, and nats-server spends 0.3-1 ms
of CPU per message stored and delivered (goroutine wake-ups, mostly). Logging cost the worker
45-60 µs per prediction with one event per message every 5 ms, about 10 µs with line packs of
1,024 built event by event, and 2-3 µs with column packs (``bench/logging_overhead.py``). The
events stay in memory a little longer: they are handed over (and flushed) when the replica
stops. With a spool (``spool_dir``, which the deployer sets for every replica), each
prediction is also copied into a memory-mapped spool file before its answer leaves and kept
there until JetStream acknowledged it, so a worker killed meanwhile loses none: the next worker
process (or the deployer, for a replica it removes) publishes what it left (``bus.spool``).
Each event keeps its own trace context, taken from the request's span when the replica traces.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry

from cormorant.common import bus
from cormorant.common.bus import Pack
from cormorant.common.bus.replica import shown
from cormorant.common.bus.spool import Labels, Segment, SpoolWriter, replay
from cormorant.common.events import InvalidSubjectToken, MetricLogged, PredictionLogged
from cormorant.worker.metrics import WorkerMetrics
from cormorant.worker.settings import WorkerSettings

log = logging.getLogger(__name__)

PUBLISHER_NAME = "replica-events"
"""The ``publisher`` label of the replica's publisher in ``cormorant_publisher_*`` metrics."""

BATCH_DELAY_S = 0.2
"""Longest wait of a logged prediction before it is handed to the publisher."""
BATCH_MAX = 4096
"""Logged predictions handed over at once without waiting for ``BATCH_DELAY_S``, one pack's
worth; it bounds how long one hand-over holds the event loop (about 0.3 µs per event)."""

BATCH_BYTES = 512 * 1024
"""About the most bytes of events handed over at once without waiting (see ``size``)."""

# What a request leaves for its event: request id, received at (POSIX), latency (s), status,
# input, output, error, trace id, trace context (NATS headers), about its size as JSON.
_Pending = tuple[
    str, float, float, int, Any, Any, str | None, str | None, dict[str, str] | None, int
]
_NO_CONTEXT: dict[str, str] = {}
_EVENT_BYTES = 120
"""About what an event's ids, timestamps and numbers add to its input and output."""


def _parts(pending: list[_Pending], limit: int) -> list[list[_Pending]]:
    """``pending`` cut where the sizes add up to ``limit``: one pack each."""
    parts: list[list[_Pending]] = []
    start = size = 0
    for index, entry in enumerate(pending):
        if size and size + entry[-1] > limit:
            parts.append(pending[start:index])
            start, size = index, 0
        size += entry[-1]
    parts.append(pending[start:])
    return parts


@dataclass(slots=True)
class RowPacks:
    """Predictions packed for the prediction log, and those left out (not JSON)."""

    packs: list[Pack]
    left_out: list[tuple[str, str]]
    """(request id, reason) of each row left out."""


class ReplicaEvents:
    """The replica's event publisher and the background NATS connection behind it.

    ``prediction`` (loop thread) and ``metric`` (any thread) never block and never raise.
    """

    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.publisher: bus.BatchedPublisher | None = None
        """Set once NATS is connected and the streams exist; None until then."""
        self.log_predictions = settings.log_predictions and _valid_slug(settings.endpoint)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._resources = AsyncExitStack()
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._handover: asyncio.TimerHandle | None = None
        self._metric_published = metrics.metrics_published.labels(outcome="published")
        self._metric_dropped = metrics.metrics_published.labels(outcome="dropped")
        self._prediction_published = metrics.predictions_logged.labels(outcome="published")
        self._prediction_dropped = metrics.predictions_logged.labels(outcome="dropped")
        self._traced = bool(settings.otlp_endpoint)
        # The same on every event of this replica: built once.
        self._endpoint = settings.endpoint
        self._endpoint_id = settings.endpoint_id
        self._version = settings.version
        self._subject = f"{PredictionLogged.subject_prefix}.{settings.endpoint}"
        self._spool: SpoolWriter | None = None
        if settings.spool_dir is not None and self.log_predictions:
            try:
                self._spool = SpoolWriter(settings.spool_dir)
            except OSError as exc:
                log.warning("predictions are not spooled to %s: %s", settings.spool_dir, exc)

    async def __aenter__(self) -> ReplicaEvents:
        self._loop = asyncio.get_running_loop()
        if self.settings.publish_metrics or self.log_predictions:
            self._task = asyncio.create_task(self._connect(), name="replica-events-connect")
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # The last predictions go to the publisher, which flushes them as it stops; what it
        # could not publish stays in the spool for the next worker.
        self._hand_over()
        self.publisher = None
        await self._resources.aclose()
        if self._spool is not None:
            self._spool.close()

    def prediction(
        self,
        request_id: str,
        received_at: float,
        latency_s: float,
        status: int,
        input_value: Any,
        output: Any,
        error: str | None,
        trace_id: str | None,
        size: int = 0,
    ) -> None:
        """Log one answered prediction; call on the loop thread once its outcome is known.

        ``received_at`` is a POSIX timestamp; ``input_value`` and ``output`` are JSON values
        already made loggable (see ``loggable_bytes``) and capped by the caller, ``size``
        about the bytes they take as JSON (it bounds a pack's size).
        """
        if self.publisher is None and self._spool is None:
            # Nothing is kept for an event that cannot be sent.
            self._prediction_dropped.inc()
            return
        # The events leave later, from a timer: the request's own span is taken now.
        # None rather than an empty dict: a tuple of plain values leaves the garbage
        # collector's care at its first pass, instead of being traced until it is sent.
        context = _span_context() if self._traced else None
        if self._spool is not None:
            # On disk before the answer leaves: a kill from now on loses nothing.
            self._spool.append(
                (request_id, received_at, latency_s, status, input_value, output, error,
                 trace_id)
            )  # fmt: skip
        pending = self._pending
        size += _EVENT_BYTES
        pending.append(
            (request_id, received_at, latency_s, status, input_value, output, error, trace_id,
             context, size)
        )  # fmt: skip
        self._pending_bytes += size
        if len(pending) >= BATCH_MAX or self._pending_bytes >= BATCH_BYTES:
            self._hand_over()
        elif self._handover is None:
            assert self._loop is not None
            self._handover = self._loop.call_later(BATCH_DELAY_S, self._hand_over)

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109 - a bounded wait
        """Hand every waiting event over and wait (up to ``timeout`` s) for their acks."""
        self._hand_over()
        publisher = self.publisher
        return True if publisher is None else await publisher.flush(timeout)

    def _hand_over(self) -> None:
        """Pack the waiting predictions' events and queue the packs on the publisher."""
        if self._handover is not None:
            self._handover.cancel()
            self._handover = None
        if (
            self.publisher is None
            and self._spool is not None
            and 0 < len(self._pending) < BATCH_MAX
            and self._pending_bytes < BATCH_BYTES
        ):
            # Not connected yet (a replica serves before its NATS connection is up): the rows
            # are on disk already, so up to one pack of them waits for the publisher instead
            # of being dropped, and a kill meanwhile leaves them to the replayer.
            assert self._loop is not None
            self._handover = self._loop.call_later(BATCH_DELAY_S, self._hand_over)
            return
        pending, self._pending = self._pending, []
        size, self._pending_bytes = self._pending_bytes, 0
        segment = self._spool.seal() if self._spool is not None else None
        if not pending:
            return
        publisher = self.publisher
        if publisher is None:
            self._prediction_dropped.inc(len(pending))
            return
        occurred_at = datetime.now(UTC)
        packed = RowPacks([], [])
        limit = publisher.pack_bytes
        for part in [pending] if size <= limit else _parts(pending, limit):
            pack, left_out = bus.prediction_pack(self._columns(part, occurred_at))
            packed.left_out += left_out
            if pack is not None:
                packed.packs.append(pack)
        self.publish_packs(packed, segment)

    def _columns(self, pending: list[_Pending], occurred_at: datetime) -> bus.PredictionColumns:
        (request_ids, received, latencies, statuses, inputs, outputs, errors, trace_ids,
         contexts, _) = map(list, zip(*pending, strict=True))  # fmt: skip
        return bus.PredictionColumns(
            self._endpoint, self._endpoint_id, self._version, occurred_at,
            request_ids, received, [latency * 1000.0 for latency in latencies], statuses,
            inputs, outputs, errors, trace_ids, contexts if self._traced else None,
        )  # fmt: skip

    def row_packs(
        self,
        prefix: str,
        first_row: int,
        inputs: list[Any],
        outputs: list[Any],
        errors: list[str | None],
        received_at: float,
        latency_s: float,
        size: int,
    ) -> RowPacks:
        """A batch chunk's rows as column packs: one prediction per row, with request id
        ``<prefix>-<row number>`` and its share of the chunk's ``latency_s``; ``size`` is
        about the bytes of the chunk's rows and answers. Pure: call it from any thread."""
        count = len(inputs)
        if not count:
            return RowPacks([], [])
        share = latency_s * 1000.0 / count
        columns = bus.PredictionColumns(
            self._endpoint, self._endpoint_id, self._version, datetime.now(UTC),
            [f"{prefix}-{first_row + index}" for index in range(count)], [received_at] * count,
            [share] * count, [200 if error is None else 500 for error in errors], inputs,
            outputs, errors, [None] * count,
        )  # fmt: skip
        limit = BATCH_BYTES
        parts = max(1, -(-(size + count * _EVENT_BYTES) // limit))
        step = -(-count // parts)
        packs: list[Pack] = []
        left_out: list[tuple[str, str]] = []
        for start in range(0, count, step):
            pack, refused = bus.prediction_pack(columns.part(start, start + step))
            left_out += refused
            if pack is not None:
                packs.append(pack)
        return RowPacks(packs, left_out)

    def publish_packs(self, packs: RowPacks, segment: Segment | None = None) -> None:
        """Queue packs of predictions on the publisher; call on the loop thread. ``segment``
        (the spool's rows of these packs) is deleted once every pack is acknowledged."""
        for request_id, reason in packs.left_out[:10]:
            log.warning("prediction %s not logged: %s", request_id, reason)
        dropped = len(packs.left_out)
        published = 0
        publisher = self.publisher
        settle = segment.settle if segment is not None else None
        for pack in packs.packs:
            if publisher is not None and publisher.publish_pack(
                self._subject, pack, on_settled=settle
            ):
                published += pack.count
            else:
                # Dropped (the buffer is full: NATS has been away for long): given up on
                # disk too, or a long outage would fill the disk with what no one publishes.
                dropped += pack.count
                if settle is not None:
                    settle(pack.count)
        if published:
            self._prediction_published.inc(published)
        if dropped:
            self._prediction_dropped.inc(dropped)

    def metric(self, key: str, value: float) -> None:
        """The sink of ``Endpoint().log_metric``: hand the metric to the loop, return at once."""
        loop = self._loop
        if loop is None or not self.settings.publish_metrics:
            self._metric_dropped.inc()
            return
        try:
            loop.call_soon_threadsafe(self._publish_metric, key, value)
        except RuntimeError:  # the loop is closed: the process is stopping
            self._metric_dropped.inc()

    def _publish_metric(self, key: str, value: float) -> None:
        publisher = self.publisher
        if publisher is None:
            log.info("metric %s=%s not published: no NATS connection", key, value)
            self._metric_dropped.inc()
            return
        try:
            event = MetricLogged(
                endpoint=self._endpoint,
                endpoint_id=self._endpoint_id,
                version=self._version,
                key=key,
                value=value,
            )
        except ValueError as exc:
            log.warning("metric %s not published: %s", key, exc)
            self._metric_dropped.inc()
            return
        if publisher.publish(event):
            self._metric_published.inc()
        else:
            self._metric_dropped.inc()

    async def _connect(self) -> None:
        # A replica may start before NATS (or while it restarts): keep trying in the
        # background, so events flow as soon as it is back; until then they count as dropped.
        delay = 1.0
        while not await bus.reachable(self.settings.nats_url, self.settings.nats_connect_timeout):
            if delay == 1.0:
                log.warning("NATS at %s is not reachable: predictions and metrics are not "
                            "published until it is", shown(self.settings.nats_url))  # fmt: skip
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        try:
            publisher = await self._resources.enter_async_context(
                nats_publisher(self.settings, self.metrics.registry)
            )
        except Exception as exc:
            log.warning("events will not be published: %s: %s", type(exc).__name__, exc)
            return
        self.publisher = publisher
        log.info("publishing predictions and metrics to %s", shown(self.settings.nats_url))
        if self._spool is not None:
            self.replay_spool()

    def replay_spool(self) -> int:
        """Publish what dead workers of this replica left in the spool; the rows queued."""
        publisher = self.publisher
        if self._spool is None or publisher is None:
            return 0
        labels = Labels(self._endpoint, self._endpoint_id, self._version)
        try:
            queued = replay(self._spool.directory, labels, publisher, self._subject)
        except OSError as exc:
            log.warning("the prediction spool %s was not replayed: %s", self._spool.directory, exc)
            return 0
        if queued:
            self._prediction_published.inc(queued)
        return queued


def replica_events(settings: WorkerSettings, metrics: WorkerMetrics) -> ReplicaEvents:
    """The replica's event publisher; enter it (async with) to connect in the background."""
    return ReplicaEvents(settings, metrics)


def loggable_bytes(value: bytes | bytearray) -> str:
    """Raw bytes as the prediction log keeps them: their text, or Base64 when not UTF-8."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return base64.b64encode(value).decode("ascii")


def too_large(what: str, size: int, limit: int) -> str:
    """The note logged instead of an input or output larger than ``log_max_bytes``."""
    return f"[{what} of {size} bytes not logged: over log_max_bytes ({limit})]"


def _span_context() -> dict[str, str]:
    """The current span as a W3C ``traceparent`` header; empty without a valid span."""
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return _NO_CONTEXT
    return {"traceparent": f"00-{span.trace_id:032x}-{span.span_id:016x}-{span.trace_flags:02x}"}


def _valid_slug(endpoint: str) -> bool:
    try:
        PredictionLogged.subject_filter(endpoint)
    except InvalidSubjectToken as exc:
        log.warning("predictions are not logged: the endpoint name is not a slug: %s", exc)
        return False
    return True


# ----------------------------------------------------------------------------------------
# WIRING to cormorant.common.bus: the one place that knows the connection and the streams.
# ----------------------------------------------------------------------------------------
@asynccontextmanager
async def nats_publisher(
    settings: WorkerSettings, registry: CollectorRegistry | None = None
) -> AsyncIterator[bus.BatchedPublisher]:
    """Connect to NATS, make sure the streams exist, and run the replica's publisher."""
    name = f"cormorant-worker {settings.endpoint}/{settings.version}"
    async with bus.replica_publisher(
        settings.nats_url,
        client_name=name,
        publisher_name=PUBLISHER_NAME,
        connect_timeout=settings.nats_connect_timeout,
        registry=registry,
    ) as publisher:
        yield publisher
