"""Engines and sessions for services, and waiting for the database at start-up."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.pool import NullPool

from cormorant.common.retry import Backoff

# A service holds a few long-lived connections and bursts a little above them; a stale
# connection (database restart, idle timeout in a proxy) is caught by the pre-ping
# instead of failing the first request that draws it.
_POOL_DEFAULTS: dict[str, Any] = {
    "pool_size": 5,
    "max_overflow": 10,
    "pool_timeout": 30,
    "pool_recycle": 1800,
    "pool_pre_ping": True,
}

# UTC sessions: per-minute and per-day buckets then mean the same everywhere.
_SERVER_SETTINGS = {"timezone": "UTC"}

_ASYNC_DRIVER = "postgresql+asyncpg"


def async_url(url: str | URL) -> URL:
    """``url`` with the asyncpg driver, so ``postgresql://`` URLs work too."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername=_ASYNC_DRIVER)
    if parsed.drivername != _ASYNC_DRIVER:
        raise ValueError(f"not a PostgreSQL URL for asyncpg: {parsed.drivername}://…")
    return parsed


def asyncpg_dsn(url: str | URL) -> str:
    """The ``postgresql://`` DSN of ``url`` for ``asyncpg.connect`` or ``asyncpg.create_pool``."""
    return async_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_engine(url: str | URL, **options: Any) -> AsyncEngine:
    """An asyncpg engine with service pool defaults; ``options`` override them."""
    if options.get("poolclass") is None:
        options = _POOL_DEFAULTS | options
    connect_args = dict(options.pop("connect_args", {}))
    connect_args["server_settings"] = _SERVER_SETTINGS | connect_args.get("server_settings", {})
    return _create_async_engine(async_url(url), connect_args=connect_args, **options)


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on ``engine`` whose objects stay readable after commit."""
    # Objects are handed to response models after the commit; expiring them would
    # make each attribute access a lazy load, which async sessions cannot do.
    return async_sessionmaker(engine, expire_on_commit=False)


# A timeout argument rather than the caller's asyncio.timeout(): on expiry the error
# says why the last attempt failed, which is what an operator needs at start-up.
async def wait_for_database(url: str | URL, timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Return once ``url`` accepts a query; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    backoff = Backoff(initial=0.05, cap=1.0)
    failures = 0
    engine = create_engine(url, poolclass=NullPool)
    # The last attempt is usually cut short by the deadline: the error before it says why.
    last_error: BaseException | None = None
    try:
        while True:
            remaining = deadline - time.monotonic()
            try:
                async with asyncio.timeout(max(remaining, 0.01)):
                    async with engine.connect() as conn:
                        await conn.execute(text("SELECT 1"))
                return
            except TimeoutError as error:
                last_error = last_error or error
            except (DBAPIError, OSError) as error:
                last_error = error
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = last_error is None or isinstance(last_error, TimeoutError)
                cause = "no answer" if timed_out else _describe(last_error)
                raise TimeoutError(
                    f"database not ready after {timeout:g} s: {cause}"
                ) from last_error
            failures += 1
            await asyncio.sleep(min(backoff.delay(failures), remaining))
    finally:
        await engine.dispose()


def _describe(error: BaseException) -> str:
    # The driver's own exception (e.g. InvalidCatalogNameError) names the problem best.
    cause: BaseException = getattr(error, "orig", None) or error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    return f"{type(cause).__name__}: {cause}".strip()
