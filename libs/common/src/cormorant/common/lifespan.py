"""What every service's lifespan opens the same way (tracing, the database, the bus), and the
typed read of what a lifespan yields.

Each opener registers its own clean-up on the caller's ``AsyncExitStack``, so a lifespan is a
list of openers and the components built on them, closed in reverse order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from nats.aio.client import Client
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from cormorant.common.bus import (
    BatchedPublisher,
    StreamSpec,
    close,
    configured_streams,
    connect,
    ensure_streams,
)
from cormorant.common.db import create_engine, upgrade, wait_for_database
from cormorant.common.settings import CommonSettings
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


@dataclass(frozen=True, slots=True)
class Platform:
    """What a service that stores and publishes opens before anything of its own."""

    engine: AsyncEngine
    nc: Client
    publisher: BatchedPublisher


async def open_platform(
    stack: AsyncExitStack,
    settings: CommonSettings,
    *,
    title: str,
    publisher: str,
    registry: CollectorRegistry,
    timeout: float,  # noqa: ASYNC109 - how long a starting service waits for its servers
) -> Platform:
    """Tracing, the migrated database, the bus with its streams sized by ``settings``, and a
    started ``BatchedPublisher`` named ``publisher``: each closed when the stack closes."""
    open_tracing(stack, title, settings.otlp_endpoint)
    engine = await open_database(stack, settings.database_url, timeout=timeout)
    streams = configured_streams(settings.bus_stream)
    nc = await open_bus(stack, settings.nats_url, name=title, timeout=timeout, streams=streams)
    events = BatchedPublisher(nc, name=publisher, registry=registry)
    await events.start()
    stack.push_async_callback(events.stop)
    return Platform(engine, nc, events)


def from_state(key: str, kind: type[T]) -> Callable[[Request], T]:
    """A FastAPI dependency reading ``key`` of the lifespan state, checked to be a ``kind``."""

    def read(request: Request) -> T:
        value = request.scope["state"][key]
        if not isinstance(value, kind):
            raise TypeError(f"lifespan state {key!r} is a {type(value).__name__}, not {kind}")
        return value

    read.__name__ = f"state_{key}"
    return read
