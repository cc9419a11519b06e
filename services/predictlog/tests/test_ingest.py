"""Ingest: every published prediction becomes exactly one row, through crashes and restarts."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from cormorant.common import bus
from cormorant.common.bus import METRICS_STREAM, PREDICTIONS_STREAM, spool
from cormorant.common.db import upgrade
from cormorant.common.events import MSG_ID_HEADER, MetricLogged
from cormorant.devstack.servers import NatsServer, PostgresServer
from cormorant.devstack.testing.waits import eventually
from cormorant.predictlog.testing import (
    LogKit,
    ServiceProcess,
    quick_settings,
    running,
    sample,
)

N = 20_000


async def test_20000_predictions_become_20000_rows(client: httpx.AsyncClient, kit: LogKit) -> None:
    """The acceptance: 20,000 events published under load are 20,000 rows, each id once
    (packed by the publisher, as the gateway sends them; the kill tests send column packs)."""
    await kit.publish((kit.prediction(i) for i in range(N)), columns=False)
    await kit.wait_rows(N, within=60)

    async def drained() -> bool:
        text = (await client.get("/metrics")).text
        labels = {"stream": PREDICTIONS_STREAM}
        return (
            sample(text, "cormorant_predictlog_rows_written_total", table="predictions") == N
            and sample(text, "cormorant_predictlog_consumer_pending", **labels) == 0
            and sample(text, "cormorant_predictlog_consumer_ack_pending", **labels) == 0
            and sample(text, "cormorant_predictlog_batches_total", table="predictions") > 0
        )

    # Nothing left in the stream nor in flight: the count below is final.
    await eventually(drained, within=30, what="the consumers drained and reported")
    assert await kit.counts() == (N, N)


async def test_20000_rows_when_predictlog_is_killed_mid_load(
    kit: LogKit, spawn: Callable[[str, str], ServiceProcess]
) -> None:
    """SIGKILL the service mid-load and start it again: still exactly 20,000 rows."""
    first = spawn(kit.nats_url, kit.database_url)
    await first.start()
    publishing = asyncio.create_task(kit.publish((kit.prediction(i) for i in range(N)), rate=8_000))
    await kit.wait_rows(2_000, within=60)
    first.kill()
    assert not publishing.done(), "the load ended before the crash"
    second = spawn(kit.nats_url, kit.database_url)
    await second.start()
    assert await publishing == N
    await kit.wait_rows(N, within=90)
    assert await kit.counts() == (N, N)


async def test_20000_rows_when_nats_is_killed_mid_load(
    nats_server: NatsServer, migrated_url: str, endpoint_id: uuid.UUID
) -> None:
    """SIGKILL nats-server mid-load and restart it on the same store: still 20,000 rows."""
    kit = LogKit(nats_server.url, migrated_url, endpoint_id)
    async with running(quick_settings(nats_server.url, migrated_url)):
        publishing = asyncio.create_task(
            kit.publish((kit.prediction(i) for i in range(N)), rate=8_000)
        )
        await kit.wait_rows(2_000, within=60)
        nats_server.kill()
        assert not publishing.done(), "the load ended before the crash"
        await asyncio.to_thread(nats_server.start)
        assert await publishing == N
        await kit.wait_rows(N, within=90)
        assert await kit.counts() == (N, N)


async def test_metrics_are_stored_once_per_event(client: httpx.AsyncClient, kit: LogKit) -> None:
    """MetricLogged rows land in ``metrics``; a redelivered event id is stored once."""
    events = [
        MetricLogged(endpoint="iris", version="v2", key="accuracy", value=0.5 + i / 100)
        for i in range(50)
    ]
    await kit.publish(events)
    # The same event again under another message id: past JetStream's de-duplication, as a
    # redelivery after a crash would be.
    nc = await bus.connect(kit.nats_url, name="test")
    try:
        headers = events[0].headers() | {MSG_ID_HEADER: "another-message-id"}
        await nc.jetstream().publish(events[0].subject, events[0].encode(), headers=headers)
    finally:
        await bus.close(nc)

    async def stored_and_counted() -> bool:
        text = (await client.get("/metrics")).text
        seen = sample(
            text,
            "cormorant_predictlog_consumer_events_total",
            stream=METRICS_STREAM,
            outcome="acked",
        )
        return seen >= 51

    await eventually(stored_and_counted, within=30, what="51 metric events acked")
    conn = await kit.connect()
    try:
        rows = await conn.fetch(
            "SELECT event_id, endpoint_id, version, key, value FROM metrics ORDER BY value"
        )
    finally:
        await conn.close()
    assert [row["event_id"] for row in rows] == [e.event_id for e in events]
    assert {(row["endpoint_id"], row["version"], row["key"]) for row in rows} == {
        (kit.endpoint_id, 2, "accuracy")
    }


async def test_an_endpoint_id_carried_by_the_event_is_used(
    client: httpx.AsyncClient, kit: LogKit
) -> None:
    """An event that names its endpoint's id is stored under it, whatever the slug says."""
    other = uuid.uuid4()
    await kit.publish([kit.prediction(1, endpoint_id=str(other)), kit.prediction(2)])
    await kit.wait_rows(1, within=30)

    async def both() -> bool:
        conn = await kit.connect()
        try:
            ids = await conn.fetch("SELECT request_id, endpoint_id FROM predictions")
        finally:
            await conn.close()
        return {row["endpoint_id"] for row in ids} == {other, kit.endpoint_id}

    await eventually(both, within=30, what="one row under each endpoint id")


