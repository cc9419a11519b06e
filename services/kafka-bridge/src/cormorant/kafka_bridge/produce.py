"""Output messages: their headers, and producing a whole batch until every ack is in.

Each output message carries the input's key and these headers, so a consumer of the output
topic can trace any prediction back to its input and to the model version that made it:

- ``cormorant-source-topic``, ``cormorant-source-partition``, ``cormorant-source-offset``;
- ``cormorant-endpoint``, ``cormorant-version``;
- ``cormorant-request-id``: ``<hash of group and topic>-<partition>-<offset>``, so a message
  predicted again after a crash carries the same id (downstream can de-duplicate) and two
  endpoints reading the same topic never share one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from aiokafka.partitioner import DefaultPartitioner

from cormorant.common.retry import Backoff

log = logging.getLogger(__name__)

SOURCE_TOPIC: Final = "cormorant-source-topic"
SOURCE_PARTITION: Final = "cormorant-source-partition"
SOURCE_OFFSET: Final = "cormorant-source-offset"
ENDPOINT: Final = "cormorant-endpoint"
VERSION: Final = "cormorant-version"
REQUEST_ID: Final = "cormorant-request-id"

Headers = list[tuple[str, bytes]]

# Errors that no resend can cure for this one record; it goes to the dead-letter topic.
_RECORD_ERRORS: Final = (MessageSizeTooLargeError, RecordListTooLargeError)


@dataclass(slots=True)
class Outgoing:
    """One message to produce."""

    topic: str
    key: bytes | None
    value: bytes
    headers: Headers = field(default_factory=list)


class ProduceFailed(RuntimeError):
    """The broker refused records for a reason that a retry cannot cure."""

    def __init__(self, error: BaseException, count: int) -> None:
        super().__init__(
            f"{count} record(s) refused by the broker: {type(error).__name__}: {error}"
        )
        self.error = error


def request_id_prefix(group: str, topic: str) -> str:
    """The part of the request ids of ``group`` reading ``topic`` shared by all its messages."""
    return hashlib.blake2b(f"{group}\x00{topic}".encode(), digest_size=8).hexdigest()


def request_id(prefix: str, partition: int, offset: int) -> str:
    """The request id of one input message: stable across replays, unique across endpoints."""
    return f"{prefix}-{partition}-{offset}"


def source_headers(
    topic: bytes,
    partition: bytes,
    offset: int,
    identity: tuple[tuple[str, bytes], tuple[str, bytes]],
    request: str,
) -> Headers:
    """The headers of an output (or dead-letter) message; ``identity`` is endpoint + version."""
    return [
        (SOURCE_TOPIC, topic),
        (SOURCE_PARTITION, partition),
        (SOURCE_OFFSET, str(offset).encode()),
        identity[0],
        identity[1],
        (REQUEST_ID, request.encode()),
    ]


def identity_headers(endpoint: str, version: str) -> tuple[tuple[str, bytes], tuple[str, bytes]]:
    """The endpoint and version headers, encoded once per replica."""
    return (ENDPOINT, endpoint.encode()), (VERSION, version.encode())


def create_producer(
    bootstrap_servers: str, *, client_id: str, security: dict[str, Any], **options: Any
) -> AIOKafkaProducer:
    """An aiokafka producer; ``options`` are its keyword arguments (acks, linger_ms...)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, client_id=client_id, **security, **options
    )


