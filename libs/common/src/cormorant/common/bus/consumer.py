"""Durable pull consumers that hand batches of decoded events to a handler."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from opentelemetry.context import Context
from prometheus_client import CollectorRegistry

import cormorant.common.bus.packing as packing
from cormorant.common.bus._metrics import collector_for
from cormorant.common.bus._support import Throttled, backoff
from cormorant.common.events import Event, EventDecodeError
from cormorant.common.telemetry import extract_context

log = logging.getLogger(__name__)


class _Parcel:
    """One JetStream message and the deliveries of the events it carries.

    The message is settled once every delivery is: redelivered if any asked for it (the
    others were handled, and handlers are idempotent), else acked, or terminated when every
    one of them was.
    """

    __slots__ = ("_acked", "_nak_delay", "_naked", "_open", "msg")

    def __init__(self, msg: Msg, size: int) -> None:
        self.msg = msg
        self._open = size
        self._acked = False
        self._naked = False
        self._nak_delay: float | None = None

    async def settle(self, how: str, delay: float | None = None) -> None:
        """Record one delivery's outcome; settle the message with the last one."""
        if how == "nak":
            self._nak_delay = delay if not self._naked else _sooner(self._nak_delay, delay)
            self._naked = True
        elif how == "ack":
            self._acked = True
        self._open -= 1
        if self._open > 0:
            return
        if self._naked:
            await self.msg.nak(self._nak_delay)
        elif self._acked:
            await self.msg.ack()
        else:
            await self.msg.term()


