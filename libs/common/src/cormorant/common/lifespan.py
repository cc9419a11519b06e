"""What every service's lifespan opens the same way (tracing, the database, the bus), and the
typed read of what a lifespan yields.

Each opener registers its own clean-up on the caller's ``AsyncExitStack``, so a lifespan is a
list of openers and the components built on them, closed in reverse order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from fastapi import Request
from nats.aio.client import Client
from opentelemetry.sdk.trace import TracerProvider
from sqlalchemy.ext.asyncio import AsyncEngine

from cormorant.common.bus import StreamSpec, close, connect, ensure_streams
from cormorant.common.db import create_engine, upgrade, wait_for_database
from cormorant.common.telemetry import setup_tracing

T = TypeVar("T")


def open_tracing(stack: AsyncExitStack, title: str, endpoint: str | None) -> TracerProvider | None:
    """Export the service's traces to ``endpoint`` until the stack closes (None: no tracing)."""
    if not endpoint:
        return None
    provider = setup_tracing(title, endpoint)
    stack.callback(provider.shutdown)
    return provider


async def open_database(
    stack: AsyncExitStack,
    url: str,
    *,
    timeout: float,  # noqa: ASYNC109 - how long a starting service waits for PostgreSQL
    migrate: bool = True,
    **engine_options: Any,
) -> AsyncEngine:
    """An engine once PostgreSQL answers (within ``timeout`` s), migrated to the head
    revision unless ``migrate`` is False, disposed when the stack closes."""
    await wait_for_database(url, timeout=timeout)
    engine = create_engine(url, **engine_options)
    stack.push_async_callback(engine.dispose)
    if migrate:
        await upgrade(engine)
    return engine


async def open_bus(
    stack: AsyncExitStack,
    url: str,
    *,
    name: str,
    timeout: float,  # noqa: ASYNC109 - how long a starting service waits for NATS
    streams: Iterable[StreamSpec] | None = None,
) -> Client:
    """A NATS connection (within ``timeout`` s) with the JetStream streams in place (sized as
    ``streams``, ``bus.configured_streams(settings.bus_stream)``), closed when the stack
    closes. Without ``streams``, missing streams are created and existing ones left alone."""
    # bus.connect waits for a server forever; a service start must not.
    async with asyncio.timeout(timeout):
        nc = await connect(url, name=name)
    stack.push_async_callback(close, nc)
    await ensure_streams(nc.jetstream(), streams)
    return nc


def from_state(key: str, kind: type[T]) -> Callable[[Request], T]:
    """A FastAPI dependency reading ``key`` of the lifespan state, checked to be a ``kind``."""

    def read(request: Request) -> T:
        value = request.scope["state"][key]
        if not isinstance(value, kind):
            raise TypeError(f"lifespan state {key!r} is a {type(value).__name__}, not {kind}")
        return value

    read.__name__ = f"state_{key}"
    return read
