"""Ingest: batches of ``PredictionLogged`` and ``MetricLogged`` from JetStream into PostgreSQL.

Each stream has durable pull consumers (several may share one durable); each consumer
owns one database connection and runs one loop: fetch whatever is waiting, up to
``ingest_batch`` events; write them with one COPY; commit; then ack. A crash at any point
means redelivery, never loss, and both inserts are idempotent (on the request for
predictions, on the event id for metrics), so a redelivery stores nothing twice.

While PostgreSQL is away a batch is retried in place, kept alive with progress acks,
rather than handed back: an outage delays the log but never exhausts ``max_deliver``.
Only two things give an event up: a row the database refuses outright, and an endpoint
slug still unknown after ``max_deliver`` deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry import trace

from cormorant.common.bus import METRICS_STREAM, PREDICTIONS_STREAM, pack_size, unpack
from cormorant.common.bus.packing import COLUMNS_LAYOUT, LAYOUT_HEADER
from cormorant.common.db import PredictionRow, copy_predictions, insert_predictions
from cormorant.common.events import (
    EVENT_TYPE_HEADER,
    Event,
    EventDecodeError,
    MetricLogged,
    PredictionLogged,
    decode,
)
from cormorant.common.retry import Backoff
from cormorant.common.telemetry import extract_context
from cormorant.predictlog import database
from cormorant.predictlog.database import (
    METRIC_COLUMNS,
    EndpointDirectory,
    clean_text,
    version_number,
)
from cormorant.predictlog.monitoring import IngestMetrics
from cormorant.predictlog.pull import BatchPull
from cormorant.predictlog.reading import (
    LoggedPrediction,
    read_prediction,
    read_prediction_pack,
)
from cormorant.predictlog.settings import PredictLogSettings

log = logging.getLogger(__name__)

# Errors that belong to a row, not to the database being away: the batch is then written
# row by row so that only the offending events are given up.
ROW_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    ValueError,  # includes asyncpg's client-side encoding errors
    OverflowError,
)
# Everything else the database or the network raises means "not now": retried in place.
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection broken mid-statement
)

# The largest value a PostgreSQL REAL (latency_ms) holds; larger ones would fail the batch.
_REAL_MAX = 3.4028234663852886e38
_MAX_LINKS = 64

_METRICS_STAGING = "metrics_staging"

Row = TypeVar("Row")
T = TypeVar("T")


@dataclass(slots=True)
class StreamStats:
    """Counts of one consumer loop since it started."""

    batches: int = 0
    delivered: int = 0
    acked: int = 0
    nacked: int = 0
    terminated: int = 0
    undecodable: int = 0
    fetch_errors: int = 0
    handler_errors: int = 0


@dataclass(slots=True)
class _Batch:
    """The messages of one fetch, their events, and what becomes of each message."""

    msgs: list[Msg]
    sizes: list[int] = field(default_factory=list)
    """Events carried by each message (a pack carries several)."""
    events: list[tuple[int, Any, Mapping[str, str]]] = field(default_factory=list)
    """Each decoded event: its message's index, the event, its own headers."""
    settled: set[int] = field(default_factory=set)
    """Indexes of the messages acked, nak'ed or terminated."""
    given_up: dict[int, int] = field(default_factory=dict)
    """Per message index, its events that will never be stored."""
    redeliver: dict[int, float] = field(default_factory=dict)
    """Per message index, the delay before it comes back (an event's endpoint is unknown)."""

    @property
    def size(self) -> int:
        """Events in the batch, as far as decoded."""
        return sum(self.sizes) if self.sizes else len(self.msgs)


class _Abandoned(Exception):
    """The service is stopping while the database is away: hand the batch back."""