def _sooner(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else min(a, b)


@dataclass(slots=True, eq=False)
class Delivery:
    """One decoded event and the JetStream message that carried it.

    A handler may settle a delivery itself (``ack``/``nak``/``term``); the consumer settles
    the others once the handler returns (ack) or raises (nak with backoff, or term after
    ``max_deliver`` attempts). Several events may share one message (a pack, see
    ``packing``): the message is settled when all of its deliveries are, and a ``nak`` of
    one redelivers them all.
    """

    event: Event
    msg: Msg
    settled: bool = False
    headers: Mapping[str, str] | None = None
    """The event's own headers (its trace context); the message's when None."""
    parcel: _Parcel | None = None

    def trace_context(self) -> Context:
        """The trace context of the request that produced the event, to link spans to."""
        headers = self.headers if self.headers is not None else self.msg.headers
        return extract_context(headers or {})

    @property
    def num_delivered(self) -> int:
        """How many times JetStream has delivered this message, this time included."""
        return int(self.msg.metadata.num_delivered)

    async def ack(self) -> None:
        """Done with this event."""
        await self._settle("ack")

    async def nak(self, delay: float | None = None) -> None:
        """Ask for redelivery, after ``delay`` seconds if given."""
        await self._settle("nak", delay)

    async def term(self) -> None:
        """Never deliver this event again."""
        await self._settle("term")

    async def _settle(self, how: str, delay: float | None = None) -> None:
        if self.settled:
            return
        self.settled = True
        if self.parcel is not None:
            await self.parcel.settle(how, delay)
        elif how == "ack":
            await self.msg.ack()
        elif how == "nak":
            await self.msg.nak(delay)
        else:
            await self.msg.term()


Handler = Callable[[list[Delivery]], Awaitable[None]]
"""Processes a batch; returning acks the unsettled deliveries, raising naks them."""


@dataclass(slots=True)
class ConsumerStats:
    """Counts of a ``Consumer`` since it was created (a snapshot)."""

    batches: int = 0
    delivered: int = 0
    acked: int = 0
    nacked: int = 0
    terminated: int = 0
    undecodable: int = 0
    handler_errors: int = 0
    fetch_errors: int = 0


class Consumer:
    """A durable pull consumer handing batches of decoded events to ``handler``.

    Explicit acks, ``max_deliver`` attempts per message, batched fetches. Fetch errors (the
    server restarting, the consumer missing) are retried with backoff, re-creating the
    consumer, so the task never dies of them. Long handlers keep their messages alive with
    progress acks every ``ack_wait / 2``.
    """

    def __init__(
        self,
        js: JetStreamContext,
        *,
        stream: str,
        durable: str,
        filter_subject: str,
        handler: Handler,
        batch: int = 256,
        max_deliver: int = 5,
        ack_wait: float = 30.0,
        max_ack_pending: int | None = None,
        fetch_timeout: float = 2.0,
        nak_delay: float = 1.0,
        max_nak_delay: float = 60.0,
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
        retry_backoff: float = 0.1,
        max_retry_backoff: float = 5.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        if batch < 1 or max_deliver < 1:
            raise ValueError("batch and max_deliver must be positive")
        self._js = js
        self.stream = stream
        self.durable = durable
        self.filter_subject = filter_subject
        self._handler = handler
        self._batch = batch
        self._max_deliver = max_deliver
        self._ack_wait = ack_wait
        self._fetch_timeout = fetch_timeout
        self._nak_delay = nak_delay
        self._max_nak_delay = max_nak_delay
        self._retry_backoff = retry_backoff
        self._max_retry_backoff = max_retry_backoff
        self._config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=filter_subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            # Room for a few batches in flight, so fetches are not starved by acks in transit.
            max_ack_pending=max_ack_pending or max(1_000, 4 * batch),
            deliver_policy=deliver_policy,
        )
        self._stats = ConsumerStats()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._busy = False
        self._fetch_log = Throttled(log, logging.WARNING)
        self._handler_log = Throttled(log, logging.ERROR)
        self._settle_log = Throttled(log, logging.WARNING)
        self._dead_log = Throttled(log, logging.ERROR)
        if registry is not None:
            collector = collector_for(registry)
            if durable in collector.consumers:
                raise ValueError(f"a consumer named {durable!r} already reports to this registry")
            collector.consumers[durable] = self

    @property
    def stats(self) -> ConsumerStats:
        """A snapshot of the counters."""
        return dataclasses.replace(self._stats)

    async def start(self) -> None:
        """Run the consumer in a background task."""
        if self._task is not None:
            raise RuntimeError(f"consumer {self.durable!r} already started")
        self._stopping = False
        self._task = asyncio.create_task(self.run(), name=f"consumer-{self.durable}")

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Stop fetching; a batch being handled gets ``timeout`` seconds to finish first."""
        self._stopping = True
        task, self._task = self._task, None
        if task is None:
            return
        if not self._busy:
            task.cancel()
        _, running = await asyncio.wait({task}, timeout=timeout)
        if running:
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is not None:
            log.error("consumer %r ended with an error", self.durable, exc_info=task.exception())

    async def run(self) -> None:
        """Fetch and handle batches until cancelled or stopped."""
        sub: JetStreamContext.PullSubscription | None = None
        failures = 0
        try:
            while not self._stopping:
                try:
                    if sub is None:
                        sub = await self._bind()
                    msgs = await sub.fetch(self._batch, timeout=self._fetch_timeout)
                except TimeoutError:
                    continue  # nothing to do within fetch_timeout, or the server is away
                except Exception as exc:
                    failures += 1
                    self._stats.fetch_errors += 1
                    self._fetch_log(
                        "consumer %r: fetch failed (%s: %s); retrying",
                        self.durable,
                        type(exc).__name__,
                        exc,
                    )
                    await self._unbind(sub)
                    sub = None
                    await asyncio.sleep(
                        backoff(failures, self._retry_backoff, self._max_retry_backoff)
                    )
                    continue
                failures = 0
                await self._handle(msgs)
        finally:
            await self._unbind(sub)

    async def _bind(self) -> JetStreamContext.PullSubscription:
        # Create-or-update, so a consumer lost with the server's store comes back as it was.
        await self._js.add_consumer(self.stream, config=self._config)
        return await self._js.pull_subscribe_bind(durable=self.durable, stream=self.stream)

    @staticmethod
    async def _unbind(sub: JetStreamContext.PullSubscription | None) -> None:
        if sub is not None:
            with contextlib.suppress(Exception):  # nothing to undo on a dead connection
                await sub.unsubscribe()

    async def _handle(self, msgs: list[Msg]) -> None:
        deliveries: list[Delivery] = []
        for msg in msgs:
            await self._unpack(msg, deliveries)
        if not deliveries:
            return
        self._stats.batches += 1
        self._stats.delivered += len(deliveries)
        self._busy = True
        keepalive = asyncio.create_task(self._keep_alive(deliveries))
        try:
            await self._handler(deliveries)
        except asyncio.CancelledError:
            # Stopped mid-batch: hand the messages back now rather than after ack_wait.
            await self._settle(deliveries, failed=True, delay=False)
            raise
        except Exception as exc:
            self._stats.handler_errors += 1
            self._handler_log(
                "consumer %r: handler failed on a batch of %d",
                self.durable,
                len(deliveries),
                exc_info=exc,
            )
            await self._settle(deliveries, failed=True)
        else:
            await self._settle(deliveries, failed=False)
        finally:
            keepalive.cancel()
            self._busy = False

    async def _unpack(self, msg: Msg, deliveries: list[Delivery]) -> None:
        """Append a delivery for each event ``msg`` carries; terminate what cannot decode."""
        try:
            items = packing.decode_message(msg.data, msg.headers)
        except EventDecodeError as exc:  # a malformed pack: none of its events is readable
            self._stats.undecodable += packing.pack_size(msg.headers)
            self._dead_log("consumer %r: terminating undecodable message: %s", self.durable, exc)
            with contextlib.suppress(Exception):
                await msg.term()
            return
        good = [(event, own) for event, own in items if isinstance(event, Event)]
        for event, _ in items:
            if isinstance(event, EventDecodeError):
                # An event that cannot be decoded now never will be: stop its redelivery.
                self._stats.undecodable += 1
                self._dead_log(
                    "consumer %r: terminating undecodable event: %s", self.durable, event
                )
        if not good:
            with contextlib.suppress(Exception):
                await msg.term()
            return
        if len(items) == 1 and not packing.is_pack(msg.headers):
            deliveries.append(Delivery(good[0][0], msg))
            return
        parcel = _Parcel(msg, len(good))
        for event, own in good:
            deliveries.append(Delivery(event, msg, headers=own, parcel=parcel))

    async def _settle(
        self, deliveries: list[Delivery], *, failed: bool, delay: bool = True
    ) -> None:
        for delivery in deliveries:
            if delivery.settled:
                continue
            try:
                if not failed:
                    await delivery.ack()
                    self._stats.acked += 1
                    continue
                attempts = delivery.num_delivered
                if delay and attempts >= self._max_deliver:
                    await delivery.term()
                    self._stats.terminated += 1
                    self._dead_log(
                        "consumer %r: giving up on %s %s after %d deliveries",
                        self.durable,
                        delivery.event.event_type,
                        delivery.event.event_id,
                        attempts,
                    )
                else:
                    await delivery.nak(
                        backoff(attempts, self._nak_delay, self._max_nak_delay) if delay else None
                    )
                    self._stats.nacked += 1
            except Exception as exc:  # connection away: JetStream redelivers after ack_wait
                self._settle_log("consumer %r: could not settle a message: %s", self.durable, exc)

    async def _keep_alive(self, deliveries: list[Delivery]) -> None:
        while True:
            await asyncio.sleep(self._ack_wait / 2)
            # Once per message, however many of its events are still open.
            open_msgs = {id(d.msg): d.msg for d in deliveries if not d.settled}
            for msg in open_msgs.values():
                with contextlib.suppress(Exception):
                    await msg.in_progress()


async def consume(
    js: JetStreamContext,
    *,
    stream: str,
    durable: str,
    filter_subject: str,
    handler: Handler,
    **options: Any,
) -> None:
    """Run a durable pull consumer in the current task until cancelled (see ``Consumer``)."""
    consumer = Consumer(
        js,
        stream=stream,
        durable=durable,
        filter_subject=filter_subject,
        handler=handler,
        **options,
    )
    await consumer.run()
