"""Stream endpoints end to end: replica processes on the real Kafka-protocol broker (tansu).

Each test owns its topics and consumer group on the session's broker. Replicas run as the
deployer runs them (``python -m cormorant.kafka_bridge``), are crashed with SIGKILL and
retired with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest
from aiokafka import TopicPartition
from nats.aio.msg import Msg

from cormorant.common import bus
from cormorant.common.events import PredictionLogged
from cormorant.devstack.testing.waits import eventually
from cormorant.kafka_bridge.consume import BatchConsumer
from cormorant.kafka_bridge.replica import Phase, Replica
from cormorant.kafka_bridge.settings import KafkaBridgeSettings
from cormorant.kafka_bridge.testing import (
    Stream,
    committed_offsets,
    high_watermarks,
    message,
)

MESSAGES = 20_000


async def test_every_message_is_predicted_exactly_once(stream: Stream) -> None:
    """20,000 ids over 3 partitions: each is in the output once, keyed, with its headers."""
    replica = stream.replica(max_batch=500)
    await stream.send(message(i) for i in range(MESSAGES))

    seen = await stream.wait_for_ids(set(range(MESSAGES)), within=60)

    assert max(seen.values()) == 1, stream.log_tails()
    records = await stream.read()
    assert len(records) == MESSAGES
    first = next(r for r in records if r.key == b"7")
    assert json.loads(first.value or b"") == {"id": 7, "double": 14}
    assert first.headers["cormorant-endpoint"] == b"orders"
    assert first.headers["cormorant-version"] == b"1"
    assert first.headers["cormorant-source-topic"] == stream.input.encode()
    assert {"cormorant-source-partition", "cormorant-source-offset", "cormorant-request-id"} <= set(
        first.headers
    )
    # Every offset was committed once its output was acknowledged.
    ends = await high_watermarks(stream.bootstrap, stream.input)

    async def all_committed() -> bool:
        return await committed_offsets(stream.bootstrap, stream.group, stream.input) == ends

    await eventually(all_committed, within=10, what="offsets committed up to the end")
    metrics = replica.metrics()
    assert metrics["cormorant_kafka_bridge_messages_produced_total"] == MESSAGES
    assert metrics["cormorant_kafka_bridge_lag_total"] == 0
    assert replica.terminate() == 0


async def test_crashes_lose_nothing_and_duplicates_stay_bounded(stream: Stream) -> None:
    """SIGKILL the replica 5 times mid-stream: 0 missing ids, duplicates ≤ batch x kills."""
    max_batch, kills = 250, 5
    # 0.5 ms per message: the stream lasts long enough to be killed in the middle of it.
    env = {"STREAM_DELAY_MS": "0.5"}
    replica = stream.replica(function="slow", max_batch=max_batch, env=env)
    await stream.send(message(i) for i in range(MESSAGES))
    rng = random.Random(7)
    for kill in range(kills):
        progress = await stream.size()
        target = progress + rng.randint(1_000, 2_500)

        async def moved(target: int = target) -> bool:
            return await stream.size() >= target

        await eventually(moved, within=60, what=f"progress before kill {kill + 1}")
        replica.crash()
        replica = stream.replica(function="slow", max_batch=max_batch, env=env)

    seen = await stream.wait_for_ids(set(range(MESSAGES)), within=90)

    duplicates = sum(count - 1 for count in seen.values())
    print(f"{kills} kills: {duplicates} duplicates (bound {max_batch * kills})")
    assert duplicates <= max_batch * kills, stream.log_tails()
    assert replica.terminate() == 0


async def test_graceful_handover_has_no_gap_and_no_duplicate(stream: Stream) -> None:
    """A serves, B (a new version) joins, A is retired with SIGTERM mid-stream: exactly once."""
    total = 20_000
    # Input arrives faster than one replica predicts it, so both handovers (B joining, A
    # leaving) find a batch in flight.
    env = {"STREAM_DELAY_MS": "0.5"}
    old = stream.replica(function="slow", version="1", env=env)

    async def feed() -> None:
        for start in range(0, total, 1_000):
            await stream.send(message(i) for i in range(start, start + 1_000))
            await asyncio.sleep(0.2)

    feeding = asyncio.create_task(feed())
    await eventually(lambda: _at_least(stream, 1_500), within=30, what="A predicting")
    new = stream.replica(function="slow", version="2", env=env)  # returns once B has joined
    joined_at = await stream.size()
    await eventually(lambda: _at_least(stream, joined_at + 2_000), within=60, what="A and B")
    assert old.terminate() == 0, stream.log_tails()
    await feeding

    seen = await stream.wait_for_ids(set(range(total)), within=90)

    duplicates = {number: count for number, count in seen.items() if count > 1}
    assert not duplicates, f"{len(duplicates)} duplicates\n{stream.log_tails()}"
    versions = {r.headers["cormorant-version"] for r in await stream.read()}
    assert versions == {b"1", b"2"}
    assert new.terminate() == 0
    summary = [line for line in old.log_path.read_text().splitlines() if "stopped:" in line]
    print(summary[-1] if summary else "no summary")


async def test_poison_messages_go_to_the_dead_letter_topic(stream: Stream) -> None:
    """1% of messages make predict raise: all others predicted, each poison one dead-lettered."""
    total = 5_000
    poison = set(range(13, total, 100))
    replica = stream.replica(max_batch=500)
    await stream.send(message(i, poison=i in poison) for i in range(total))

    seen = await stream.wait_for_ids(set(range(total)) - poison, within=60)

    async def dead_lettered() -> bool:
        return await stream.size(stream.dlq) >= len(poison)

    await eventually(dead_lettered, within=30, what="every poison message in the DLQ")
    assert max(seen.values()) == 1
    assert not poison & set(seen)
    letters = await stream.read(stream.dlq)
    assert {json.loads(r.value or b"")["id"] for r in letters} == poison
    letter = letters[0]
    number = json.loads(letter.value or b"")["id"]
    assert letter.key == str(number).encode()
    assert letter.headers["cormorant-error-type"] == b"ValueError"
    assert letter.headers["cormorant-error-message"] == f"poison message {number}".encode()
    assert letter.headers["cormorant-error-stage"] == b"predict"
    assert letter.headers["cormorant-attempts"] == b"3"
    assert letter.headers["cormorant-source-topic"] == stream.input.encode()
    metrics = replica.metrics()
    assert metrics["cormorant_kafka_bridge_messages_dlq_total"] == len(poison)
    assert metrics["cormorant_kafka_bridge_messages_produced_total"] == total - len(poison)
    assert replica.terminate() == 0


async def test_a_new_endpoint_starts_at_the_latest_offset(stream: Stream) -> None:
    """1,000 messages before the group first starts are never predicted; later ones are."""
    await stream.send(message(i) for i in range(1_000))
    replica = stream.replica()
    await stream.send(message(i) for i in range(1_000, 1_200))

    seen = await stream.wait_for_ids(set(range(1_000, 1_200)), within=30)

    assert not set(seen) & set(range(1_000)), stream.log_tails()
    assert replica.terminate() == 0
    # A restart resumes at the committed offsets: what arrived while it was down is predicted.
    await stream.send(message(i) for i in range(1_200, 1_300))
    stream.replica()
    seen = await stream.wait_for_ids(set(range(1_000, 1_300)), within=30)
    assert max(seen.values()) == 1


async def _at_least(stream: Stream, count: int) -> bool:
    return await stream.size() >= count


async def test_a_slow_predict_keeps_its_partitions(stream: Stream) -> None:
    """A batch far longer than max_poll_interval_ms: the replica stays in the group."""
    env = {"CORMORANT_KAFKA_BRIDGE_MAX_POLL_INTERVAL_MS": "1200"}
    replica = stream.replica(function="slow", env=env)
    await stream.send([message(1, sleep=4), message(2)])

    seen = await stream.wait_for_ids({1, 2}, within=30)

    assert max(seen.values()) == 1
    log = replica.log_path.read_text()
    assert "polling with fetches paused" in log
    assert "partitions revoked" not in log, stream.log_tails()
    assert replica.metrics()["cormorant_kafka_bridge_rebalances_total"] == 1
    assert replica.terminate() == 0


async def test_every_prediction_is_logged_on_nats(stream: Stream, nats_url: str) -> None:
    """PredictionLogged per message: 200 with the output, 500 with the error, input as text."""
    client = await bus.connect(nats_url, name="test")
    events: list[PredictionLogged] = []

    async def collect(msg: Msg) -> None:
        for event in bus.decode_all(msg.data, msg.headers):  # a pack carries several
            assert isinstance(event, PredictionLogged)
            events.append(event)

    await client.subscribe(PredictionLogged.subject_filter("orders"), cb=collect)
    env = {"CORMORANT_NATS_URL": nats_url, "CORMORANT_KAFKA_BRIDGE_PUBLISH_PREDICTIONS": "true"}
    replica = stream.replica(env=env)
    try:

        async def connected() -> bool:
            return "logging predictions to" in replica.log_path.read_text()

        await eventually(connected, within=10, what="the replica connected to NATS")
        await stream.send(message(i, poison=i == 3) for i in range(10))

        async def logged() -> bool:
            return len(events) >= 10

        await eventually(logged, within=20, what="10 predictions logged")
    finally:
        await bus.close(client)
    by_input = {json.loads(e.input)["id"]: e for e in events if isinstance(e.input, str)}
    assert set(by_input) == set(range(10))
    assert by_input[3].status == 500
    assert by_input[3].error == "ValueError: poison message 3"
    assert by_input[4].status == 200
    assert by_input[4].output == {"id": 4, "double": 8}
    assert by_input[4].version == "1"
    outputs = {r.headers["cormorant-request-id"].decode() for r in await stream.read()}
    assert by_input[4].request_id in outputs
    assert replica.terminate() == 0


async def test_missing_topics_are_refused(stream: Stream) -> None:
    """An input topic that does not exist: exit 2 naming it, without joining anything."""
    replica = stream.replica(start=False)
    replica.args[replica.args.index(stream.input)] = "no-such-topic"
    replica.spawn()
    assert replica.proc is not None
    assert replica.proc.wait(30) == 2
    assert "no-such-topic do not exist" in replica.log_path.read_text()


async def test_what_was_not_committed_is_predicted_again(
    stream: Stream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Commits refused after the first batch: the next replica predicts exactly those again."""
    original = BatchConsumer.commit
    calls = 0

    async def commit(self: BatchConsumer, offsets: dict[TopicPartition, int]) -> bool:
        nonlocal calls
        calls += 1  # the first commit is the starting offsets, the second the first batch
        return await original(self, offsets) if calls <= 2 else False

    monkeypatch.setattr(BatchConsumer, "commit", commit)
    settings = KafkaBridgeSettings(
        source=stream.models, file="stream.py", endpoint="orders", version="1",
        bootstrap_servers=stream.bootstrap, input_topics=[stream.input],
        output_topic=stream.output, group=stream.group, max_batch=100,
        session_timeout_ms=3000, heartbeat_interval_ms=500, publish_predictions=False,
    )  # fmt: skip
    replica = Replica(settings)
    running = asyncio.create_task(replica.run())

    async def streaming() -> bool:
        return replica.phase is Phase.STREAMING

    await eventually(streaming, within=30, what="the in-process replica joined")
    await stream.send(message(i) for i in range(400))
    await stream.wait_for_ids(set(range(400)), within=30)
    replica.request_stop()
    assert await running == 0
    assert replica.bridge is not None
    uncommitted = replica.bridge.stats.uncommitted
    assert 0 < uncommitted < 400
    monkeypatch.undo()

    stream.replica()
    await eventually(lambda: _at_least(stream, 400 + uncommitted), within=30, what="replayed")
    seen = await stream.wait_for_ids(set(range(400)), within=5)
    assert sum(count - 1 for count in seen.values()) == uncommitted