class _Every:
    """Allows a log line at most once per ``interval`` seconds."""

    __slots__ = ("_interval", "_next")

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._next = 0.0

    def __call__(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


class StreamIngest(Generic[Row]):
    """One pull consumer of a stream and the database connection it writes with."""

    table: ClassVar[str]
    event_class: ClassVar[type[Event]]

    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        directory: EndpointDirectory,
        metrics: IngestMetrics,
        settings: PredictLogSettings,
        max_ack_pending: int,
        retry_backoff: float = 0.1,
        max_retry_backoff: float = 5.0,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.stream = stream
        self.durable = durable
        self.stats = StreamStats()
        self._nc = nc
        self._js = js
        self._directory = directory
        self._metrics = metrics
        self._database_url = settings.database_url
        self._batch = settings.ingest_batch
        self._fetch_wait = settings.fetch_timeout_s
        self._ack_wait = settings.ack_wait_s
        self._max_deliver = settings.max_deliver
        self._backoff = Backoff(retry_backoff, max_retry_backoff)
        self._config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=self.event_class.subject_filter(),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait_s,
            max_deliver=settings.max_deliver,
            max_ack_pending=max_ack_pending,
            deliver_policy=DeliverPolicy.ALL,
        )
        if tracer is None and settings.otlp_endpoint:
            tracer = trace.get_tracer(__name__)
        self._tracer = tracer
        """Traces each batch (linked to its events' requests) when set."""
        self._conn: asyncpg.Connection | None = None
        self._ids: dict[str, uuid.UUID | None] = {}
        self._stopping = asyncio.Event()
        self._fetch_log = _Every()
        self._unavailable_log = _Every()
        self._dropped_log = _Every()
        self._failure_log = _Every()
        m = metrics
        self._rows_written = m.rows_written.labels(self.table)
        self._rows_duplicate = m.rows_duplicate.labels(self.table)
        self._batches = m.batches.labels(self.table)
        self._batch_rows = m.batch_rows.labels(self.table)
        self._write_seconds = m.write_seconds.labels(self.table)
        self._latency = m.ingest_latency.labels(self.table)

    # -- what each stream defines

    def read(self, body: bytes, headers: Mapping[str, str]) -> Any:
        """The event of one message body; ``EventDecodeError`` if not one of this stream's."""
        event = decode(body, headers)
        if not isinstance(event, self.event_class):
            raise EventDecodeError(f"a {event.event_type} event on the {self.stream} stream")
        return event

    def read_pack(
        self, data: bytes, headers: Mapping[str, str] | None
    ) -> Sequence[tuple[Any, Mapping[str, str]]] | None:
        """Every event of a pack read at once, with its own headers; None to read the pack's
        events one by one (``unpack`` and ``read``)."""
        return None

    def row(self, event: Any, endpoint_id: uuid.UUID) -> Row | None:
        """The row of an event, or None if the event cannot be stored (it is given up)."""
        raise NotImplementedError

    async def insert(self, conn: asyncpg.Connection, rows: Sequence[Row]) -> int:
        """Insert ``rows`` in one transaction, skipping those already stored; the count new."""
        raise NotImplementedError

    async def setup(self, conn: asyncpg.Connection) -> None:
        """Prepare a new connection (session-level tables...)."""

    # -- the loop

    async def run(self, stopping: asyncio.Event) -> None:
        """Fetch and write batches until ``stopping`` is set; never raises but cancellation."""
        self._stopping = stopping
        pull: BatchPull | None = None
        failures = 0
        try:
            while not stopping.is_set():
                try:
                    if pull is None:
                        pull = await self._bind()
                    msgs = await pull.fetch(self._batch, self._fetch_wait)
                except TimeoutError:
                    continue  # nothing within the wait, or the server is away
                except Exception as exc:
                    failures += 1
                    self.stats.fetch_errors += 1
                    if self._fetch_log():
                        log.warning(
                            "ingest %s: fetch failed (%s: %s); retrying",
                            self.durable,
                            type(exc).__name__,
                            exc,
                        )
                    if pull is not None:
                        await pull.close()
                        pull = None
                    await self._pause(self._backoff.delay(failures))
                    continue
                failures = 0
                await self._handle(msgs)
        finally:
            if pull is not None:
                await pull.close()
            await self.close()

    async def close(self) -> None:
        """Close the database connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), timeout=2.0)
            except Exception:
                conn.terminate()

    async def _bind(self) -> BatchPull:
        # Create-or-update, so a consumer lost with the server's store comes back as it was.
        await self._js.add_consumer(self.stream, config=self._config)
        return await BatchPull.open(self._nc, stream=self.stream, durable=self.durable)

    async def _handle(self, msgs: list[Msg]) -> None:
        self.stats.batches += 1
        batch = _Batch(msgs)
        keepalive = asyncio.create_task(self._keep_alive(batch))
        try:
            self._unpack(batch)
            if self._tracer is None:
                await self._write(batch)
            else:
                await self._write_traced(batch)
            await self._settle_all(batch)
        except asyncio.CancelledError:
            await self._hand_back(batch, delay=False)
            raise
        except _Abandoned:
            await self._hand_back(batch, delay=False)
        except Exception as exc:
            self.stats.handler_errors += 1
            if self._failure_log():
                log.error(
                    "ingest %s: a batch of %d events failed", self.durable, batch.size, exc_info=exc
                )
            await self._hand_back(batch, delay=True)
        finally:
            keepalive.cancel()

    def _unpack(self, batch: _Batch) -> None:
        """Decode every event of the batch's messages; give up those that do not decode."""
        for index, msg in enumerate(batch.msgs):
            size = pack_size(msg.headers)
            batch.sizes.append(size)
            self.stats.delivered += size
            whole = self.read_pack(msg.data, msg.headers) if size > 1 else None
            if whole is not None:
                batch.events.extend((index, event, headers) for event, headers in whole)
                continue
            try:
                items = unpack(msg.data, msg.headers)
            except EventDecodeError as exc:
                # What cannot be decoded now never will be: no redelivery.
                self.stats.undecodable += size
                self._dropped("undecodable", str(exc), size)
                batch.given_up[index] = size
                continue
            for body, headers in items:
                try:
                    event = self.read(body, headers)
                except EventDecodeError as exc:
                    self.stats.undecodable += 1
                    self._dropped("undecodable", str(exc))
                    batch.given_up[index] = batch.given_up.get(index, 0) + 1
                    continue
                batch.events.append((index, event, headers))

    async def _write_traced(self, batch: _Batch) -> None:
        assert self._tracer is not None
        # One span per batch, linked to the requests it logs (a span per event would cost
        # more than the write); each row also keeps its request's trace id.
        links = []
        for _, _, headers in batch.events[:_MAX_LINKS]:
            context = trace.get_current_span(extract_context(headers)).get_span_context()
            if context.is_valid:
                links.append(trace.Link(context))
        with self._tracer.start_as_current_span(
            f"predictlog write {self.table}",
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.batch.message_count": len(batch.msgs),
                "cormorant.events": len(batch.events),
            },
        ):
            await self._write(batch)

    async def _write(self, batch: _Batch) -> None:
        by_slug = await self._endpoint_ids(batch)
        ready: list[tuple[int, Row]] = []
        oldest: datetime | None = None
        for index, event, _ in batch.events:
            endpoint_id = self._given_id(event.endpoint_id) or by_slug.get(event.endpoint)
            if endpoint_id is None:
                self._defer(batch, index, event.endpoint)
                continue
            row = self.row(event, endpoint_id)
            if row is None:
                detail = f"unusable {event.event_type} {event.event_id}"
                self._give_up(batch, index, "rejected", detail)
                continue
            ready.append((index, row))
            occurred: datetime = event.occurred_at
            oldest = occurred if oldest is None or occurred < oldest else oldest
        if not ready:
            return
        started = time.perf_counter()
        try:
            written = await self._retrying(
                functools.partial(self.insert, rows=[row for _, row in ready]),
                f"writing {len(ready)} rows",
            )
        except ROW_ERRORS:
            written = await self._one_by_one(batch, ready)
        self._write_seconds.observe(time.perf_counter() - started)
        assert oldest is not None
        self._latency.observe(max(0.0, (datetime.now(UTC) - oldest).total_seconds()))
        self._batches.inc()
        self._batch_rows.observe(len(ready))
        self._rows_written.inc(written)
        self._rows_duplicate.inc(len(ready) - written)

    async def _settle_all(self, batch: _Batch) -> None:
        """After the commit: ack each message, or hand back those with an event to retry."""
        try:
            for index, msg in enumerate(batch.msgs):
                if index in batch.settled:
                    continue
                size = batch.sizes[index]
                given_up = batch.given_up.get(index, 0)
                delay = batch.redeliver.get(index)
                batch.settled.add(index)
                if delay is not None:
                    # Its other events are stored; the retry finds them there and skips them.
                    self.stats.nacked += size
                    await msg.nak(delay)
                elif given_up >= size:
                    self.stats.terminated += size
                    await msg.term()
                else:
                    self.stats.acked += size - given_up
                    self.stats.terminated += given_up
                    await msg.ack()
        except Exception as exc:  # NATS away: JetStream redelivers, the insert skips them
            if self._failure_log():
                log.warning("ingest %s: acks not sent (%s)", self.durable, exc)

    async def _endpoint_ids(self, batch: _Batch) -> dict[str, uuid.UUID | None]:
        """The endpoint id of each slug the batch's events name without an id of their own."""
        last: dict[str, bool] = {}
        for index, event, _ in batch.events:
            if self._given_id(event.endpoint_id) is None:
                final = (batch.msgs[index].metadata.num_delivered or 1) >= self._max_deliver
                last[event.endpoint] = last.get(event.endpoint, False) or final
        found: dict[str, uuid.UUID | None] = {}
        for slug, final in last.items():
            # The cache remembers a miss for a moment: an event on its last delivery looks
            # past it, so an endpoint created within that moment keeps its first predictions.
            lookup = functools.partial(
                self._directory.lookup if final else self._directory.cached, slug
            )
            # On the writer's connection, under the same retry as the write: an outage must
            # hold the batch, not fail it towards max_deliver.
            found[slug] = await self._retrying(lookup, f"looking up endpoint {slug!r}")
        return found

    def _given_id(self, value: str | None) -> uuid.UUID | None:
        if value is None:
            return None
        try:
            return self._ids[value]
        except KeyError:
            pass
        if len(self._ids) > 10_000:
            self._ids.clear()
        try:
            parsed: uuid.UUID | None = uuid.UUID(value)
        except ValueError:
            parsed = None
        self._ids[value] = parsed
        return parsed

    async def _retrying(
        self, operation: Callable[[asyncpg.Connection], Awaitable[T]], what: str
    ) -> T:
        failures = 0
        while True:
            try:
                return await operation(await self._connection())
            except ROW_ERRORS:
                raise
            except UNAVAILABLE as exc:
                failures += 1
                self._metrics.errors.labels(self.table, "database_unavailable").inc()
                if self._unavailable_log():
                    log.warning(
                        "ingest %s: %s failed (%s: %s); retrying",
                        self.durable,
                        what,
                        type(exc).__name__,
                        exc,
                    )
                await self.close()
                await self._pause(self._backoff.delay(failures))
                if self._stopping.is_set():
                    raise _Abandoned from exc

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            conn = await asyncio.wait_for(database.connect(self._database_url), timeout=10.0)
            try:
                await self.setup(conn)
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
        return self._conn

    async def _one_by_one(self, batch: _Batch, ready: list[tuple[int, Row]]) -> int:
        written = 0
        for index, row in ready:
            try:
                written += await self._retrying(
                    functools.partial(self.insert, rows=[row]), "writing a row alone"
                )
            except ROW_ERRORS as exc:
                self._metrics.errors.labels(self.table, "rejected").inc()
                self._give_up(batch, index, "rejected", f"{type(exc).__name__}: {exc}")
        return written

    def _defer(self, batch: _Batch, index: int, slug: str) -> None:
        """Redeliver an event whose endpoint is unknown yet; give it up after max_deliver."""
        self._metrics.errors.labels(self.table, "unknown_endpoint").inc()
        attempts = batch.msgs[index].metadata.num_delivered or 1
        if attempts >= self._max_deliver:
            self._give_up(batch, index, "unknown_endpoint", f"no endpoint {slug!r}")
            return
        # The endpoint may be being created: its row can land after its first predictions.
        delay = min(60.0, 2.0 ** (attempts - 1))
        batch.redeliver[index] = min(delay, batch.redeliver.get(index, delay))

    def _give_up(self, batch: _Batch, index: int, reason: str, detail: str) -> None:
        """Never store this event; its message is acked (or terminated) with the others."""
        batch.given_up[index] = batch.given_up.get(index, 0) + 1
        self._dropped(reason, detail)

    def _dropped(self, reason: str, detail: str, count: int = 1) -> None:
        self._metrics.dropped.labels(self.table, reason).inc(count)
        if self._dropped_log():
            log.error("ingest %s: gave up %d event(s): %s", self.durable, count, detail)

    async def _hand_back(self, batch: _Batch, *, delay: bool) -> None:
        for index, msg in enumerate(batch.msgs):
            if index in batch.settled:
                continue
            batch.settled.add(index)
            size = pack_size(msg.headers)
            attempts = msg.metadata.num_delivered or 1
            try:
                if delay and attempts >= self._max_deliver:
                    self._metrics.dropped.labels(self.table, "failed").inc(size)
                    self.stats.terminated += size
                    await msg.term()
                else:
                    self.stats.nacked += size
                    await msg.nak(min(60.0, 2.0 ** (attempts - 1)) if delay else None)
            except Exception as exc:  # NATS away: JetStream redelivers after ack_wait
                if self._failure_log():
                    log.warning("ingest %s: could not settle a message (%s)", self.durable, exc)

    async def _keep_alive(self, batch: _Batch) -> None:
        while True:
            await asyncio.sleep(self._ack_wait / 2)
            for index, msg in enumerate(batch.msgs):
                if index not in batch.settled:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()


