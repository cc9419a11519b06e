"""Helpers for tests and benchmarks: a replica as a real process, topics, reading a topic.

``BridgeProcess`` runs ``python -m cormorant.kafka_bridge`` exactly as the deployer will,
waits for ``/healthz`` (model imported, group joined), and stops it with SIGTERM (graceful)
or SIGKILL (a crash). ``Stream`` bundles one test's topics, group and replicas.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from cormorant.common.ports import free_port
from cormorant.devstack.servers import ManagedProcess
from cormorant.devstack.testing.waits import eventually


class BridgeProcess(ManagedProcess):
    """One replica process on a free metrics port, logging to ``log_path``."""

    def __init__(
        self,
        args: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        super().__init__("kafka-bridge", log_path, ready_line=None, ready_timeout=ready_timeout)
        self.args = list(args)
        self.port = free_port()
        self.env = dict(os.environ if env is None else env)

    def command(self) -> Sequence[str]:
        """The replica's argv."""
        return [
            sys.executable,
            "-m",
            "cormorant.kafka_bridge",
            *self.args,
            "--metrics-port",
            str(self.port),
        ]

    def popen_kwargs(self) -> dict[str, Any]:
        """The replica's environment."""
        return {"env": self.env}

    def is_ready(self) -> bool:
        """``/healthz`` answers 200: the model is imported and the group joined."""
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    @property
    def url(self) -> str:
        """Base URL of the probes."""
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        """The replica's Prometheus samples without labels, by name."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                samples[name] = float(value)
        return samples

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code (SIGKILL after ``timeout``)."""
        proc = self.proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def crash(self) -> None:
        """SIGKILL: no commit, no leaving the group."""
        self.kill()


@dataclass(frozen=True, slots=True)
class Record:
    """A record read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


async def create_topics(bootstrap_servers: str, topics: Mapping[str, int]) -> None:
    """Create each topic with its number of partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, count, 1) for name, count in topics.items()])
    finally:
        await admin.close()


async def produce(
    bootstrap_servers: str, topic: str, messages: Iterable[tuple[bytes | None, bytes]]
) -> int:
    """Produce ``(key, value)`` pairs and wait for every ack; how many were produced."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, max_batch_size=1_048_576)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        for future in futures:
            await future
    finally:
        await producer.stop()
    return len(futures)


async def high_watermarks(
    bootstrap_servers: str, topic: str, *, wait: float = 10.0
) -> dict[int, int]:
    """The next offset of each partition of ``topic``, from fetch answers.

    Not from ``end_offsets``: tansu answers ListOffsets(latest) with the base offset of the
    last record batch + 1, short of the end whenever that batch holds several records.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        deadline = time.monotonic() + wait
        while any(consumer.highwater(tp) is None for tp in partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no fetch answer for every partition of {topic}")
            await consumer.getmany(timeout_ms=100)
        return {tp.partition: int(consumer.highwater(tp)) for tp in partitions}
    finally:
        await consumer.stop()


async def read_topic(bootstrap_servers: str, topic: str, *, wait: float = 30.0) -> list[Record]:
    """Every record of ``topic`` up to its current end, from the beginning."""
    ends = await high_watermarks(bootstrap_servers, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4_194_304,
    )
    await consumer.start()
    records: list[Record] = []
    try:
        partitions = [TopicPartition(topic, p) for p in ends]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp.partition] > 0}
        deadline = time.monotonic() + wait
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach its end within {wait} s")
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, messages in batch.items():
                end = ends[tp.partition]
                for message in messages:
                    if message.offset < end:
                        records.append(
                            Record(
                                tp.topic,
                                tp.partition,
                                message.offset,
                                message.key,
                                message.value,
                                dict(message.headers),
                            )
                        )
                if messages and messages[-1].offset + 1 >= end:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return records


