"""The batched publisher: a bounded, never-blocking, at-least-once path to JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadSubjectError, MaxPayloadError
from nats.js import JetStreamContext
from opentelemetry import trace
from prometheus_client import CollectorRegistry

import cormorant.common.bus.packing as packing
from cormorant.common.bus._metrics import collector_for
from cormorant.common.bus._support import Throttled, backoff
from cormorant.common.events import EVENT_TYPE_HEADER, MSG_ID_HEADER, Event
from cormorant.common.telemetry import inject_context

log = logging.getLogger(__name__)

PACK_EVENTS = 1024
"""The ``max_pack`` of the prediction and metric publishers: up to 1,024 events a message.

nats-server spends 0.3-1 ms of CPU per message (wake-ups) against ~2 µs per event's bytes,
so the fewer messages the better, up to ``max_pack_bytes``."""


@dataclass(slots=True)
class PublisherStats:
    """Counts of a ``BatchedPublisher`` since it was created (a snapshot)."""

    published: int = 0
    """Events acknowledged by JetStream; an event re-sent after a lost ack counts once."""
    messages: int = 0
    """NATS messages acknowledged by JetStream: one per event, or one per pack of events."""
    retried: int = 0
    """Events whose publish failed (timeout, no responders, disconnected), queued again."""
    dropped: int = 0
    """Events that will never be published: buffer full, unencodable, rejected, shutdown."""
    duplicates: int = 0
    """Events in acks flagged duplicate by JetStream: an earlier attempt had been stored."""
    pending: int = 0
    """Events buffered or in flight."""
    in_flight: int = 0
    """Events sent and waiting for their ack."""
    in_flight_messages: int = 0
    """NATS messages sent and waiting for their ack."""
    dropped_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str]
    event_type: str
    event_id: str
    count: int = 1
    deadline: float = 0.0
    members: list[_Outgoing] | None = None
    """The events of a pack, sent one by one should the pack be refused as too large."""
    split: Callable[[], Sequence[packing.Pack]] | None = None
    """A producer-built pack's smaller packs, sent instead should it be refused."""
    packed: bool = False
    """Built by its producer (``publish_pack``): sent as it is, never packed with others."""
    on_settled: Callable[[int], None] | None = None
    """Told how many of its events are done with: acknowledged, or refused for good."""


def _add_context(headers: dict[str, str], context: Mapping[str, str] | None) -> None:
    """The given trace context, else the current span's, into an event's headers."""
    if context is not None:
        headers.update(context)
    elif trace.get_current_span().get_span_context().is_valid:
        # Checked first: the propagators cost more than the rest of the event's headers.
        inject_context(headers)