class PredictionIngest(StreamIngest[PredictionRow]):
    """``PredictionLogged`` events into the partitioned ``predictions`` table."""

    table = "predictions"
    event_class = PredictionLogged

    def read(self, body: bytes, headers: Mapping[str, str]) -> Any:
        """The prediction, read by ``read_prediction`` when it has the usual shape."""
        if headers.get(EVENT_TYPE_HEADER) == PredictionLogged.event_type:
            quick = read_prediction(body)
            if quick is not None:
                return quick
        return super().read(body, headers)

    def read_pack(
        self, data: bytes, headers: Mapping[str, str] | None
    ) -> Sequence[tuple[Any, Mapping[str, str]]] | None:
        """A replica's column pack, read by ``read_prediction_pack``."""
        if headers is None or headers.get(LAYOUT_HEADER) != COLUMNS_LAYOUT:
            return None
        if headers.get(EVENT_TYPE_HEADER) != PredictionLogged.event_type:
            return None
        return read_prediction_pack(data, headers)

    def row(
        self, event: PredictionLogged | LoggedPrediction, endpoint_id: uuid.UUID
    ) -> PredictionRow:
        """The ``predictions`` row of the event."""
        latency = event.latency_ms
        return PredictionRow(
            request_id=event.request_id,
            received_at=event.received_at,
            endpoint_id=endpoint_id,
            status=event.status,
            latency_ms=latency if latency <= _REAL_MAX else math.inf,
            version=version_number(event.version),
            input=event.input,
            output=event.output,
            error=event.error,
            trace_id=event.trace_id,
            shadow=event.shadow,
        )

    async def insert(self, conn: asyncpg.Connection, rows: Sequence[PredictionRow]) -> int:
        """COPY straight into ``predictions``; if a request is stored already (a
        redelivery), through the staging table instead, skipping what is stored."""
        try:
            # Nearly always none is: a straight COPY costs PostgreSQL 35 % less per row than
            # staging and INSERT ... ON CONFLICT (~7 against ~11 µs at 200 rows a batch).
            async with conn.transaction():
                return await copy_predictions(conn, rows)
        except asyncpg.UniqueViolationError:
            return await insert_predictions(conn, rows)


