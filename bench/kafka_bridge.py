"""Kafka bridge: msg/s of a replica (no-op predict) against a raw aiokafka loop, and its latency.

One run, on one broker and one input topic (3 partitions, ``--messages`` keyed messages):

1. Throughput. The raw loop (in this process: ``getmany`` → ``send`` each record with its
   key → await the acks → commit, the least a loop needs for the same at-least-once
   guarantee) and the bridge (``python -m cormorant.kafka_bridge`` with ``bench/noop``, as the
   deployer runs it) each consume the whole topic from offset 0 under a group of their own,
   producing to an output topic of their own. The rate is the number of outputs over the
   span of their timestamps (first to last output). Rounds alternate; the best of each counts.
2. Latency. At half the bridge's peak rate, a producer in this process sends timestamped
   messages for ``--latency-seconds``; the bridge and then the raw loop (as a child process
   too, so both hops run beside the same load generator) forward them, and a consumer here
   measures send → receive. "Added" is the bridge's p99 minus the raw loop's p99.

Both sides use the same producer settings (acks=all, 1 MiB batches, linger 0) and batches of
``--max-batch``. Prediction logging to NATS is off (it is measured separately in
docs/benchmarks.md). Prints e.g.::

    kafka_bridge: bridge 21,000 msg/s, raw 26,000 msg/s, ratio 0.81 (target >= 0.7); p99 +3.1 ms at half load (target <= 5 ms)
"""  # noqa: E501

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from cormorant.devstack.servers import KafkaBroker
from cormorant.kafka_bridge.settings import KafkaBridgeSettings
from cormorant.kafka_bridge.testing import (
    BridgeProcess,
    create_topics,
    high_watermarks,
    produce,
)

ROOT = Path(__file__).resolve().parents[1]
RATIO_TARGET = 0.7
LATENCY_TARGET_MS = 5.0
PARTITIONS = 3
PRODUCER_OPTIONS: dict[str, Any] = {"acks": "all", "max_batch_size": 1_048_576, "linger_ms": 0}
FETCH_MAX_WAIT_MS: int = KafkaBridgeSettings.model_fields["fetch_max_wait_ms"].default


# ----------------------------------------------------------------------------- the raw loop
async def raw_loop(
    bootstrap: str,
    source: str,
    output: str,
    group: str,
    *,
    max_batch: int,
    total: int | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
) -> int:
    """getmany → send with the key → await acks → commit, until ``total`` or ``stop``."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_OPTIONS)
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await producer.start()
    await consumer.start()
    done = 0
    try:
        while (total is None or done < total) and not (stop is not None and stop.is_set()):
            batch = await consumer.getmany(timeout_ms=100, max_records=max_batch)
            if ready is not None and not ready.is_set() and consumer.assignment():
                ready.set()
            if not batch:
                continue
            futures = []
            for records in batch.values():
                for record in records:
                    futures.append(await producer.send(output, record.value, key=record.key))
            await asyncio.gather(*futures)
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
            done += len(futures)
    finally:
        await consumer.stop()
        await producer.stop()
    return done


async def _raw_child(args: argparse.Namespace) -> None:
    """``--raw-loop`` mode: the raw loop as a process, until SIGTERM."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    task = asyncio.create_task(
        raw_loop(
            args.bootstrap,
            args.input,
            args.output,
            args.group,
            max_batch=args.max_batch,
            stop=stop,
            ready=ready,
            fetch_max_wait_ms=args.fetch_max_wait_ms,
        )
    )
    await ready.wait()
    print("ready", flush=True)
    await task