async def stored_rows(kit: LogKit) -> list[tuple[str, uuid.UUID]]:
    """Every stored prediction as (request id, endpoint id), whatever its endpoint."""
    conn = await kit.connect()
    try:
        rows = await conn.fetch("SELECT request_id, endpoint_id FROM predictions")
    finally:
        await conn.close()
    return [(row["request_id"], row["endpoint_id"]) for row in rows]


async def test_predictions_wait_for_an_endpoint_created_after_them(
    nats_url: str, migrated_url: str, endpoint_id: uuid.UUID
) -> None:
    """An unknown slug is retried (the endpoint may be on its way), then given up."""
    kit = LogKit(nats_url, migrated_url, endpoint_id)
    async with running(quick_settings(nats_url, migrated_url, max_deliver=3)) as client:
        await kit.publish(
            [
                kit.prediction(1, endpoint="late"),
                kit.prediction(2, endpoint="ghost"),
            ]
        )

        async def deferred() -> bool:
            text = (await client.get("/metrics")).text
            labels = {"table": "predictions", "reason": "unknown_endpoint"}
            return sample(text, "cormorant_predictlog_ingest_errors_total", **labels) >= 2

        await eventually(deferred, within=30, what="both events deferred")
        late = await kit.create_endpoint("late")

        async def outcome() -> bool:
            # Both settle on their own clocks: a redelivery whose nak was lost to a reconnect
            # comes back only after ack_wait, so wait for the late row, not just the ghost.
            text = (await client.get("/metrics")).text
            labels = {"table": "predictions", "reason": "unknown_endpoint"}
            dropped = sample(text, "cormorant_predictlog_events_dropped_total", **labels)
            return dropped >= 1 and len(await stored_rows(kit)) >= 1

        await eventually(outcome, within=90, what="the late event stored, the ghost's given up")
        text = (await client.get("/metrics")).text
        labels = {"table": "predictions", "reason": "unknown_endpoint"}
        assert sample(text, "cormorant_predictlog_events_dropped_total", **labels) == 1
        assert await stored_rows(kit) == [(kit.prediction(1).request_id, late)]


