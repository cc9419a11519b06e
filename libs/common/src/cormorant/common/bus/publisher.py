"""The batched publisher: a bounded, never-blocking, at-least-once path to JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
from collections import deque
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import BadSubjectError, MaxPayloadError
from nats.js import JetStreamContext
from prometheus_client import CollectorRegistry

from cormorant.common.bus._metrics import collector_for
from cormorant.common.bus._support import Throttled, backoff
from cormorant.common.events import Event
from cormorant.common.telemetry import inject_context

log = logging.getLogger(__name__)


@dataclass(slots=True)
class PublisherStats:
    """Counts of a ``BatchedPublisher`` since it was created (a snapshot)."""

    published: int = 0
    """Events acknowledged by JetStream; an event re-sent after a lost ack counts once."""
    retried: int = 0
    """Failed publish attempts (timeout, no responders, disconnected) queued again."""
    dropped: int = 0
    """Events that will never be published: buffer full, unencodable, rejected, shutdown."""
    duplicates: int = 0
    """Acks flagged duplicate by JetStream: an earlier attempt had been stored after all."""
    pending: int = 0
    """Events buffered or in flight."""
    in_flight: int = 0
    """Events sent and waiting for their ack."""
    dropped_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Outgoing:
    subject: str
    payload: bytes
    headers: dict[str, str]
    deadline: float = 0.0


class BatchedPublisher:
    """A bounded buffer of events drained to JetStream by a background task.

    ``publish`` never blocks and never raises: it encodes the event and queues it, or counts
    a drop when the buffer (queued + in flight) holds ``max_buffer`` events. The drain task
    pipelines up to ``max_in_flight`` publishes, each with its event id as ``Nats-Msg-Id``
    and the caller's trace context; a publish without an ack within ``ack_timeout``, or with
    an error ack, is re-sent after a backoff until it succeeds. JetStream's de-duplication
    turns these retries into exactly-once storage within the stream's duplicate window.
    """

    def __init__(
        self,
        nc: Client | JetStreamContext,
        *,
        name: str,
        max_buffer: int = 100_000,
        max_in_flight: int = 1_000,
        ack_timeout: float = 5.0,
        retry_backoff: float = 0.1,
        max_retry_backoff: float = 5.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if max_buffer < 1 or max_in_flight < 1:
            raise ValueError("max_buffer and max_in_flight must be positive")
        # Acks are matched on our own reply subjects over the core client: nats-py's
        # publish_async leaks a pending slot whenever the underlying publish raises (as it
        # does while reconnecting with a full buffer) and never times an ack out.
        self._nc: Client = nc if isinstance(nc, Client) else nc._nc
        self.name = name
        self._max_buffer = max_buffer
        self._max_in_flight = max_in_flight
        self._ack_timeout = ack_timeout
        self._retry_backoff = retry_backoff
        self._max_retry_backoff = max_retry_backoff

        self._queue: deque[_Outgoing] = deque()
        self._retry: deque[_Outgoing] = deque()
        # reply token -> event; insertion order is send order, hence deadline order.
        self._in_flight: dict[str, _Outgoing] = {}
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
        snapshot.in_flight = len(self._in_flight)
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

    def publish(self, event: Event) -> bool:
        """Queue ``event``; False and a counted drop if it cannot be. Call on the loop thread."""
        if self._closed:
            self._drop(1, "closed")
            return False
        if self._pending >= self._max_buffer:
            self._drop(1, "buffer_full")
            return False
        try:
            item = self._prepare(event)
        except Exception as exc:  # never raise into the request path
            self._drop(1, "unencodable", exc)
            return False
        self._enqueue(item)
        return True

    def publish_threadsafe(self, event: Event) -> bool:
        """``publish`` from another thread: encodes here, queues on the loop.

        True once handed to the loop, where a full buffer still counts it as dropped.
        """
        loop = self._loop
        try:
            item: _Outgoing | None = self._prepare(event)
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
            self._pending = 0
            self._empty.set()
            self._drop(remaining, "shutdown")
        return remaining

    # -- internals; everything below runs on the loop thread

    def _prepare(self, event: Event) -> _Outgoing:
        headers = event.headers()
        inject_context(headers)
        return _Outgoing(event.subject, event.encode(), headers)

    def _offer(self, item: _Outgoing) -> None:
        if self._closed:
            self._drop(1, "closed")
        elif self._pending >= self._max_buffer:
            self._drop(1, "buffer_full")
        else:
            self._enqueue(item)

    def _enqueue(self, item: _Outgoing) -> None:
        self._queue.append(item)
        if self._pending == 0:
            self._empty.clear()
        self._pending += 1
        self._wakeup.set()

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

    def _settled(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._empty.set()

    def _retry_later(self, item: _Outgoing, reason: object) -> None:
        self._stats.retried += 1
        self._retry.append(item)
        assert self._loop is not None
        now = self._loop.time()
        # One failure episode (a dead server times out a whole window of publishes) raises
        # the backoff once, not once per event.
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
            item = self._retry.popleft() if self._retry else self._queue.popleft()
            await self._send(item, loop.time())
            sent_since_yield += 1
            if sent_since_yield >= 64:
                # A long burst would otherwise hold the loop away from request handlers.
                sent_since_yield = 0
                await asyncio.sleep(0)

    async def _send(self, item: _Outgoing, now: float) -> None:
        self._seq += 1
        token = str(self._seq)
        item.deadline = now + self._ack_timeout
        # Registered before sending: the ack may be processed before publish() returns.
        self._in_flight[token] = item
        try:
            await self._nc.publish(
                item.subject, item.payload, reply=self._reply_prefix + token, headers=item.headers
            )
        except (MaxPayloadError, BadSubjectError) as exc:
            del self._in_flight[token]
            self._settled()
            self._drop(1, "rejected", f"{type(exc).__name__} on {item.subject}")
        except Exception as exc:  # reconnecting with a full buffer, closed, draining
            del self._in_flight[token]
            self._retry_later(item, type(exc).__name__)

    async def _on_ack(self, msg: Msg) -> None:
        item = self._in_flight.pop(msg.subject[len(self._reply_prefix) :], None)
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
            self._stats.published += 1
            if ack.get("duplicate"):
                self._stats.duplicates += 1
            self._backoff_level = 0
            self._settled()
        elif error.get("code") == 400:
            # A bad request (message too large for the stream...) fails the same way forever.
            self._settled()
            self._drop(1, "rejected", f"{error.get('description')} on {item.subject}")
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
                self._retry_later(self._in_flight.pop(token), "no ack within ack_timeout")