class BatchedPublisher:
    """A bounded buffer of events drained to JetStream by a background task.

    ``publish`` never blocks and never raises: it encodes the event and queues it, or counts
    a drop when the buffer (queued + in flight) holds ``max_buffer`` events. The drain task
    pipelines up to ``max_in_flight`` messages, each with an id as ``Nats-Msg-Id`` and the
    caller's trace context; a message without an ack within ``ack_timeout``, or with an error
    ack, is re-sent, as it was, after a backoff until it succeeds. JetStream's
    de-duplication turns these retries into exactly-once storage within the stream's
    duplicate window.

    With ``max_pack`` > 1, events queued together for one subject leave as one pack (see
    ``packing``): up to ``max_pack`` events and ``max_pack_bytes`` in one publish and one
    ack, under an id derived from their event ids. Only streams read through ``unpack``
    (the prediction log's ingest) may receive packs; the event stream's core
    NATS subscribers read one event per message, so its publishers leave ``max_pack`` at 1.
    ``publish_pack`` takes a pack its producer built (a replica's column pack), sent as it is.
    """

    def __init__(
        self,
        nc: Client | JetStreamContext,
        *,
        name: str,
        max_buffer: int = 100_000,
        max_in_flight: int = 1_000,
        max_pack: int = 1,
        max_pack_bytes: int = 768 * 1024,
        ack_timeout: float = 5.0,
        retry_backoff: float = 0.1,
        max_retry_backoff: float = 5.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_buffer < 1 or max_in_flight < 1 or max_pack < 1:
            raise ValueError("max_buffer, max_in_flight and max_pack must be positive")
        # Acks are matched on our own reply subjects over the core client: nats-py's
        # publish_async leaks a pending slot whenever the underlying publish raises (as it
        # does while reconnecting with a full buffer) and never times an ack out.
        self._nc: Client = nc if isinstance(nc, Client) else nc._nc
        self.name = name
        self._max_buffer = max_buffer
        self._max_in_flight = max_in_flight
        self._max_pack = max_pack
        self._max_pack_bytes = max_pack_bytes
        self._ack_timeout = ack_timeout
        self._retry_backoff = retry_backoff
        self._max_retry_backoff = max_retry_backoff

        self._queue: deque[_Outgoing] = deque()
        self._retry: deque[_Outgoing] = deque()
        # reply token -> message; insertion order is send order, hence deadline order.
        self._in_flight: dict[str, _Outgoing] = {}
        self._in_flight_events = 0
        self._pending = 0
        self._seq = 0
        self._backoff_level = 0
        self._resume_at = 0.0
        self._stats = PublisherStats()
        self._closed = False

        self._wakeup = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reply_prefix = ""
        self._acks: Subscription | None = None
        self._tasks: list[asyncio.Task[None]] = []

        self._retry_log = Throttled(log, logging.WARNING)
        self._drop_logs: dict[str, Throttled] = {}
        if registry is not None:
            collector = collector_for(registry)
            if name in collector.publishers:
                raise ValueError(f"a publisher named {name!r} already reports to this registry")
            collector.publishers[name] = self

    @property
    def stats(self) -> PublisherStats:
        """A snapshot of the counters."""
        snapshot = dataclasses.replace(
            self._stats, dropped_by_reason=dict(self._stats.dropped_by_reason)
        )
        snapshot.pending = self._pending
        snapshot.in_flight = self._in_flight_events
        snapshot.in_flight_messages = len(self._in_flight)
        return snapshot

    async def start(self) -> None:
        """Subscribe to acks and start draining the buffer."""
        if self._tasks:
            raise RuntimeError(f"publisher {self.name!r} already started")
        self._loop = asyncio.get_running_loop()
        inbox = self._nc.new_inbox()
        self._reply_prefix = inbox + "."
        self._acks = await self._nc.subscribe(
            inbox + ".*",
            cb=self._on_ack,
            pending_msgs_limit=max(65_536, 4 * self._max_in_flight),
        )
        self._tasks = [
            asyncio.create_task(self._drain(), name=f"publisher-{self.name}-drain"),
            asyncio.create_task(self._reap(), name=f"publisher-{self.name}-reap"),
        ]

    def publish(self, event: Event, *, context: Mapping[str, str] | None = None) -> bool:
        """Queue ``event``; False and a counted drop if it cannot be. Call on the loop thread.

        ``context`` is the event's trace context as headers (``traceparent``...); without
        it, the current span's is sent.
        """
        if self._refuses():
            return False
        try:
            item = self._prepare(event, context)
        except Exception as exc:  # never raise into the request path
            self._drop(1, "unencodable", exc)
            return False
        self._enqueue(item)
        return True

    def publish_encoded(
        self,
        subject: str,
        event_type: str,
        event_id: str,
        payload: bytes,
        *,
        context: Mapping[str, str] | None = None,
    ) -> bool:
        """``publish`` for an event already encoded: its subject, type, id and JSON body.

        For hot paths that write the body themselves (``prediction_body``).
        """
        if self._refuses():
            return False
        headers = {EVENT_TYPE_HEADER: event_type, MSG_ID_HEADER: event_id}
        _add_context(headers, context)
        self._enqueue(_Outgoing(subject, payload, headers, event_type, event_id))
        return True

    def publish_pack(
        self,
        subject: str,
        pack: packing.Pack,
        *,
        on_settled: Callable[[int], None] | None = None,
    ) -> bool:
        """Queue a pack its producer built; False and ``pack.count`` drops if it cannot be.

        It leaves as it is, in one message, with its own headers; should the server refuse
        it as too large, ``pack.split`` gives the packs sent instead. ``on_settled(count)``
        is called (on the loop) as its events are acknowledged or refused for good, never
        for events left unpublished when the publisher stops (their producer may keep them).
        """
        if self._refuses(pack.count):
            return False
        self._enqueue(self._outgoing(subject, pack, on_settled))
        return True

    @property
    def pack_bytes(self) -> int:
        """The most bytes of events one pack should carry, below the server's limit."""
        return self._pack_limit()

    def publish_threadsafe(self, event: Event, *, context: Mapping[str, str] | None = None) -> bool:
        """``publish`` from another thread: encodes here, queues on the loop.

        True once handed to the loop, where a full buffer still counts it as dropped.
        """
        loop = self._loop
        try:
            item: _Outgoing | None = self._prepare(event, context)
            failure: BaseException | None = None
        except Exception as exc:
            item, failure = None, exc
        if loop is None or loop.is_closed():
            # No loop to hand over to; the count may race with the loop thread, which is
            # acceptable for a publisher that was never started or is gone.
            self._drop(1, "not_running")
            return False
        try:
            if item is None:
                loop.call_soon_threadsafe(self._drop, 1, "unencodable", failure)
                return False
            loop.call_soon_threadsafe(self._offer, item)
        except RuntimeError:  # the loop closed between the check and the call
            return False
        return True

    # A deadline here bounds a wait whose outcome is reported (not raised), hence the argument.
    async def flush(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        """Wait until every queued event is acknowledged; False if ``timeout`` passed first."""
        if self._pending == 0:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self, timeout: float = 5.0) -> int:  # noqa: ASYNC109
        """Refuse new events, flush for up to ``timeout`` s, stop; the count left unpublished."""
        self._closed = True
        if self._tasks:
            await self.flush(timeout)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._acks is not None:
            with contextlib.suppress(Exception):  # a closed connection has no subscription left
                await self._acks.unsubscribe()
            self._acks = None
        remaining = self._pending
        if remaining:
            self._queue.clear()
            self._retry.clear()
            self._in_flight.clear()
            self._in_flight_events = 0
            self._pending = 0
            self._empty.set()
            self._drop(remaining, "shutdown")
        return remaining

    # -- internals; everything below runs on the loop thread

    @staticmethod
    def _prepare(event: Event, context: Mapping[str, str] | None) -> _Outgoing:
        headers = event.headers()
        _add_context(headers, context)
        return _Outgoing(event.subject, event.encode(), headers, event.event_type, event.event_id)

    @staticmethod
    def _outgoing(
        subject: str, pack: packing.Pack, on_settled: Callable[[int], None] | None = None
    ) -> _Outgoing:
        return _Outgoing(
            subject,
            pack.payload,
            pack.headers,
            pack.event_type,
            pack.headers.get(MSG_ID_HEADER, ""),
            count=pack.count,
            split=pack.split,
            packed=True,
            on_settled=on_settled,
        )

    def _offer(self, item: _Outgoing) -> None:
        if not self._refuses():
            self._enqueue(item)

    def _enqueue(self, item: _Outgoing) -> None:
        self._queue.append(item)
        if self._pending == 0:
            self._empty.clear()
        self._pending += item.count
        self._wakeup.set()

    def _refuses(self, count: int = 1) -> bool:
        """Count ``count`` drops and say so if they cannot be queued (closed, or no room)."""
        if self._closed:
            self._drop(count, "closed")
            return True
        if self._pending + count > self._max_buffer:
            self._drop(count, "buffer_full")
            return True
        return False

    def _drop(self, count: int, reason: str, detail: object = None) -> None:
        stats = self._stats
        stats.dropped += count
        stats.dropped_by_reason[reason] = stats.dropped_by_reason.get(reason, 0) + count
        throttled = self._drop_logs.get(reason)
        if throttled is None:
            level = logging.WARNING if reason in ("buffer_full", "closed") else logging.ERROR
            throttled = self._drop_logs[reason] = Throttled(log, level)
        throttled(
            "publisher %r dropped %d event(s): %s%s (%d dropped in total)",
            self.name,
            count,
            reason,
            f": {detail}" if detail is not None else "",
            stats.dropped,
        )

    def _settled(self, count: int) -> None:
        self._pending -= count
        if self._pending == 0:
            self._empty.set()

    def _retry_later(self, item: _Outgoing, reason: object) -> None:
        self._stats.retried += item.count
        self._retry.append(item)
        assert self._loop is not None
        now = self._loop.time()
        # One failure episode (a dead server times out a whole window of publishes) raises
        # the backoff once, not once per message.
        if now >= self._resume_at:
            self._backoff_level += 1
            delay = backoff(self._backoff_level, self._retry_backoff, self._max_retry_backoff)
            self._resume_at = now + delay
        self._retry_log(
            "publisher %r: publish failed (%s); retrying with backoff, %d pending",
            self.name,
            reason,
            self._pending,
        )
        self._wakeup.set()

    def _take(self) -> _Outgoing:
        """The next message to send: a retry as it was, else the next queued event or a
        pack of the events queued behind it for the same subject."""
        if self._retry:
            return self._retry.popleft()
        queue = self._queue
        first = queue.popleft()
        if self._max_pack == 1 or not queue or first.packed:
            return first
        limit = self._pack_limit()
        line = packing.header_line(first.headers)
        size = len(line) + len(first.payload) + 2
        if size > limit:
            return first
        members, lines = [first], [(line, first.payload)]
        while queue and len(members) < self._max_pack:
            item = queue[0]
            if item.packed or item.subject != first.subject or item.event_type != first.event_type:
                break
            line = packing.header_line(item.headers)
            size += len(line) + len(item.payload) + 2
            if size > limit:
                break
            members.append(queue.popleft())
            lines.append((line, item.payload))
        if len(members) == 1:
            return first
        payload, headers = packing.pack(
            first.event_type, lines, (member.event_id for member in members)
        )
        return _Outgoing(
            first.subject,
            payload,
            headers,
            first.event_type,
            headers[MSG_ID_HEADER],
            count=len(members),
            members=members,
        )

    def _pack_limit(self) -> int:
        # Room for the pack's own headers under the server's limit on a message.
        server = self._nc.max_payload
        return min(self._max_pack_bytes, server - 4096) if server > 8192 else self._max_pack_bytes

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        sent_since_yield = 0
        while True:
            if len(self._in_flight) >= self._max_in_flight or not (self._retry or self._queue):
                self._wakeup.clear()
                await self._wakeup.wait()
                sent_since_yield = 0
                continue
            pause = self._resume_at - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
                continue
            await self._send(self._take(), loop.time())
            sent_since_yield += 1
            if sent_since_yield >= 64:
                # A long burst would otherwise hold the loop away from request handlers.
                sent_since_yield = 0
                await asyncio.sleep(0)

    def _sent(self, token: str) -> _Outgoing | None:
        item = self._in_flight.pop(token, None)
        if item is not None:
            self._in_flight_events -= item.count
        return item

    async def _send(self, item: _Outgoing, now: float) -> None:
        self._seq += 1
        token = str(self._seq)
        item.deadline = now + self._ack_timeout
        # Registered before sending: the ack may be processed before publish() returns.
        self._in_flight[token] = item
        self._in_flight_events += item.count
        try:
            await self._nc.publish(
                item.subject, item.payload, reply=self._reply_prefix + token, headers=item.headers
            )
        except (MaxPayloadError, BadSubjectError) as exc:
            self._sent(token)
            self._refused(item, f"{type(exc).__name__} on {item.subject}")
        except Exception as exc:  # reconnecting with a full buffer, closed, draining
            self._sent(token)
            self._retry_later(item, type(exc).__name__)

    def _refused(self, item: _Outgoing, detail: str) -> None:
        """A message refused for good: a pack's events go again one by one (a producer's
        pack in the smaller packs it splits into), else they are dropped."""
        if item.members:
            # Too large together (or some other refusal of the whole): each event alone
            # may pass, and only the one at fault is then dropped.
            self._retry.extend(item.members)
            self._wakeup.set()
            return
        count = item.count
        if item.split is not None:
            parts = [self._outgoing(item.subject, pack, item.on_settled) for pack in item.split()]
            self._retry.extend(parts)
            self._wakeup.set()
            # What the smaller packs leave out (an event too large alone) is dropped here.
            count -= sum(part.count for part in parts)
            if not count:
                return
        self._settled(count)
        self._drop(count, "rejected", detail)
        if item.on_settled is not None:
            item.on_settled(count)

    async def _on_ack(self, msg: Msg) -> None:
        item = self._sent(msg.subject[len(self._reply_prefix) :])
        if item is None:
            return  # that attempt timed out and was re-sent; JetStream drops the copy
        self._wakeup.set()
        if msg.headers and msg.headers.get("Status") == "503":
            self._retry_later(item, "no responders: JetStream or the stream is not available")
            return
        try:
            ack = json.loads(msg.data)
        except ValueError:
            self._retry_later(item, f"unreadable ack {msg.data[:100]!r}")
            return
        error = ack.get("error")
        if error is None:
            stats = self._stats
            stats.published += item.count
            stats.messages += 1
            if ack.get("duplicate"):
                stats.duplicates += item.count
            self._backoff_level = 0
            self._settled(item.count)
            if item.on_settled is not None:
                item.on_settled(item.count)
        elif error.get("code") == 400:
            # A bad request (message too large for the stream...) fails the same way forever.
            self._refused(item, f"{error.get('description')} on {item.subject}")
        else:
            self._retry_later(item, f"{error.get('description')} (code {error.get('code')})")

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        interval = min(1.0, max(0.02, self._ack_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            expired: list[str] = []
            for token, item in self._in_flight.items():
                if item.deadline > now:
                    break
                expired.append(token)
            for token in expired:
                timed_out = self._sent(token)
                if timed_out is not None:
                    self._retry_later(timed_out, "no ack within ack_timeout")