async def test_an_endpoint_created_just_after_a_miss_keeps_its_last_chance(
    nats_url: str, migrated_url: str, endpoint_id: uuid.UUID
) -> None:
    """On an event's last delivery the slug is looked up past the cache's remembered miss."""
    kit = LogKit(nats_url, migrated_url, endpoint_id)
    async with running(quick_settings(nats_url, migrated_url, max_deliver=1)) as client:
        labels = {"table": "predictions", "reason": "unknown_endpoint"}

        def dropped(text: str) -> float:
            return sample(text, "cormorant_predictlog_events_dropped_total", **labels)

        await kit.publish([kit.prediction(1, endpoint="soon")])

        async def given_up() -> bool:
            return dropped((await client.get("/metrics")).text) == 1

        await eventually(given_up, within=30, what="the event before the endpoint given up")
        # Within the cache's memory of that miss: the endpoint now exists.
        soon = await kit.create_endpoint("soon")
        await kit.publish([kit.prediction(2, endpoint="soon")])

        async def settled() -> bool:
            return bool(await stored_rows(kit)) or dropped((await client.get("/metrics")).text) > 1

        await eventually(settled, within=30, what="the second event stored or given up")
        assert await stored_rows(kit) == [(kit.prediction(2).request_id, soon)]
        assert dropped((await client.get("/metrics")).text) == 1


async def test_a_row_the_database_refuses_is_dropped_alone(
    client: httpx.AsyncClient, kit: LogKit
) -> None:
    """One refused row costs its own event only; the rest of its batch is stored."""
    conn = await kit.connect()
    try:
        await conn.execute(
            "ALTER TABLE predictions ADD CONSTRAINT no_teapots CHECK (status <> 418)"
        )
    finally:
        await conn.close()
    events = [kit.prediction(i, status=418 if i == 7 else 200) for i in range(20)]
    await kit.publish(events)
    await kit.wait_rows(19, within=30)

    async def dropped() -> bool:
        text = (await client.get("/metrics")).text
        labels = {"table": "predictions", "reason": "rejected"}
        return sample(text, "cormorant_predictlog_events_dropped_total", **labels) == 1

    await eventually(dropped, within=30, what="the refused event given up")
    assert await kit.counts() == (19, 19)


async def test_an_odd_prediction_in_a_column_pack_costs_only_itself(
    client: httpx.AsyncClient, kit: LogKit
) -> None:
    """A replica's pack with one event the model refuses: that one is given up, the others
    are stored, values orjson cannot hold among them."""
    events = [kit.prediction(i) for i in range(50)]
    columns = bus.PredictionColumns.of(events)
    columns.status[7] = 99  # not an HTTP status
    columns.input[8] = 10**30  # past 64 bits
    columns.output[9] = {"text": "é", "nested": [1.5, None, True]}
    pack, left_out = bus.prediction_pack(columns)
    assert pack is not None
    assert not left_out
    nc = await bus.connect(kit.nats_url, name="odd-pack")
    try:
        await nc.jetstream().publish(events[0].subject, pack.payload, headers=pack.headers)
    finally:
        await bus.close(nc)
    await kit.wait_rows(49, within=30)

    async def given_up() -> bool:
        text = (await client.get("/metrics")).text
        labels = {"table": "predictions", "reason": "undecodable"}
        return sample(text, "cormorant_predictlog_events_dropped_total", **labels) == 1

    await eventually(given_up, within=30, what="the odd event given up")
    assert await kit.counts() == (49, 49)
    conn = await kit.connect()
    try:
        stored = {
            row["request_id"]: row
            for row in await conn.fetch(
                "SELECT request_id, received_at, input::text AS input, output::text AS output,"
                " status, latency_ms FROM predictions"
            )
        }
    finally:
        await conn.close()
    assert events[7].request_id not in stored
    assert stored[events[8].request_id]["input"] == str(10**30)
    assert stored[events[9].request_id]["output"] == '{"text": "é", "nested": [1.5, null, true]}'
    # Timestamps travel as POSIX seconds and come back to the microsecond.
    assert stored[events[3].request_id]["received_at"] == events[3].received_at
    assert stored[events[3].request_id]["latency_ms"] == events[3].latency_ms


