"""The event publisher of a replica (worker or kafka-bridge), which must serve without NATS."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from urllib.parse import SplitResult, urlsplit

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from prometheus_client import CollectorRegistry

from cormorant.common.bus.connection import close, connect
from cormorant.common.bus.publisher import PACK_EVENTS, BatchedPublisher
from cormorant.common.bus.streams import METRICS_STREAM, PREDICTIONS_STREAM, ensure_streams
from cormorant.common.bus.users import REPLICA_INBOX


def _each_server(url: str, credentials: Callable[[SplitResult], str]) -> str:
    """``url`` (comma-separated servers) with each credentialed server's ``user:password@``
    replaced by what ``credentials`` makes of it."""
    parts = []
    for server in url.split(","):
        split = urlsplit(server.strip())
        if split.username or split.password:
            netloc = f"{credentials(split)}{split.netloc.rsplit('@', 1)[1]}"
            server = split._replace(netloc=netloc).geturl()
        parts.append(server.strip())
    return ",".join(parts)


def shown(url: str) -> str:
    """A NATS URL fit for a log line: each server's password masked."""
    return _each_server(
        url, lambda split: f"{split.username}:***@" if split.password else f"{split.username}@"
    )


def without_credentials(url: str) -> str:
    """A NATS URL with every server's user and password dropped."""
    return _each_server(url, lambda split: "")


async def reachable(url: str, seconds: float) -> bool:
    """Whether anything accepts TCP on the first server of ``url`` (fails fast when not)."""
    first = url.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    try:
        async with asyncio.timeout(seconds):
            _, writer = await asyncio.open_connection(
                parts.hostname or "127.0.0.1", parts.port or 4222
            )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@asynccontextmanager
async def replica_publisher(
    url: str,
    *,
    client_name: str,
    publisher_name: str,
    connect_timeout: float,
    registry: CollectorRegistry | None = None,
    max_pack: int = PACK_EVENTS,
) -> AsyncIterator[BatchedPublisher]:
    """Connect (bounded in time), make sure the streams exist, and run a batched publisher.

    It packs up to ``max_pack`` events per message: a replica publishes predictions and
    metrics only, whose streams are read through ``unpack``.
    """
    # connect() waits for a server forever; a replica must not, it serves without NATS.
    # Its replies come on the one inbox prefix its NATS user may subscribe to.
    async with asyncio.timeout(connect_timeout):
        client = await connect(url, name=client_name, inbox_prefix=REPLICA_INBOX)
    try:
        await _streams_exist(client.jetstream())
        publisher = BatchedPublisher(
            client, name=publisher_name, registry=registry, max_pack=max_pack
        )
        await publisher.start()
        try:
            yield publisher
        finally:
            await publisher.stop()
    finally:
        await close(client)


async def _streams_exist(js: JetStreamContext) -> None:
    """Make sure the streams exist: looked up (all a replica's NATS user may do, once the
    platform made them), created only where they are missing (a worker run on its own)."""
    try:
        for name in (PREDICTIONS_STREAM, METRICS_STREAM):
            await js.stream_info(name)
    except NotFoundError:
        await ensure_streams(js)
