"""Connections to PostgreSQL and the slug-to-endpoint-id directory shared by ingest and API."""

from __future__ import annotations

import functools
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import asyncpg
from fastapi import Depends, Request

from cormorant.common.db import asyncpg_dsn
from cormorant.common.errors import NotFound, ServiceUnavailable
from cormorant.predictlog.settings import PredictLogSettings

# UTC sessions: per-minute buckets and day partitions then mean the same everywhere.
SERVER_SETTINGS = {"timezone": "UTC", "application_name": "cormorant-predictlog"}

# A statement that takes longer is treated as the database being unavailable.
COMMAND_TIMEOUT = 60.0

METRIC_COLUMNS = ("event_id", "endpoint_id", "version", "key", "value", "request_id", "logged_at")
"""The columns of ``metrics`` the service writes, in record order."""

# A lookup that found nothing is retried soon: the endpoint may be being created right now.
_MISS_TTL = 2.0


async def connect(database_url: str) -> asyncpg.Connection:
    """One connection of the service's own (an ingest writer keeps it for its lifetime)."""
    return await asyncpg.connect(
        asyncpg_dsn(database_url), server_settings=SERVER_SETTINGS, command_timeout=COMMAND_TIMEOUT
    )


async def create_pool(database_url: str, *, size: int) -> asyncpg.Pool:
    """The API's connection pool."""
    pool = await asyncpg.create_pool(
        asyncpg_dsn(database_url),
        # No floor to keep: the pool would log every failed attempt while the database is away.
        min_size=0,
        max_size=size,
        server_settings=SERVER_SETTINGS,
        command_timeout=COMMAND_TIMEOUT,
    )
    assert pool is not None
    return pool


@functools.lru_cache(maxsize=4_096)
def version_number(label: str | None) -> int | None:
    """The version number a label names (``"3"`` or ``"v3"``), or None for anything else."""
    if not label:
        return None
    digits = label[1:] if label[0] in "vV" else label
    if not digits.isascii() or not digits.isdigit():
        return None
    number = int(digits)
    return number if number < 2**31 else None


def clean_text(value: str) -> str:
    """``value`` without NUL characters, which PostgreSQL text cannot hold."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


class Queryable(Protocol):
    """An asyncpg connection or pool."""

    async def fetchval(self, query: str, *args: Any) -> Any:
        """The first value of the first row."""
        ...


class EndpointDirectory:
    """Endpoint ids by slug, read from the ``endpoints`` table."""

    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 60.0) -> None:
        self._pool = pool
        self._ttl = ttl
        self._cache: dict[str, tuple[uuid.UUID | None, float]] = {}

    async def lookup(self, slug: str, via: Queryable | None = None) -> uuid.UUID | None:
        """The endpoint id of ``slug``, or None; fresh from the database (or ``via``)."""
        # A deleted endpoint keeps its slug row, so its log stays readable.
        found: Any = await (via or self._pool).fetchval(
            "SELECT id FROM endpoints WHERE slug = $1", slug
        )
        return found if isinstance(found, uuid.UUID) else None

    async def cached(self, slug: str, via: Queryable | None = None) -> uuid.UUID | None:
        """``lookup`` reused for ``ttl`` seconds (a miss for two), for the ingest's hot path."""
        now = time.monotonic()
        entry = self._cache.get(slug)
        if entry is not None and entry[1] > now:
            return entry[0]
        endpoint_id = await self.lookup(slug, via)
        self._cache[slug] = (endpoint_id, now + (self._ttl if endpoint_id else _MISS_TTL))
        return endpoint_id

    async def require(self, slug: str) -> uuid.UUID:
        """The endpoint id of ``slug``; ``NotFound`` if there is no such endpoint."""
        endpoint_id = await self.lookup(slug)
        if endpoint_id is None:
            raise NotFound(f"endpoint {slug!r} not found")
        return endpoint_id


@dataclass(slots=True, frozen=True)
class Store:
    """What the API's routes read from: the pool, the endpoint directory, the limits."""

    pool: asyncpg.Pool
    endpoints: EndpointDirectory
    settings: PredictLogSettings


def get_store(request: Request) -> Store:
    """The running app's ``Store`` (set by its lifespan)."""
    store = getattr(request.app.state, "store", None)
    if not isinstance(store, Store):
        raise ServiceUnavailable("predictlog is starting")
    return store


StoreDep = Annotated[Store, Depends(get_store)]