# ------------------------------------------------------------------------------ throughput
async def start_at_beginning(bootstrap: str, group: str, topic: str) -> None:
    """Commit offset 0 on every partition for ``group``: it then consumes the whole topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.commit({tp: 0 for tp in partitions})
    finally:
        await consumer.stop()


async def output_rate(bootstrap: str, topic: str, expected: int) -> dict[str, Any]:
    """Outputs per second over the span of their timestamps."""
    records = await read_topic_timestamps(bootstrap, topic)
    if len(records) != expected:
        raise RuntimeError(f"{topic}: {len(records)} outputs, expected {expected}")
    span = (max(records) - min(records)) / 1000
    return {
        "messages": len(records),
        "seconds": round(span, 3),
        "rate": round((len(records) - 1) / span, 1),
    }


async def read_topic_timestamps(bootstrap: str, topic: str) -> list[int]:
    """The timestamps (ms) of every record of ``topic``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4_194_304
    )
    await consumer.start()
    stamps: list[int] = []
    try:
        ends = {
            TopicPartition(topic, p): end
            for p, end in (await high_watermarks(bootstrap, topic)).items()
        }
        partitions = list(ends)
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp]}
        while remaining:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, records in batch.items():
                stamps.extend(r.timestamp for r in records if r.offset < ends[tp])
                if records and records[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return stamps


async def wait_outputs(bootstrap: str, topic: str, expected: int, seconds: float) -> None:
    """Until ``topic`` holds ``expected`` records."""
    deadline = time.monotonic() + seconds
    while sum((await high_watermarks(bootstrap, topic)).values()) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{topic} did not reach {expected} records in {seconds} s")
        await asyncio.sleep(0.25)


def bridge_args(bootstrap: str, source: str, output: str, group: str, max_batch: int) -> list[str]:
    """The replica's flags, with the no-op model."""
    return [
        "--source",
        str(ROOT / "bench" / "noop"),
        "--file",
        "noop.py",
        "--function",
        "predict",
        "--endpoint",
        "bench",
        "--version",
        "1",
        "--bootstrap-servers",
        bootstrap,
        "--input-topic",
        source,
        "--output-topic",
        output,
        "--group",
        group,
        "--max-batch",
        str(max_batch),
    ]


def child_env(fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS) -> dict[str, str]:
    """Quiet replicas that do not look for NATS."""
    env = dict(os.environ)
    env["CORMORANT_KAFKA_BRIDGE_FETCH_MAX_WAIT_MS"] = str(fetch_max_wait_ms)
    env["CORMORANT_LOG_LEVEL"] = "WARNING"
    env["CORMORANT_KAFKA_BRIDGE_PUBLISH_PREDICTIONS"] = "false"
    return env


@contextlib.contextmanager
def bridge_process(
    args: list[str], log_dir: Path, fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS
) -> Iterator[BridgeProcess]:
    """A replica, ready, stopped with SIGTERM afterwards."""
    log_path = log_dir / f"bridge-{uuid.uuid4().hex[:6]}.log"
    proc = BridgeProcess(args, log_path, env=child_env(fetch_max_wait_ms))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop(30)


async def throughput(
    bootstrap: str, source: str, kind: str, args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    """One throughput round of ``kind`` (bridge or raw) over the whole input topic."""
    tag = uuid.uuid4().hex[:6]
    output, group = f"bench-{kind}-out-{tag}", f"bench-{kind}-{tag}"
    await create_topics(bootstrap, {output: PARTITIONS})
    await start_at_beginning(bootstrap, group, source)
    if kind == "raw":
        before = _own_cpu()
        await raw_loop(
            bootstrap,
            source,
            output,
            group,
            max_batch=args.max_batch,
            total=args.messages,
            fetch_max_wait_ms=args.fetch_max_wait_ms,
        )
        cpu, counted = _own_cpu() - before, args.messages
    else:
        with bridge_process(
            bridge_args(bootstrap, source, output, group, args.max_batch),
            log_dir,
            args.fetch_max_wait_ms,
        ) as proc:
            # CPU from readiness on: start-up (imports, joining) is not per message.
            process = psutil.Process(proc.pid)
            before = sum(process.cpu_times()[:2])
            already = sum((await high_watermarks(bootstrap, output)).values())
            await wait_outputs(bootstrap, output, args.messages, seconds=300)
            cpu, counted = sum(process.cpu_times()[:2]) - before, args.messages - already
    result = await output_rate(bootstrap, output, args.messages)
    result["cpu_us_per_msg"] = round(cpu / max(1, counted) * 1e6, 2)
    return result


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --------------------------------------------------------------------------------- latency
async def latency(
    bootstrap: str, kind: str, rate: float, args: argparse.Namespace, log_dir: Path
) -> dict[str, Any]:
    """Send → receive latency through one hop of ``kind`` at ``rate`` messages/s."""
    tag = uuid.uuid4().hex[:6]
    source, output, group = f"bench-lat-{tag}", f"bench-lat-{kind}-out-{tag}", f"lat-{tag}"
    await create_topics(bootstrap, {source: PARTITIONS, output: PARTITIONS})
    async with hop(bootstrap, kind, source, output, group, args, log_dir):
        return await measure_latency(bootstrap, source, output, rate, args.latency_seconds)


@contextlib.asynccontextmanager
async def hop(
    bootstrap: str,
    kind: str,
    source: str,
    output: str,
    group: str,
    args: argparse.Namespace,
    log_dir: Path,
) -> AsyncIterator[None]:
    """The bridge or the raw loop, as a process forwarding ``source`` to ``output``."""
    if kind == "bridge":
        with bridge_process(
            bridge_args(bootstrap, source, output, group, args.max_batch),
            log_dir,
            args.fetch_max_wait_ms,
        ):
            yield
        return
    command = [
        sys.executable,
        __file__,
        "--raw-loop",
        "--bootstrap",
        bootstrap,
        "--input",
        source,
        "--output",
        output,
        "--group",
        group,
        "--max-batch",
        str(args.max_batch),
        "--fetch-max-wait-ms",
        str(args.fetch_max_wait_ms),
    ]
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the raw loop did not start: {line!r}")
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


async def measure_latency(
    bootstrap: str, source: str, output: str, rate: float, seconds: float
) -> dict[str, Any]:
    """Produce at ``rate`` for ``seconds``; percentiles of input sent → output appended.

    Each input carries its send time (ns); each output's timestamp is when the hop appended
    it to its producer. Both are read after the run, so nothing but the load generator
    competes with the hop for the CPU meanwhile.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_OPTIONS)
    await producer.start()
    warmup_ns = time.time_ns() + 1_000_000_000
    total = int(rate * seconds)
    tick = 0.005
    per_tick = rate * tick
    started = time.perf_counter()
    sent = 0
    try:
        while sent < total:
            # Whole record batches per partition: the load generator must stay cheap, or it
            # rather than the hop under test sets the latency.
            due = min(total, int((time.perf_counter() - started) / tick * per_tick) + 1)
            batches = [producer.create_batch() for _ in range(PARTITIONS)]
            while sent < due:
                batches[sent % PARTITIONS].append(
                    timestamp=None, key=b"%d" % sent, value=b"%020d-%d" % (time.time_ns(), sent)
                )
                sent += 1
            for partition, batch in enumerate(batches):
                if batch.record_count():
                    await producer.send_batch(batch, source, partition=partition)
            await asyncio.sleep(tick)
    finally:
        await producer.stop()
    await wait_outputs(bootstrap, output, total, seconds=120)
    latencies = sorted(
        appended - sent_ns / 1e6
        for appended, sent_ns in await read_sent_and_appended(bootstrap, output)
        if sent_ns >= warmup_ns
    )

    def pick(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)

    return {
        "rate": round(rate, 1),
        "messages": total,
        "measured": len(latencies),
        "p50_ms": pick(0.50),
        "p99_ms": pick(0.99),
        "max_ms": round(latencies[-1], 2),
    }


async def read_sent_and_appended(bootstrap: str, topic: str) -> list[tuple[int, int]]:
    """(output timestamp in ms, input send time in ns) of every record of ``topic``."""
    ends = await high_watermarks(bootstrap, topic)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4_194_304
    )
    await consumer.start()
    pairs: list[tuple[int, int]] = []
    try:
        partitions = [TopicPartition(topic, p) for p in ends]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        remaining = {tp for tp in partitions if ends[tp.partition]}
        while remaining:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, records in batch.items():
                pairs.extend((r.timestamp, int(r.value[:20])) for r in records)
                if records and records[-1].offset + 1 >= ends[tp.partition]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return pairs


# ------------------------------------------------------------------------------------ main
@contextlib.contextmanager
def broker(bootstrap: str | None, log_dir: Path) -> Iterator[str]:
    """The given broker, or a tansu broker of this run."""
    if bootstrap:
        yield bootstrap
        return
    server = KafkaBroker(log_dir / "kafka")
    server.start()
    try:
        yield server.bootstrap_servers
    finally:
        server.stop()


async def run(bootstrap: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """The whole benchmark; its summary."""
    source = f"bench-in-{uuid.uuid4().hex[:6]}"
    await create_topics(bootstrap, {source: PARTITIONS})
    payload = b'{"id": %d, "values": [1.5, 2.5, 3.5, 4.5], "user": "u-%d"}'
    await produce(
        bootstrap, source, ((b"%d" % i, payload % (i, i % 977)) for i in range(args.messages))
    )
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "bridge": []}
    for _ in range(args.rounds):
        for kind in ("raw", "bridge"):
            result = await throughput(bootstrap, source, kind, args, log_dir)
            runs[kind].append(result)
            print(f"  {kind}: {json.dumps(result)}", file=sys.stderr, flush=True)
    bridge = max(r["rate"] for r in runs["bridge"])
    raw = max(r["rate"] for r in runs["raw"])
    half = args.latency_rate or bridge / 2
    latency_runs: dict[str, list[dict[str, Any]]] = {"bridge": [], "raw": []}
    for _ in range(args.latency_rounds):
        for kind in ("bridge", "raw"):
            result = await latency(bootstrap, kind, half, args, log_dir)
            latency_runs[kind].append(result)
            print(f"  latency {kind}: {json.dumps(result)}", file=sys.stderr, flush=True)
    # The least disturbed run of each: on a shared machine a stall elsewhere sets the p99.
    lat = {kind: min(runs_, key=lambda r: r["p99_ms"]) for kind, runs_ in latency_runs.items()}
    cpu = {kind: min(r["cpu_us_per_msg"] for r in runs[kind]) for kind in runs}
    return {
        "bridge_rate": bridge,
        "raw_rate": raw,
        "ratio": bridge / raw,
        "cpu_us_per_msg": cpu,
        "cpu_ratio": cpu["raw"] / cpu["bridge"],
        "p99_added_ms": lat["bridge"]["p99_ms"] - lat["raw"]["p99_ms"],
        "throughput": runs,
        "latency": lat,
        "latency_runs": latency_runs,
    }


def main() -> int:
    """Run the benchmark and print its line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--max-batch", type=int, default=500, help="records per batch, both sides")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds of each")
    parser.add_argument(
        "--fetch-max-wait-ms",
        type=int,
        default=FETCH_MAX_WAIT_MS,
        help="consumer fetch wait of both hops (default: the bridge's default)",
    )
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--latency-rounds", type=int, default=2, help="latency rounds of each")
    parser.add_argument(
        "--latency-rate", type=float, help="msg/s of the latency phase (default: half the peak)"
    )
    parser.add_argument("--bootstrap", help="an existing broker (default: start tansu)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--raw-loop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--group", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_loop:
        asyncio.run(_raw_child(args))
        return 0
    with (
        tempfile.TemporaryDirectory(prefix="bench-kafka-") as tmp,
        broker(args.bootstrap, Path(tmp)) as bootstrap,
    ):
        summary = asyncio.run(run(bootstrap, args, Path(tmp)))
    ratio, added = summary["ratio"], summary["p99_added_ms"]
    misses = ratio < RATIO_TARGET or added > LATENCY_TARGET_MS
    print(
        f"kafka_bridge: bridge {summary['bridge_rate']:,.0f} msg/s, raw {summary['raw_rate']:,.0f}"
        f" msg/s, ratio {ratio:.2f} (target >= {RATIO_TARGET}); p99 {added:+.1f} ms at half load"
        f" (target <= {LATENCY_TARGET_MS:g} ms; bridge {summary['latency']['bridge']['p99_ms']}"
        f" ms, raw {summary['latency']['raw']['p99_ms']} ms)"
        f"{' MISSED' if misses else ''}",
        flush=True,
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    summary["settings"] = {k: v for k, v in vars(args).items() if k not in ("input", "output")}
    (results / "kafka_bridge.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if args.strict and misses else 0


if __name__ == "__main__":
    sys.exit(main())
