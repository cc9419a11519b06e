"""The stream loop of one replica: fetch a batch, predict, produce, wait for acks, commit.

Two batches are in flight at most: while batch k is produced and committed, batch k+1 is
fetched and predicted; k+1 is produced only once k is committed, so offsets are committed
in order and at most one batch is ever produced without being committed.

Delivery is at-least-once: a batch's offsets are committed only after every output (and
dead-letter) message of the batch was acknowledged, so a crash loses nothing and predicts
again at most that one batch (``max_batch`` messages).

Handovers produce no duplicate. When the group takes partitions away (a new replica or a new
version joined), the revocation waits until the batches in flight are produced and committed
before the partitions are given up; whoever gets them resumes at the committed offsets.
``stop()`` (the replica's SIGTERM) stops fetching, finishes the batches in flight and
returns; the caller then closes the consumer, which leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from cormorant.kafka_bridge.consume import BatchConsumer, Records
from cormorant.kafka_bridge.dlq import dead_letter
from cormorant.kafka_bridge.metrics import BridgeMetrics
from cormorant.kafka_bridge.predict import BatchPredictor, Failed, Outcome, Predicted
from cormorant.kafka_bridge.produce import (
    BatchProducer,
    Headers,
    Outgoing,
    ProduceFailed,
    identity_headers,
    request_id_prefix,
    source_headers,
)
from cormorant.kafka_bridge.publishing import PredictionLog

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BridgeStats:
    """What a replica did since it started; logged when it stops."""

    batches: int = 0
    consumed: int = 0
    produced: int = 0
    dead_lettered: int = 0
    duplicates_avoided: int = 0
    """Messages of batches in flight at a revocation or stop, committed before letting go."""
    uncommitted: int = 0
    """Messages produced whose commit failed: the next owner predicts them again."""


@dataclass(slots=True)
class _Work:
    """A predicted batch on its way to the broker."""

    messages: list[Any]
    outcomes: list[Outcome]
    request_ids: list[str]
    outgoing: list[Outgoing]
    offsets: dict[TopicPartition, int]
    """What to commit once every message is acknowledged: last offset + 1 per partition."""
    received_at: datetime
    generation: int
    """Rebalances seen when the batch was fetched."""


@dataclass(frozen=True, slots=True)
class Topics:
    """Where a replica writes, and who it is."""

    output: str
    dead_letter: str
    group: str
    endpoint: str
    version: str


class Bridge:
    """One replica's loop; ``run()`` until ``stop()``."""

    def __init__(
        self,
        consumer: BatchConsumer,
        producer: BatchProducer,
        predictor: BatchPredictor,
        pool: Executor,
        *,
        topics: Topics,
        metrics: BridgeMetrics,
        predict_threads: int = 1,
        prediction_log: PredictionLog | None = None,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.predictor = predictor
        self.pool = pool
        self.topics = topics
        self.metrics = metrics
        self.predict_threads = predict_threads
        self.prediction_log = prediction_log
        self.stats = BridgeStats()
        self.joined = asyncio.Event()
        """Set at the first partition assignment (possibly empty): the replica is in the group."""
        self._identity = identity_headers(topics.endpoint, topics.version)
        # Per input partition: its topic and number encoded, and its request-id prefix.
        self._partition_parts: dict[tuple[str, int], tuple[bytes, bytes, str]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._stopping = False
        self._polling = False
        self._failure: BaseException | None = None
        self._runner: asyncio.Task[Any] | None = None
        self._delivery: asyncio.Task[None] | None = None
        self._generation = 0
        consumer.on_revoke = self._on_revoke
        consumer.on_assign = self._on_assign

    @property
    def in_flight(self) -> int:
        """Messages fetched and not yet committed (0 between batches)."""
        return self._in_flight

    @property
    def stopping(self) -> bool:
        """Whether ``stop()`` was called."""
        return self._stopping

    def stop(self) -> None:
        """Stop fetching; ``run()`` returns once the batches in flight are committed."""
        if self._stopping:
            return
        self._stopping = True
        log.info(
            "stopping: %s", "idle" if self._idle.is_set() else "finishing the batches in flight"
        )
        self._interrupt_poll()

    async def run(self) -> None:
        """Consume, predict, produce and commit until ``stop()``.

        Two batches overlap: while one is being produced and committed, the next is fetched
        and predicted. Deliveries stay in order, so offsets are committed in order.
        """
        self._runner = asyncio.current_task()
        try:
            while not self._stopping:
                records = await self._poll()
                if records is None:
                    break
                if records:
                    # No await since the poll returned: a revocation cannot slip in first.
                    await self._batch(records)
        finally:
            if self._delivery is not None:
                await asyncio.wait([self._delivery])
        if self._failure is not None:
            raise self._failure

    async def _poll(self) -> Records | None:
        """The next records; None once stopping (or a delivery failed)."""
        self._polling = True
        try:
            return await self.consumer.poll()
        except asyncio.CancelledError:
            interrupted = self._stopping or self._failure is not None
            if interrupted and self._runner is not None and self._runner.uncancel() == 0:
                return None
            raise
        except KafkaError as exc:
            if not getattr(exc, "retriable", False):
                raise
            log.warning("fetching failed: %s: %s", type(exc).__name__, exc)
            self._polling = False
            await asyncio.sleep(0.5)
            return {}
        finally:
            self._polling = False

    def _interrupt_poll(self) -> None:
        # Only a poll is interrupted: a batch in flight always runs to its commit.
        if self._polling and self._runner is not None:
            self._runner.cancel()

    async def _batch(self, records: Records) -> None:
        count = sum(len(batch) for batch in records.values())
        generation = self._generation
        self._idle.clear()
        self._in_flight += count
        try:
            work = await self._prepare(records, generation)
            if self._delivery is not None:
                # One delivery at a time: offsets are committed in the order fetched.
                await asyncio.wait([self._delivery])
                if self._failure is not None:
                    raise self._failure
        except BaseException:
            self._settle(count)
            raise
        self._delivery = asyncio.create_task(self._deliver(work), name="kafka-bridge-deliver")

    def _settle(self, count: int) -> None:
        self._in_flight -= count
        if self._in_flight == 0:
            self._idle.set()

    async def _prepare(self, records: Records, generation: int) -> _Work:
        """Predict a batch and build its output and dead-letter messages."""
        received_at = datetime.now(UTC)
        messages = [record for batch in records.values() for record in batch]
        count = len(messages)
        self.metrics.consumed.inc(count)
        self.metrics.batch_size.observe(count)
        self.stats.consumed += count
        outcomes = await self._predict([record.value for record in messages])
        request_ids, outgoing = self._outgoing(messages, outcomes)
        offsets = {tp: batch[-1].offset + 1 for tp, batch in records.items()}
        return _Work(messages, outcomes, request_ids, outgoing, offsets, received_at, generation)

    async def _deliver(self, work: _Work) -> None:
        """Produce a batch, wait for every ack, then commit its offsets."""
        count = len(work.messages)
        try:
            await self._produce_and_commit(work)
        except Exception as exc:
            # Reported by run(); the batch stays uncommitted and is predicted again later.
            self._failure = exc
            log.error("delivering a batch failed: %s: %s", type(exc).__name__, exc)
            self._interrupt_poll()
            return
        finally:
            self._settle(count)
        self.metrics.batch_latency.observe((datetime.now(UTC) - work.received_at).total_seconds())

    async def _produce_and_commit(self, work: _Work) -> None:
        count = len(work.messages)
        refused = await self.producer.send_all(work.outgoing)
        if refused:
            await self._dead_letter_refused(work, refused)
        produced = sum(1 for outcome in work.outcomes if isinstance(outcome, Predicted))
        failed = count - produced
        self.metrics.produced.inc(produced)
        self.metrics.dead_lettered.inc(failed)
        self.stats.produced += produced
        self.stats.dead_lettered += failed
        self.stats.batches += 1
        if not await self.consumer.commit(work.offsets):
            self.stats.uncommitted += count
            self.metrics.commit_failures.inc(count)
            log.warning("%d produced message(s) not committed: they will be predicted again "
                        "(at-least-once duplicates)", count)  # fmt: skip
        elif work.generation != self._generation or self._stopping:
            # A revocation or a stop waited for this batch; without that, these would be
            # predicted again by the partitions' next owner.
            self.stats.duplicates_avoided += count
            self.metrics.duplicates_avoided.inc(count)
        self._log_predictions(work)

    async def _predict(self, values: Sequence[bytes | None]) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        threads = min(self.predict_threads, len(values))
        if threads <= 1:
            outcomes = await loop.run_in_executor(self.pool, self.predictor.predict_all, values)
        else:
            size = -(-len(values) // threads)
            parts = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        self.pool, self.predictor.predict_all, values[start : start + size]
                    )
                    for start in range(0, len(values), size)
                )
            )
            outcomes = [outcome for part in parts for outcome in part]
        for outcome in outcomes:
            self.metrics.predict_latency.observe(outcome.seconds)
        return outcomes

    def _outgoing(
        self, messages: Sequence[Any], outcomes: Sequence[Outcome]
    ) -> tuple[list[str], list[Outgoing]]:
        topics = self.topics
        request_ids: list[str] = []
        outgoing: list[Outgoing] = []
        for record, outcome in zip(messages, outcomes, strict=True):
            headers, request = self._source(record)
            request_ids.append(request)
            if isinstance(outcome, Predicted):
                outgoing.append(Outgoing(topics.output, record.key, outcome.payload, headers))
            else:
                log.warning("dead-lettering %s[%d]@%d: %s in %s: %s", record.topic,
                            record.partition, record.offset, outcome.error_type, outcome.stage,
                            outcome.message)  # fmt: skip
                outgoing.append(
                    dead_letter(
                        topics.dead_letter,
                        record.key,
                        record.value,
                        record.headers,
                        headers,
                        outcome,
                    )
                )
        return request_ids, outgoing

    def _source(self, record: Any) -> tuple[Headers, str]:
        key = (record.topic, record.partition)
        parts = self._partition_parts.get(key)
        if parts is None:
            parts = self._partition_parts[key] = (
                record.topic.encode(),
                str(record.partition).encode(),
                f"{request_id_prefix(self.topics.group, record.topic)}-{record.partition}",
            )
        topic, partition, prefix = parts
        request = f"{prefix}-{record.offset}"
        return source_headers(topic, partition, record.offset, self._identity, request), request

    async def _dead_letter_refused(
        self, work: _Work, refused: Sequence[tuple[int, BaseException]]
    ) -> None:
        """Output messages the broker refuses for good (too large) go to the dead-letter topic."""
        letters: list[Outgoing] = []
        for index, error in refused:
            if work.outgoing[index].topic == self.topics.dead_letter:
                raise ProduceFailed(error, len(refused))
            record = work.messages[index]
            failure = Failed(type(error).__name__, str(error), "output", 0.0, 1)
            work.outcomes[index] = failure
            headers, _ = self._source(record)
            letters.append(
                dead_letter(
                    self.topics.dead_letter,
                    record.key,
                    record.value,
                    record.headers,
                    headers,
                    failure,
                )
            )
        again = await self.producer.send_all(letters)
        if again:
            raise ProduceFailed(again[0][1], len(again))

    def _log_predictions(self, work: _Work) -> None:
        sink = self.prediction_log
        if sink is None or not sink.active:
            return
        for record, outcome, request in zip(
            work.messages, work.outcomes, work.request_ids, strict=True
        ):
            if isinstance(outcome, Predicted):
                output, error = outcome.output, None
            else:
                output, error = None, f"{outcome.error_type}: {outcome.message}"
            sink.prediction(
                request_id=request,
                value=record.value,
                output=output,
                error=error,
                latency_ms=outcome.seconds * 1000,
                received_at=work.received_at,
            )

    async def _on_revoke(self, revoked: set[TopicPartition]) -> None:
        self._generation += 1
        if not self._idle.is_set():
            in_flight = self._in_flight
            started = time.perf_counter()
            await self._idle.wait()
            log.info("partitions revoked: finished the batches in flight (%d messages) in "
                     "%.2f s before letting them go", in_flight,
                     time.perf_counter() - started)  # fmt: skip
        elif revoked:
            log.info("partitions revoked: %s", _names(revoked))

    async def _on_assign(self, assigned: set[TopicPartition]) -> None:
        self.metrics.rebalances.inc()
        self.metrics.assigned.set(len(assigned))
        log.info(
            "partitions assigned: %s", _names(assigned) or "none (more replicas than partitions)"
        )
        self.joined.set()


def _names(partitions: set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))
