"""The bus against a real nats-server: streams, the batched publisher, what a durable pull
consumer reads back."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime

import nats
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from cormorant.common.bus import (
    EVENTS_STREAM,
    METRICS_STREAM,
    PACK_HEADER,
    PREDICTIONS_STREAM,
    STREAMS,
    BatchedPublisher,
    PredictionColumns,
    StreamRefused,
    close,
    configured_streams,
    connect,
    decode_all,
    decode_message,
    ensure_streams,
    prediction_body,
    prediction_pack,
    stream_specs,
)
from cormorant.common.bus.packing import header_line, pack
from cormorant.common.events import (
    EVENT_TYPE_HEADER,
    MSG_ID_HEADER,
    Event,
    EventDecodeError,
    MetricLogged,
    PredictionLogged,
)
from cormorant.common.settings import CommonSettings, StreamSettings
from cormorant.common.telemetry import extract_context, new_registry
from cormorant.devstack.servers import NatsServer
from cormorant.devstack.testing.waits import eventually


def prediction(i: int, *, endpoint: str = "iris") -> PredictionLogged:
    return PredictionLogged(
        request_id=f"req-{i}", endpoint=endpoint, version="v1", input=[[5.1, 3.5, 1.4, 0.2]],
        output=[0.1, 0.8, 0.1], status=200, latency_ms=1.5, received_at=datetime.now(UTC),
    )  # fmt: skip


def metric(value: float, *, endpoint: str = "iris") -> MetricLogged:
    return MetricLogged(endpoint=endpoint, version="v1", key="accuracy", value=value)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def read_back(
    js: JetStreamContext,
    stream: str,
    kind: type[Event],
    durable: str,
    *,
    expect: int,
    within: float = 10.0,
) -> list[tuple[Event, Mapping[str, str]]]:
    """Every event of ``kind`` a durable pull consumer reads from ``stream`` (acked), once
    ``expect`` have arrived or ``within`` s have passed, with each event's own headers."""
    subscription = await js.pull_subscribe(kind.subject_filter(), durable=durable, stream=stream)
    events: list[tuple[Event, Mapping[str, str]]] = []
    deadline = time.monotonic() + within
    try:
        while len(events) < expect and time.monotonic() < deadline:
            try:
                messages = await subscription.fetch(1000, timeout=0.5)
            except (nats.errors.TimeoutError, TimeoutError):
                continue
            for message in messages:
                for event, headers in decode_message(message.data, message.headers):
                    assert isinstance(event, kind), event
                    events.append((event, headers))
                await message.ack()
    finally:
        await subscription.unsubscribe()
    return events


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, name="test")
    yield client
    await close(client)


@pytest.fixture
async def js(nc: Client) -> JetStreamContext:
    context = nc.jetstream()
    await ensure_streams(context)
    return context


# --------------------------------------------------------------------------- streams


async def test_ensure_streams_is_idempotent_and_applies_changes(nats_url: str) -> None:
    first = await connect(nats_url, name="svc-a")
    second = await connect(nats_url, name="svc-b")
    try:
        js_a, js_b = first.jetstream(), second.jetstream()
        await ensure_streams(js_a)
        before = {spec.name: (await js_a.stream_info(spec.name)).config for spec in STREAMS}
        await ensure_streams(js_a)
        await asyncio.gather(ensure_streams(js_a), ensure_streams(js_b))  # two services at once
        after = {spec.name: (await js_a.stream_info(spec.name)).config for spec in STREAMS}
        assert after == before
        assert set(after) == {PREDICTIONS_STREAM, METRICS_STREAM, EVENTS_STREAM}
        assert after[PREDICTIONS_STREAM].subjects == ["cormorant.predictions.>"]
        assert after[PREDICTIONS_STREAM].duplicate_window == 120
        assert "cormorant.traffic.>" in (after[EVENTS_STREAM].subjects or [])

        await ensure_streams(js_b, stream_specs(predictions_max_age=3600))
        changed = await js_a.stream_info(PREDICTIONS_STREAM)
        assert changed.config.max_age == 3600
    finally:
        await close(first)
        await close(second)