class BatchProducer:
    """Produces a batch of records and returns once the broker acknowledged every one.

    Records are grouped per output partition (the key's partition, as the Kafka clients'
    default partitioner picks it) into record batches handed to the producer whole: one
    future per partition instead of one per record.
    """

    def __init__(
        self, producer: AIOKafkaProducer, *, retry_backoff: float = 0.2, max_backoff: float = 5.0
    ) -> None:
        self.producer = producer
        self.retry_backoff = retry_backoff
        self.max_backoff = max_backoff
        self.resent = 0
        """Records sent again after a retriable failure (broker away, leader moving)."""
        self._partitioner = DefaultPartitioner()

    async def send_all(self, records: Sequence[Outgoing]) -> list[tuple[int, BaseException]]:
        """Send ``records`` until acknowledged; the indexes refused for good, with the reason.

        Retriable failures are sent again with a growing pause, for as long as it takes: a
        batch is committed only once produced, so waiting is the only way not to lose it.
        A record batch refused for its size is split so that only the record at fault is
        refused. A failure of the whole producer (authorisation, closed) raises
        ``ProduceFailed``.
        """
        pending = list(range(len(records)))
        alone: set[int] = set()
        refused: list[tuple[int, BaseException]] = []
        backoff = Backoff(self.retry_backoff, self.max_backoff)
        failures = 0
        while pending:
            retry: list[int] = []
            split: list[int] = []
            sent: list[list[int]] = []
            futures: list[asyncio.Future[Any]] = []
            for (topic, partition), indexes in (await self._group(records, pending)).items():
                for chunk, batch in self._batches(records, indexes, alone):
                    try:
                        future = await self.producer.send_batch(batch, topic, partition=partition)
                    except Exception as exc:  # raised before sending: metadata, closed
                        self._classify(chunk, exc, retry, split, refused)
                        continue
                    futures.append(future)
                    sent.append(chunk)
            results = await asyncio.gather(*futures, return_exceptions=True)
            for chunk, result in zip(sent, results, strict=True):
                if isinstance(result, BaseException):
                    self._classify(chunk, result, retry, split, refused)
            alone.update(split)
            if retry:
                self.resent += len(retry)
                failures += 1
                delay = backoff.delay(failures)
                log.warning(
                    "producing %d record(s) failed; sending again in %.1f s", len(retry), delay
                )
                await asyncio.sleep(delay)
            pending = sorted(retry + split)
        return refused

    async def _group(
        self, records: Sequence[Outgoing], indexes: Sequence[int]
    ) -> dict[tuple[str, int], list[int]]:
        partitions: dict[str, list[int]] = {}
        groups: dict[tuple[str, int], list[int]] = {}
        for index in indexes:
            record = records[index]
            available = partitions.get(record.topic)
            if available is None:
                available = partitions[record.topic] = sorted(
                    await self.producer.partitions_for(record.topic)
                )
            partition = self._partitioner(record.key, available, available)
            groups.setdefault((record.topic, partition), []).append(index)
        return groups

    def _batches(
        self, records: Sequence[Outgoing], indexes: list[int], alone: set[int]
    ) -> list[tuple[list[int], Any]]:
        """Record batches of ``indexes`` in order, each as full as the batch size allows."""
        batches: list[tuple[list[int], Any]] = []
        chunk: list[int] = []
        batch = self.producer.create_batch()
        for index in indexes:
            record = records[index]
            if index in alone and chunk:
                batches.append((chunk, batch))
                chunk, batch = [], self.producer.create_batch()
            fits = batch.append(
                timestamp=None, key=record.key, value=record.value, headers=record.headers
            )
            if fits is None:  # full: the first record of a batch always fits
                batches.append((chunk, batch))
                chunk, batch = [], self.producer.create_batch()
                batch.append(
                    timestamp=None, key=record.key, value=record.value, headers=record.headers
                )
            chunk.append(index)
            if index in alone:
                batches.append((chunk, batch))
                chunk, batch = [], self.producer.create_batch()
        if chunk:
            batches.append((chunk, batch))
        return batches

    @staticmethod
    def _classify(
        chunk: list[int],
        exc: BaseException,
        retry: list[int],
        split: list[int],
        refused: list[tuple[int, BaseException]],
    ) -> None:
        if isinstance(exc, _RECORD_ERRORS):
            if len(chunk) == 1:
                refused.append((chunk[0], exc))
            else:
                # Which record is at fault is unknown: send each on its own to find out.
                split.extend(chunk)
        elif isinstance(exc, KafkaTimeoutError) or getattr(exc, "retriable", False):
            retry.extend(chunk)
        elif isinstance(exc, KafkaError | OSError):
            raise ProduceFailed(exc, len(chunk)) from exc
        else:
            raise exc