async def test_daily_partitions_exist_from_today_on(client: httpx.AsyncClient, kit: LogKit) -> None:
    """At start the service has created today's partition and the next three days'."""
    conn = await kit.connect()
    try:
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'predictions'::regclass"
        )
    finally:
        await conn.close()
    today = datetime.now(UTC).date()
    expected = {f"predictions_p{today + timedelta(days=d):%Y%m%d}" for d in range(4)}
    assert expected <= {row["relname"] for row in names}


async def test_nothing_is_lost_while_postgresql_restarts(nats_url: str) -> None:
    """PostgreSQL stopped mid-load and started again: the batches wait, then all land."""
    # Outside pytest's base temp: a pytest starting meanwhile (other suites share this
    # machine) closes that tree to other users, and the server restarts as one.
    data = Path(tempfile.mkdtemp(prefix="predictlog-pg-"))
    postgres = PostgresServer(data, durable=False)
    postgres.start()
    try:
        await upgrade(postgres.url)
        kit = LogKit(nats_url, postgres.url, uuid.uuid4())
        kit.endpoint_id = await kit.create_endpoint("iris")
        async with running(quick_settings(nats_url, postgres.url)) as client:
            publishing = asyncio.create_task(
                kit.publish((kit.prediction(i) for i in range(5_000)), rate=5_000)
            )
            await kit.wait_rows(500, within=30)
            await asyncio.to_thread(postgres.stop)
            await publishing
            await asyncio.to_thread(postgres.start)
            await kit.wait_rows(5_000, within=60)
            assert await kit.counts() == (5_000, 5_000)
            text = (await client.get("/metrics")).text
        labels = {"table": "predictions", "reason": "database_unavailable"}
        assert sample(text, "cormorant_predictlog_ingest_errors_total", **labels) > 0
        # Held and retried in place: no batch was handed back towards max_deliver.
        outcome = {"stream": PREDICTIONS_STREAM, "outcome": "nacked"}
        assert sample(text, "cormorant_predictlog_consumer_events_total", **outcome) == 0
    finally:
        postgres.stop()
        shutil.rmtree(data, ignore_errors=True)


async def test_predictions_replayed_from_a_spool_are_stored_once(
    client: httpx.AsyncClient, kit: LogKit, tmp_path: Path
) -> None:
    """A dead worker's spool replayed after some of its rows were published already (in
    other packs, under other ``Nats-Msg-Id``s): each prediction is one row, keyed on its
    request id and received-at time."""
    events = [kit.prediction(i) for i in range(40)]
    await kit.publish(events[:25])
    await kit.wait_rows(25, within=30)
    writer = spool.SpoolWriter(tmp_path)
    for e in events[10:]:
        writer.append(
            (e.request_id, e.received_at.timestamp(), e.latency_ms / 1000, e.status, e.input,
             e.output, e.error, e.trace_id)
        )  # fmt: skip
    writer.close()  # its writer is gone: an orphan
    nc = await bus.connect(kit.nats_url, name="replayer")
    try:
        publisher = bus.BatchedPublisher(nc, name="replayer")
        await publisher.start()
        labels = spool.Labels(events[0].endpoint, None, events[0].version)
        assert spool.replay(tmp_path, labels, publisher, events[0].subject) == 30
        assert await publisher.flush(30)
        await publisher.stop()
    finally:
        await bus.close(nc)
    await kit.wait_rows(40, within=30)

    async def drained() -> bool:
        text = (await client.get("/metrics")).text
        return sample(text, "cormorant_predictlog_consumer_pending", stream=PREDICTIONS_STREAM) == 0

    await eventually(drained, within=30, what="the consumer drained")
    assert await kit.counts() == (40, 40)