MetricRecord = tuple[str, uuid.UUID, int | None, str, float, str | None, datetime]


class MetricIngest(StreamIngest[MetricRecord]):
    """``MetricLogged`` events into ``metrics``, once per event id."""

    table = "metrics"
    event_class = MetricLogged

    def row(self, event: MetricLogged, endpoint_id: uuid.UUID) -> MetricRecord | None:
        """The ``metrics`` record of the event; None for a value that is not finite."""
        if not math.isfinite(event.value):
            return None
        return (
            event.event_id,
            endpoint_id,
            version_number(event.version),
            clean_text(event.key),
            event.value,
            None if event.request_id is None else clean_text(event.request_id),
            event.logged_at,
        )

    async def setup(self, conn: asyncpg.Connection) -> None:
        """The session's staging table, emptied at every commit."""
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_METRICS_STAGING} (event_id text,"
            " endpoint_id uuid, version integer, key text, value double precision,"
            " request_id text, logged_at timestamptz) ON COMMIT DELETE ROWS"
        )

    async def insert(self, conn: asyncpg.Connection, rows: Sequence[MetricRecord]) -> int:
        """COPY into staging, then insert the events not stored yet."""
        columns = ", ".join(METRIC_COLUMNS)
        async with conn.transaction():
            await conn.copy_records_to_table(_METRICS_STAGING, records=rows, columns=METRIC_COLUMNS)
            status: Any = await conn.execute(
                f"INSERT INTO metrics ({columns}) SELECT {columns} FROM {_METRICS_STAGING}"
                " ON CONFLICT (event_id) DO NOTHING"
            )
        return int(str(status).rsplit(" ", 1)[-1])


