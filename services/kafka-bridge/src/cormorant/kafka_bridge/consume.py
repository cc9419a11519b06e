"""The consumer-group side of a replica: batches, commits, rebalance hooks, staying alive.

- Offsets are committed by the bridge, explicitly, after a batch was produced.
- A partition the group has never committed starts at the latest offset, and that offset is
  committed at once: a replica that crashes before its first batch must not make its
  successor start at a later "latest" and skip what arrived in between. "Latest" is the
  high watermark of a fetch answer, not ListOffsets' answer: tansu answers ListOffsets with
  the base offset of the partition's last record batch + 1, inside that batch.
- While a batch takes long (a slow model), a background task polls with the partitions
  paused, so aiokafka never leaves the group for ``max_poll_interval_ms``; heartbeats run in
  aiokafka's background task anyway.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

Records = dict[TopicPartition, list[Any]]
"""A batch: the records of each partition, in offset order."""

RevokeHook = Callable[[set[TopicPartition]], Awaitable[None]]
AssignHook = Callable[[set[TopicPartition]], Awaitable[None]]
ConsumerFactory = Callable[[], AIOKafkaConsumer]


def create_consumer(
    bootstrap_servers: str,
    *,
    group: str,
    client_id: str,
    security: dict[str, Any],
    **options: Any,
) -> AIOKafkaConsumer:
    """An aiokafka consumer of ``group`` with manual commits, new groups starting at latest."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        group_id=group,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        **security,
        **options,
    )


class BatchConsumer:
    """Fetches batches from a subscribed consumer and commits what the bridge finished."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: Iterable[str],
        *,
        max_batch: int,
        max_poll_interval: float,
        probe: ConsumerFactory | None = None,
    ) -> None:
        self.consumer = consumer
        self.topics = list(topics)
        self.max_batch = max_batch
        self.probe = probe
        """Makes a group-less consumer that finds where partitions end (None: trust ListOffsets)."""
        self.on_revoke: RevokeHook = _nothing
        """Awaited before partitions are given up; the bridge finishes its batch there."""
        self.on_assign: AssignHook = _nothing
        """Awaited once partitions are assigned and their starting offsets known."""
        self.committed: dict[TopicPartition, int] = {}
        """Offset last committed (or found committed) per assigned partition."""
        # Start keeping the member alive well before aiokafka would consider it stuck.
        self._keepalive_after = min(5.0, max_poll_interval / 4)
        self._keeper: asyncio.Task[None] | None = None
        self._polling = False
        self._last_poll = time.monotonic()
        # Partitions whose starting offsets are settled; aiokafka hands out records of a new
        # assignment while its on_partitions_assigned callback is still running.
        self._ready: set[TopicPartition] = set()

    async def start(self) -> None:
        """Subscribe and connect; the group is joined in the background."""
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        await self.consumer.start()
        self._keeper = asyncio.create_task(self._keep_alive(), name="kafka-bridge-keepalive")

    async def close(self) -> None:
        """Leave the group and disconnect."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.wait([self._keeper])
            self._keeper = None
        await self.consumer.stop()

    async def poll(self, wait: float = 1.0) -> Records:
        """The next batch (empty after ``wait`` seconds without records).

        It returns without yielding to the loop once records are taken, so the caller marks
        them in flight before any rebalance callback can run.
        """
        self._polling = True
        try:
            records: Records = await self.consumer.getmany(
                timeout_ms=int(wait * 1000), max_records=self.max_batch
            )
        finally:
            self._polling = False
            self._last_poll = time.monotonic()
        if records and not self._ready.issuperset(records):
            for tp in [tp for tp in records if tp not in self._ready]:
                # Put back: fetched again once the partition's starting offset is settled.
                self.consumer.seek(tp, records.pop(tp)[0].offset)
        return records

    async def commit(self, offsets: dict[TopicPartition, int]) -> bool:
        """Commit ``offsets``; False (logged) if the group no longer lets this replica."""
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:
            log.warning(
                "committing offsets %s failed: %s: %s", _describe(offsets), type(exc).__name__, exc
            )
            return False
        self.committed.update(offsets)
        return True

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages behind per assigned partition: high watermark minus committed offset."""
        lag: dict[tuple[str, int], int] = {}
        for tp, offset in list(self.committed.items()):
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                lag[(tp.topic, tp.partition)] = max(0, highwater - offset)
        return lag

    async def _keep_alive(self) -> None:
        """Poll with every partition paused whenever the bridge has not polled for a while.

        aiokafka leaves the group when ``getmany`` is not called for ``max_poll_interval_ms``;
        a slow model (or a broker refusing produces) must not cost the replica its partitions.
        Paused, the poll returns nothing, and what was prefetched is fetched again later.
        """
        long_batch = False
        while True:
            await asyncio.sleep(self._keepalive_after / 2)
            if self._polling or time.monotonic() - self._last_poll < self._keepalive_after:
                long_batch = False
                continue
            if not long_batch:
                log.info("a batch has run for over %.1f s: polling with fetches paused to stay "
                         "in the group", self._keepalive_after)  # fmt: skip
                long_batch = True
            assigned = self.consumer.assignment()
            if assigned:
                self.consumer.pause(*assigned)
            try:
                records: Records = await self.consumer.getmany(timeout_ms=0)
                # Only partitions assigned after a rebalance could answer; they are fetched
                # again by the next batch rather than held here.
                for tp, batch in records.items():
                    self.consumer.seek(tp, batch[0].offset)
            finally:
                paused = self.consumer.paused() & self.consumer.assignment()
                if paused:
                    self.consumer.resume(*paused)
            self._last_poll = time.monotonic()

    async def _assigned(self, assigned: set[TopicPartition]) -> None:
        self.committed = {}
        anchors: dict[TopicPartition, int] = {}
        for tp in assigned:
            committed = await self.consumer.committed(tp)
            if committed is None:
                anchors[tp] = await self.consumer.position(tp)
            else:
                self.committed[tp] = committed
        if anchors and self.probe is not None:
            ends = await fetched_ends(self.probe, anchors)
            for tp, end in ends.items():
                if end != anchors[tp]:
                    self.consumer.seek(tp, end)
            anchors = ends
        # The group's first start on these partitions: remember where "latest" was.
        if anchors and await self.commit(anchors):
            log.info("no committed offsets yet: starting at the latest, %s",
                     _describe(anchors))  # fmt: skip
        self._ready = set(assigned)
        await self.on_assign(assigned)

    async def _revoked(self, revoked: set[TopicPartition]) -> None:
        self._ready = set()
        await self.on_revoke(revoked)
        self.committed = {}


async def fetched_ends(
    probe: ConsumerFactory, positions: dict[TopicPartition, int], wait: float = 5.0
) -> dict[TopicPartition, int]:
    """Where each partition ends per a fetch from ``positions`` (never before them)."""
    consumer = probe()
    await consumer.start()
    try:
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + wait
        while any(consumer.highwater(tp) is None for tp in positions):
            if time.monotonic() > deadline:
                log.warning("no fetch answer within %.0f s: trusting ListOffsets", wait)
                break
            await consumer.getmany(timeout_ms=100)
        return {
            tp: max(offset, consumer.highwater(tp) or offset) for tp, offset in positions.items()
        }
    finally:
        await consumer.stop()


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands aiokafka's rebalance callbacks to the consumer (and through it, the bridge)."""

    def __init__(self, owner: BatchConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._assigned(set(assigned))


async def _nothing(partitions: set[TopicPartition]) -> None:
    return None


def _describe(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(
        f"{tp.topic}[{tp.partition}]@{offset}" for tp, offset in sorted(offsets.items())
    )
