"""NATS takes passwords: the replica user may publish predictions and metrics and read its own
replies, nothing else; the platform user anything; no password, nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import nats
import pytest
from nats.errors import NoServersError

from cormorant.common import bus
from cormorant.common.bus import PREDICTIONS_STREAM
from cormorant.common.bus.replica import shown
from cormorant.common.bus.users import REPLICA_INBOX
from cormorant.common.events import PredictionLogged, ReplicaChanged
from cormorant.devstack.servers import NatsServer


async def test_a_replicas_user_cannot_publish_or_read_platform_events(
    nats_server: NatsServer,
) -> None:
    """Publishing an endpoint event or subscribing to the event subjects (or to another
    client's inbox) is refused as the replica user; the platform's subscriber sees nothing."""
    platform = await bus.connect(nats_server.url, name="platform")
    await bus.ensure_streams(platform.jetstream())
    seen: list[str] = []

    async def record(msg: nats.aio.msg.Msg) -> None:
        seen.append(msg.subject)

    await platform.subscribe("cormorant.replica.>", cb=record)
    await platform.flush()
    refused: list[str] = []

    async def on_error(exc: Exception) -> None:
        refused.append(str(exc))

    replica = await nats.connect(
        nats_server.replica_url, inbox_prefix=REPLICA_INBOX, error_cb=on_error
    )
    try:
        await replica.publish(f"{ReplicaChanged.subject_prefix}.victim", b'{"forged": true}')
        await replica.subscribe("cormorant.>")
        await replica.subscribe("_INBOX.>")
        await replica.flush()
        await asyncio.sleep(0.5)  # the server's -ERR lines arrive after the flush's pong
    finally:
        await replica.close()
        await platform.close()
    assert seen == []
    assert any("permissions violation for publish" in e for e in refused), refused
    assert any('subscription to "cormorant.>"' in e for e in refused), refused
    assert any('subscription to "_inbox.>"' in e.lower() for e in refused), refused


async def test_a_replicas_user_publishes_predictions_through_the_replica_publisher(
    nats_server: NatsServer,
) -> None:
    """The replica publisher (as worker and kafka-bridge run it) gets its acks as the replica
    user once the platform made the streams."""
    platform = await bus.connect(nats_server.url, name="platform")
    try:
        await bus.ensure_streams(platform.jetstream())
        event = PredictionLogged(
            request_id="r-1", endpoint="keyed", version="1", input=1, output=2, status=200,
            latency_ms=1.0, received_at=datetime.now(UTC),
        )  # fmt: skip
        async with bus.replica_publisher(
            nats_server.replica_url, client_name="replica", publisher_name="test",
            connect_timeout=5,
        ) as publisher:  # fmt: skip
            assert publisher.publish(event)
            assert await publisher.flush(10)
            assert publisher.stats.published == 1
        info = await platform.jetstream().stream_info(PREDICTIONS_STREAM)
        assert info.state.messages == 1
    finally:
        await platform.close()


async def test_no_password_no_connection(nats_server: NatsServer) -> None:
    """Anything on 127.0.0.1 without a password is refused."""
    anonymous = f"nats://{nats_server.host}:{nats_server.port}"
    with pytest.raises((nats.errors.Error, NoServersError)):
        await nats.connect(
            anonymous, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2
        )


def test_a_nats_url_is_logged_without_its_password() -> None:
    """Replicas log where they publish: the password never reaches their log."""
    assert shown("nats://replica:s3cret@127.0.0.1:4222,nats://h2:4223") == (
        "nats://replica:***@127.0.0.1:4222,nats://h2:4223"
    )