class Ingest:
    """The consumer loops of both streams, run until told to stop."""

    def __init__(
        self,
        settings: PredictLogSettings,
        nc: Client,
        js: JetStreamContext,
        directory: EndpointDirectory,
        metrics: IngestMetrics,
    ) -> None:
        self.durables = (
            (PREDICTIONS_STREAM, f"{settings.durable_prefix}-predictions"),
            (METRICS_STREAM, f"{settings.durable_prefix}-metrics"),
        )
        plan: list[tuple[type[StreamIngest[Any]], str, str, int]] = [
            (PredictionIngest, *self.durables[0], settings.ingest_consumers),
            # Metrics arrive at a fraction of the prediction rate: one consumer keeps up.
            (MetricIngest, *self.durables[1], 1),
        ]
        self.loops: list[StreamIngest[Any]] = []
        for kind, stream, durable, count in plan:
            for _ in range(count):
                self.loops.append(
                    kind(
                        nc,
                        js,
                        stream=stream,
                        durable=durable,
                        directory=directory,
                        metrics=metrics,
                        settings=settings,
                        # Room for every loop's batch in flight plus one fetched ahead.
                        max_ack_pending=max(1_000, 2 * count * settings.ingest_batch),
                    )
                )
        metrics.watch(self.loops)

    async def serve(self, stopping: asyncio.Event) -> None:
        """Run every loop until ``stopping`` is set and their current batches are settled."""
        async with asyncio.TaskGroup() as loops:
            for loop in self.loops:
                loops.create_task(loop.run(stopping), name=f"ingest-{loop.durable}")
