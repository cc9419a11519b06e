"""Engines, sessions and waiting for the database at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

from cormorant.common.db import (
    async_url,
    asyncpg_dsn,
    create_engine,
    session_factory,
    upgrade,
    wait_for_database,
)
from cormorant.common.db.models import Endpoint, EndpointKind, EndpointStatus


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p%40ss@db:5432/app",
        "postgres://u:p%40ss@db:5432/app",
        "postgresql+psycopg://u:p%40ss@db:5432/app",
        "postgresql+asyncpg://u:p%40ss@db:5432/app",
    ],
)
def test_urls_are_normalised_to_asyncpg(url: str) -> None:
    assert async_url(url).render_as_string(hide_password=False) == (
        "postgresql+asyncpg://u:p%40ss@db:5432/app"
    )
    assert asyncpg_dsn(url) == "postgresql://u:p%40ss@db:5432/app"


def test_a_non_postgresql_url_is_refused() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        async_url("sqlite+aiosqlite:///x.db")


async def test_engine_has_service_pool_defaults_and_utc_sessions(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        pool = engine.pool
        assert isinstance(pool, AsyncAdaptedQueuePool)
        assert (pool.size(), pool._max_overflow, pool._pre_ping) == (5, 10, True)
        async with engine.connect() as conn:
            assert await conn.scalar(text("SHOW timezone")) == "UTC"
    finally:
        await engine.dispose()


async def test_engine_options_override_the_defaults(database_url: str) -> None:
    engine = create_engine(
        database_url,
        pool_size=2,
        connect_args={"server_settings": {"application_name": "gateway"}},
    )
    try:
        assert isinstance(engine.pool, AsyncAdaptedQueuePool)
        assert engine.pool.size() == 2
        async with engine.connect() as conn:
            assert await conn.scalar(text("SHOW application_name")) == "gateway"
            assert await conn.scalar(text("SHOW timezone")) == "UTC"
    finally:
        await engine.dispose()
    unpooled = create_engine(database_url, poolclass=NullPool)
    assert isinstance(unpooled.pool, NullPool)
    await unpooled.dispose()


async def test_session_objects_stay_readable_after_commit(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        await upgrade(engine)
        sessions = session_factory(engine)
        async with sessions.begin() as session:
            endpoint = Endpoint(slug="s", name="n", kind=EndpointKind.STREAM)
            session.add(endpoint)
        # Server defaults were fetched at flush: no lazy load (impossible in async) here.
        assert (endpoint.kind, endpoint.status, endpoint.spec) == (
            EndpointKind.STREAM,
            EndpointStatus.DEPLOYING,
            {},
        )
        created = endpoint.updated_at
        async with sessions.begin() as session:
            session.add(endpoint)
            endpoint.status = EndpointStatus.RUNNING
        assert endpoint.updated_at > created
    finally:
        await engine.dispose()


async def test_wait_returns_at_once_for_a_ready_database(database_url: str) -> None:
    started = time.monotonic()
    await wait_for_database(database_url, timeout=10)
    assert time.monotonic() - started < 5


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_wait_gives_up_after_the_timeout_with_the_cause(database_url: str) -> None:
    url = make_url(database_url).set(port=closed_port())
    started = time.monotonic()
    # Long enough for a loaded machine to see the refusal before the deadline.
    with pytest.raises(TimeoutError, match=r"not ready after 2 s: .*(refused|Connect)"):
        await wait_for_database(url, timeout=2.0)
    assert time.monotonic() - started < 6


@contextlib.asynccontextmanager
async def late_proxy(port: int, target_port: int, delay: float) -> AsyncIterator[None]:
    """A TCP proxy to PostgreSQL that starts listening on ``port`` after ``delay``."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    async def serve_later() -> asyncio.Server:
        await asyncio.sleep(delay)
        return await asyncio.start_server(handle, "127.0.0.1", port)

    task = asyncio.create_task(serve_later())
    try:
        yield
    finally:
        server = await task
        server.close()
        await server.wait_closed()


async def test_wait_retries_until_the_database_comes_up(database_url: str) -> None:
    parsed = make_url(database_url)
    assert parsed.port is not None
    port = closed_port()
    async with late_proxy(port, parsed.port, delay=0.5):
        started = time.monotonic()
        await wait_for_database(parsed.set(port=port), timeout=10)
        assert 0.4 < time.monotonic() - started < 5


async def test_importing_the_package_opens_nothing() -> None:
    code = (
        "import sys, cormorant.common.db as db;"
        "assert 'asyncpg' not in sys.modules, 'driver imported';"
        "print(len(db.Base.metadata.tables))"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        env={**os.environ, "CORMORANT_DATABASE_URL": "postgresql://nowhere:1/x"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert out.decode().strip() == "20"