async def committed_offsets(bootstrap_servers: str, group: str, topic: str) -> dict[int, int]:
    """The offsets ``group`` committed on ``topic`` (partitions without one are left out).

    Asked as a consumer of the group would: tansu's answer to the admin client's
    OffsetFetch for a whole group cannot be decoded by aiokafka.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        committed: dict[int, int] = {}
        for partition in sorted(consumer.partitions_for_topic(topic) or ()):
            offset = await consumer.committed(TopicPartition(topic, partition))
            if offset is not None:
                committed[partition] = offset
        return committed
    finally:
        await consumer.stop()


def message(number: int, *, poison: bool = False, **extra: object) -> tuple[bytes, bytes]:
    """A keyed test message with a unique id."""
    body = {"id": number, "n": number, **extra}
    if poison:
        body["poison"] = True
    return str(number).encode(), json.dumps(body).encode()


@dataclass
class Stream:
    """One test's topics and group, and the replicas it started."""

    bootstrap: str
    input: str
    output: str
    group: str
    logs: Path
    models: Path
    """Directory of the test models (``stream.py``)."""
    replicas: list[BridgeProcess] = field(default_factory=list)

    @property
    def dlq(self) -> str:
        """The default dead-letter topic."""
        return f"{self.output}.dlq"

    def replica(
        self,
        *,
        function: str = "predict",
        version: str = "1",
        max_batch: int = 250,
        env: dict[str, str] | None = None,
        start: bool = True,
    ) -> BridgeProcess:
        """A replica of this stream's endpoint, started and ready unless ``start`` is False."""
        args = [
            "--source", str(self.models), "--file", "stream.py", "--function", function,
            "--endpoint", "orders", "--version", version,
            "--bootstrap-servers", self.bootstrap, "--input-topic", self.input,
            "--output-topic", self.output, "--group", self.group,
            "--max-batch", str(max_batch),
        ]  # fmt: skip
        name = f"replica-{len(self.replicas)}-v{version}"
        proc = BridgeProcess(args, self.logs / f"{name}.log", env=replica_env(env))
        self.replicas.append(proc)
        if start:
            proc.start()
        return proc

    async def send(self, messages: Iterable[tuple[bytes, bytes]]) -> int:
        """Produce ``messages`` to the input topic."""
        return await produce(self.bootstrap, self.input, messages)

    async def size(self, topic: str | None = None) -> int:
        """Records on ``topic`` (the output topic by default)."""
        return sum((await high_watermarks(self.bootstrap, topic or self.output)).values())

    async def read(self, topic: str | None = None) -> list[Record]:
        """Every record of ``topic`` (the output topic by default)."""
        return await read_topic(self.bootstrap, topic or self.output)

    async def wait_for_ids(self, expected: set[int], *, within: float) -> Counter[int]:
        """Wait until every expected id is in the output; how often each id appears."""
        seen: Counter[int] = Counter()

        async def all_there() -> bool:
            if await self.size() < len(expected):
                return False
            seen.clear()
            seen.update(json.loads(r.value or b"{}")["id"] for r in await self.read())
            return expected <= set(seen)

        what = f"{len(expected)} ids in the output"
        await eventually(all_there, within=within, what=what, every=0.5)
        return seen

    def log_tails(self) -> str:
        """The end of every replica's log, for a failure message."""
        return "\n".join(f"--- {p.log_path.name}\n{p.log_tail(40)}" for p in self.replicas)


def replica_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A replica's environment: quick failure detection, plain logs, no NATS unless given."""
    env = dict(os.environ)
    env.update(
        {
            "CORMORANT_LOG_JSON": "false",
            "CORMORANT_KAFKA_BRIDGE_SESSION_TIMEOUT_MS": "3000",
            "CORMORANT_KAFKA_BRIDGE_HEARTBEAT_INTERVAL_MS": "500",
            "CORMORANT_KAFKA_BRIDGE_PUBLISH_PREDICTIONS": "false",
        }
    )
    env.update(extra or {})
    return env