async def test_stream_settings_size_the_streams_and_update_existing_ones(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc = await connect(nats_url, name="sized")
    try:
        js = nc.jetstream()
        await ensure_streams(js, STREAMS)  # as an earlier release left them: unbounded
        monkeypatch.setenv("CORMORANT_BUS_STREAM_METRICS_MAX_BYTES", "64KiB")
        monkeypatch.setenv("CORMORANT_BUS_STREAM_EVENTS_MAX_AGE_S", "3600")
        monkeypatch.setenv("CORMORANT_BUS_STREAM_PREDICTIONS_MAX_AGE_S", "86400")
        settings = CommonSettings()  # what every service reads, whatever its own prefix
        await ensure_streams(js, configured_streams(settings.bus_stream))
        metrics = (await js.stream_info(METRICS_STREAM)).config
        assert metrics.max_bytes == 64 * 1024
        assert metrics.num_replicas == 1
        assert (await js.stream_info(EVENTS_STREAM)).config.max_age == 3600
        predictions = (await js.stream_info(PREDICTIONS_STREAM)).config
        assert (predictions.max_age, predictions.max_bytes) == (86400, -1)

        # A caller without the settings (created-if-missing only) does not undo them.
        await ensure_streams(js)
        assert (await js.stream_info(METRICS_STREAM)).config.max_bytes == 64 * 1024

        # The bound holds: past 64 KiB the oldest metrics go.
        publisher = BatchedPublisher(js, name="sized")
        await publisher.start()
        for i in range(400):
            assert publisher.publish(metric(float(i)))
        assert await publisher.flush(timeout=10)
        await publisher.stop()
        state = (await js.stream_info(METRICS_STREAM)).state
        assert state.bytes <= 64 * 1024
        assert state.first_seq > 1, "nothing was discarded: the limit did not apply"
        assert state.last_seq == 400
    finally:
        await close(nc)


async def test_more_stream_replicas_than_servers_is_refused_naming_the_setting(
    nats_url: str,
) -> None:
    nc = await connect(nats_url, name="replicated")
    try:
        streams = configured_streams(StreamSettings(replicas=3))
        assert {spec.to_config().num_replicas for spec in streams} == {3}
        with pytest.raises(StreamRefused, match="CORMORANT_BUS_STREAM_REPLICAS") as refused:
            await ensure_streams(nc.jetstream(), streams)
        assert "non-clustered" in refused.value.description
    finally:
        await close(nc)


# --------------------------------------------------------------------------- publisher


async def test_published_events_carry_ids_and_are_deduplicated(js: JetStreamContext) -> None:
    publisher = BatchedPublisher(js, name="dedup")
    await publisher.start()
    event = metric(0.5)
    assert publisher.publish(event)
    assert publisher.publish(event)  # the same event twice: JetStream keeps one
    assert await publisher.flush(timeout=10)
    assert await publisher.stop() == 0

    stats = publisher.stats
    assert (stats.published, stats.duplicates, stats.dropped, stats.pending) == (2, 1, 0, 0)
    info = await js.stream_info(METRICS_STREAM)
    assert info.state.messages == 1
    stored = await js.get_msg(METRICS_STREAM, 1)
    assert stored.headers is not None
    assert stored.headers[MSG_ID_HEADER] == event.event_id
    assert stored.headers[EVENT_TYPE_HEADER] == "MetricLogged"
    assert stored.data == event.encode()


async def test_trace_context_travels_with_the_event(js: JetStreamContext) -> None:
    tracer = TracerProvider().get_tracer("test")  # not installed globally
    publisher = BatchedPublisher(js, name="traced")
    await publisher.start()
    with tracer.start_as_current_span("request") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        assert publisher.publish(metric(1.0))
    assert await publisher.stop(timeout=10) == 0

    [(_, headers)] = await read_back(js, METRICS_STREAM, MetricLogged, "traced", expect=1)
    span_context = trace.get_current_span(extract_context(headers)).get_span_context()
    assert format(span_context.trace_id, "032x") == trace_id


async def test_full_buffer_refuses_and_counts_drops_without_blocking(
    js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    registry = new_registry()
    publisher = BatchedPublisher(js, name="tiny", max_buffer=10, registry=registry)
    caplog.set_level(logging.WARNING, logger="cormorant.common.bus")

    accepted = [publisher.publish(metric(i)) for i in range(10)]  # not started: nothing drains
    started = time.perf_counter()
    refused = [publisher.publish(metric(i)) for i in range(10_000)]
    elapsed = time.perf_counter() - started

    assert all(accepted)
    assert not any(refused)
    assert elapsed < 1.0, f"a full buffer must refuse at once, took {elapsed:.3f}s"
    stats = publisher.stats
    assert (stats.pending, stats.dropped, stats.published) == (10, 10_000, 0)
    assert stats.dropped_by_reason == {"buffer_full": 10_000}
    assert sample(registry, "cormorant_publisher_dropped_total", publisher="tiny",
                  reason="buffer_full") == 10_000  # fmt: skip
    assert sample(registry, "cormorant_publisher_buffer_events", publisher="tiny") == 10
    # Never silent, but rate-limited: one line, not ten thousand.
    drop_lines = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drop_lines) == 1
    assert drop_lines[0].levelno == logging.WARNING

    await publisher.start()
    assert await publisher.flush(timeout=10)
    assert publisher.publish(metric(1.0))  # room again once drained
    assert await publisher.stop(timeout=10) == 0
    assert publisher.stats.published == 11
    assert sample(registry, "cormorant_publisher_published_total", publisher="tiny") == 11
    assert not publisher.publish(metric(2.0))  # stopped
    assert publisher.stats.dropped_by_reason["closed"] == 1


async def test_stop_reports_what_it_could_not_flush(nats_server: NatsServer) -> None:
    nc = await connect(nats_server.url, name="stopper")
    try:
        await ensure_streams(nc.jetstream())
        publisher = BatchedPublisher(nc, name="stopper", ack_timeout=0.5)
        await publisher.start()
        await asyncio.to_thread(nats_server.kill)
        for i in range(5):
            assert publisher.publish(metric(i))

        remaining = await publisher.stop(timeout=0.3)

        assert remaining == 5
        stats = publisher.stats
        assert (stats.published, stats.dropped, stats.pending) == (0, 5, 0)
        assert stats.dropped_by_reason == {"shutdown": 5}
    finally:
        await close(nc)


async def test_publish_threadsafe(js: JetStreamContext) -> None:
    publisher = BatchedPublisher(js, name="threads")
    await publisher.start()
    results: list[bool] = []

    def from_a_thread() -> None:
        assert threading.current_thread() is not threading.main_thread()
        results.extend(publisher.publish_threadsafe(metric(i)) for i in range(200))

    await asyncio.to_thread(from_a_thread)
    await eventually(lambda: publisher.stats.published == 200, within=10, what="200 acks")
    assert await publisher.stop() == 0
    assert all(results)
    assert (await js.stream_info(METRICS_STREAM)).state.messages == 200


# --------------------------------------------------------------------------- acceptance

N_EVENTS = 100_000


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_100k_predictions_exactly_once_across_a_server_kill(
    nats_server: NatsServer,
) -> None:
    started = time.monotonic()
    pub_nc = await connect(nats_server.url, name="acceptance-publisher")
    con_nc = await connect(nats_server.url, name="acceptance-consumer")
    js = con_nc.jetstream()
    await ensure_streams(js)
    registry = new_registry()

    publisher = BatchedPublisher(
        pub_nc, name="acceptance", max_buffer=N_EVENTS, ack_timeout=2.0, registry=registry
    )
    refused = 0

    async def produce() -> None:
        nonlocal refused
        for i in range(N_EVENTS):
            refused += not publisher.publish(prediction(i))
            if i % 500 == 499:
                await asyncio.sleep(0)  # like a request path: publish between other work

    await publisher.start()
    try:
        producer = asyncio.create_task(produce())
        await eventually(
            lambda: publisher.stats.published >= N_EVENTS // 3, within=30, what="a third acked"
        )
        at_kill = publisher.stats
        # Killed from a thread so the publisher keeps sending into the dying connection.
        await asyncio.to_thread(nats_server.kill)
        killed = time.monotonic()
        await asyncio.to_thread(nats_server.start)
        restarted = time.monotonic()
        await producer
        assert await publisher.flush(timeout=45), f"not flushed: {publisher.stats}"
        flushed = time.monotonic()
        stored = (await js.stream_info(PREDICTIONS_STREAM)).state.messages
        read = await read_back(
            js, PREDICTIONS_STREAM, PredictionLogged, "acceptance", expect=N_EVENTS, within=60
        )
        consumed = time.monotonic()
    finally:
        remaining = await publisher.stop(timeout=5)
        await close(pub_nc)
        await close(con_nc)

    deliveries = Counter(event.event_id for event, _ in read)  # event id -> times read
    request_of = {
        event.event_id: event.request_id for event, _ in read if isinstance(event, PredictionLogged)
    }

    stats = publisher.stats
    delivered_total = sum(deliveries.values())
    print(
        f"\n100k acceptance: total {consumed - started:.1f}s (killed at "
        f"{killed - started:.1f}s with {at_kill.pending} pending / {at_kill.in_flight} in flight, "
        f"server back after {restarted - killed:.2f}s, publisher flushed at "
        f"{flushed - started:.1f}s, read back at {consumed - started:.1f}s); "
        f"publisher {stats}; "
        f"delivered {delivered_total}, duplicates before de-dup {delivered_total - len(deliveries)}"
    )
    assert refused == 0
    assert remaining == 0
    assert at_kill.pending > 0, "the kill must happen mid-stream"
    assert stored == N_EVENTS  # exactly once on the stream: retries de-duplicated by event id
    # Consumer: every event exactly once after de-duplication by event id.
    assert len(deliveries) == N_EVENTS
    assert set(request_of.values()) == {f"req-{i}" for i in range(N_EVENTS)}
    # Publisher: everything accounted for, nothing dropped, the kill cost retries.
    assert stats.published + stats.dropped == N_EVENTS
    assert stats.published == N_EVENTS
    assert stats.dropped == 0
    assert stats.pending == 0
    if at_kill.in_flight:
        assert stats.retried >= 1
    assert sample(registry, "cormorant_publisher_published_total", publisher="acceptance") == (
        N_EVENTS
    )


# --------------------------------------------------------------------------- packs


async def stored_events(js: JetStreamContext, stream: str) -> list[PredictionLogged]:
    """Every event the stream holds, packs unpacked, in stream order."""
    info = await js.stream_info(stream)
    events: list[PredictionLogged] = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await js.get_msg(stream, seq)
        for event in decode_all(stored.data or b"", stored.headers):
            assert isinstance(event, PredictionLogged)
            events.append(event)
    return events


async def test_events_queued_together_leave_as_one_pack(js: JetStreamContext) -> None:
    tracer = TracerProvider().get_tracer("test")  # not installed globally
    registry = new_registry()
    publisher = BatchedPublisher(js, name="packer", max_pack=256, registry=registry)
    sent = [prediction(i) for i in range(600)]
    trace_ids: dict[str, str] = {}
    for event in sent:  # queued before the drain runs: they leave together
        with tracer.start_as_current_span("request") as span:
            trace_ids[event.event_id] = format(span.get_span_context().trace_id, "032x")
            assert publisher.publish(event)
    await publisher.start()
    assert await publisher.flush(timeout=10)
    assert await publisher.stop() == 0

    stats = publisher.stats
    assert (stats.published, stats.messages, stats.dropped) == (600, 3, 0)
    assert sample(registry, "cormorant_publisher_messages_total", publisher="packer") == 3
    info = await js.stream_info(PREDICTIONS_STREAM)
    assert info.state.messages == 3
    first = await js.get_msg(PREDICTIONS_STREAM, info.state.first_seq)
    assert first.headers is not None
    assert first.headers[PACK_HEADER] == "256"
    assert first.headers[EVENT_TYPE_HEADER] == "PredictionLogged"
    assert [e.event_id for e in await stored_events(js, PREDICTIONS_STREAM)] == [
        e.event_id for e in sent
    ]

    read = await read_back(js, PREDICTIONS_STREAM, PredictionLogged, "unpacker", expect=600)
    seen = {
        event.event_id: format(
            trace.get_current_span(extract_context(headers)).get_span_context().trace_id, "032x"
        )
        for event, headers in read
    }
    assert seen == trace_ids  # every event keeps its own request's trace


async def test_an_undecodable_event_costs_only_itself(js: JetStreamContext) -> None:
    good = [prediction(i) for i in range(3)]
    lines = [(header_line(e.headers()), e.encode()) for e in good]
    lines.insert(1, (header_line({EVENT_TYPE_HEADER: "PredictionLogged"}), b'{"garbage": 1}'))
    payload, headers = pack("PredictionLogged", lines, ["a", "b", "c", "d"])
    first = await js.publish(good[0].subject, payload, headers=headers)
    second = await js.publish(
        good[0].subject, b"not a pack", headers={**headers, MSG_ID_HEADER: "x"}
    )
    stored = await js.get_msg(PREDICTIONS_STREAM, first.seq)
    decoded = [event for event, _ in decode_message(stored.data or b"", stored.headers)]
    assert isinstance(decoded[1], EventDecodeError)
    assert [e.event_id for e in decoded if isinstance(e, Event)] == [e.event_id for e in good]
    broken = await js.get_msg(PREDICTIONS_STREAM, second.seq)
    with pytest.raises(EventDecodeError):
        decode_message(broken.data or b"", broken.headers)


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_100k_packed_events_exactly_once_across_a_server_kill(
    nats_server: NatsServer,
) -> None:
    """Packs re-sent after a server kill are de-duplicated like single events."""
    pub_nc = await connect(nats_server.url, name="pack-publisher")
    publisher = BatchedPublisher(pub_nc, name="packed", max_buffer=N_EVENTS, max_pack=256,
                                 ack_timeout=2.0)  # fmt: skip

    async def produce() -> None:
        for i in range(N_EVENTS):
            assert publisher.publish(prediction(i))
            if i % 500 == 499:
                await asyncio.sleep(0)  # like a request path: publish between other work

    await ensure_streams(pub_nc.jetstream())
    await publisher.start()
    try:
        producer = asyncio.create_task(produce())
        await eventually(
            lambda: publisher.stats.published >= N_EVENTS // 3, within=30, what="a third acked"
        )
        at_kill = publisher.stats
        await asyncio.to_thread(nats_server.kill)
        await asyncio.to_thread(nats_server.start)
        await producer
        assert await publisher.flush(timeout=45), f"not flushed: {publisher.stats}"
    finally:
        remaining = await publisher.stop(timeout=5)
        await close(pub_nc)
    nc = await connect(nats_server.url, name="pack-audit")
    try:
        events = await stored_events(nc.jetstream(), PREDICTIONS_STREAM)
    finally:
        await close(nc)
    stats = publisher.stats
    print(f"\n100k packed: at kill {at_kill}; publisher {stats}")
    assert remaining == 0
    assert at_kill.pending > 0, "the kill must happen mid-stream"
    assert (stats.published, stats.dropped) == (N_EVENTS, 0)
    assert stats.messages < N_EVENTS // 50  # packs, not single events
    # Exactly once in the stream: a pack re-sent after the kill was de-duplicated.
    assert len(events) == N_EVENTS
    assert sorted(e.request_id for e in events) == sorted(f"req-{i}" for i in range(N_EVENTS))


# --------------------------------------------------------------------------- column packs


async def test_a_column_pack_reads_back_as_its_events(js: JetStreamContext) -> None:
    """A replica's pack is one message; every reader gets its events back, each with its own
    trace context and timestamps to the microsecond."""
    sent = [prediction(i) for i in range(300)]
    sent[5] = sent[5].model_copy(update={"input": 10**30, "error": "ValueError: no"})
    contexts = [{"traceparent": f"00-{i:032x}-{i:016x}-01"} if i % 2 else {} for i in range(300)]
    pack, left_out = prediction_pack(PredictionColumns.of(sent, contexts))
    assert pack is not None
    assert not left_out
    publisher = BatchedPublisher(js, name="columns")
    await publisher.start()
    assert publisher.publish_pack(sent[0].subject, pack)
    assert await publisher.stop() == 0
    assert (publisher.stats.published, publisher.stats.messages) == (300, 1)

    stored = await stored_events(js, PREDICTIONS_STREAM)
    fields = ("request_id", "endpoint", "version", "input", "output", "error", "status",
              "latency_ms", "received_at", "trace_id")  # fmt: skip
    assert [e.model_dump(include=set(fields)) for e in stored] == [
        e.model_dump(include=set(fields)) for e in sent
    ]
    assert len({e.event_id for e in stored}) == 300
    read = await read_back(js, PREDICTIONS_STREAM, PredictionLogged, "columns", expect=300)
    seen = {
        event.request_id: {k: v for k, v in headers.items() if k == "traceparent"}
        for event, headers in read
        if isinstance(event, PredictionLogged)
    }
    assert seen == {event.request_id: contexts[i] for i, event in enumerate(sent)}


async def test_a_column_pack_too_large_for_the_server_goes_in_parts(
    nc: Client, js: JetStreamContext
) -> None:
    """Over the server's max_payload, the pack is split until the parts pass: all stored,
    each once, none dropped."""
    sent = [
        prediction(i).model_copy(update={"input": "x" * 1_000, "request_id": f"big-{i}"})
        for i in range(3_000)
    ]
    pack, _ = prediction_pack(PredictionColumns.of(sent))
    assert pack is not None
    assert len(pack.payload) > nc.max_payload
    publisher = BatchedPublisher(js, name="too-large")
    await publisher.start()
    assert publisher.publish_pack(sent[0].subject, pack)
    assert await publisher.flush(timeout=10)
    assert await publisher.stop() == 0
    stats = publisher.stats
    assert (stats.published, stats.dropped) == (3_000, 0)
    assert stats.messages >= 4
    stored = await stored_events(js, PREDICTIONS_STREAM)
    assert sorted(e.request_id for e in stored) == sorted(e.request_id for e in sent)


def test_a_column_pack_leaves_out_only_what_is_not_json() -> None:
    sent = [prediction(i) for i in range(4)]
    columns = PredictionColumns.of(sent)
    columns.output[2] = object()
    pack, left_out = prediction_pack(columns)
    assert pack is not None
    assert pack.count == 3
    assert [request_id for request_id, _ in left_out] == ["req-2"]
    events = decode_all(pack.payload, pack.headers)
    assert [e.request_id for e in events] == ["req-0", "req-1", "req-3"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("input_value", "output"),
    [
        ([[5.1, 3.5], {"text": "é\u0000"}], {"label": "setosa"}),
        (10**30, None),  # past orjson's 64 bits: written by the model
        ("text", float("nan")),  # NaN as the model writes it: null
    ],
)
def test_prediction_body_is_the_models_body(input_value: object, output: object) -> None:
    fields = {
        "event_id": "e" * 32, "occurred_at": datetime.now(UTC), "request_id": "req-1",
        "endpoint": "iris", "endpoint_id": None, "version": "3", "input": input_value,
        "output": output, "error": None, "status": 200, "latency_ms": 1.5,
        "received_at": datetime(2026, 11, 25, 10, 0, tzinfo=UTC), "trace_id": "t" * 32,
    }  # fmt: skip
    body = prediction_body(**fields)  # type: ignore[arg-type]
    assert PredictionLogged.model_validate_json(body) == PredictionLogged.model_validate_json(
        PredictionLogged(**fields).encode()  # type: ignore[arg-type]
    )


def test_prediction_body_refuses_what_is_not_json() -> None:
    with pytest.raises(ValueError, match="input"):
        prediction_body(
            event_id="e", occurred_at=datetime.now(UTC), request_id="r", endpoint="iris",
            endpoint_id=None, version="1", input=object(), output=None, error=None, status=200,
            latency_ms=0.0, received_at=datetime.now(UTC), trace_id=None,
        )  # fmt: skip
