"""Alembic environment: migrates the connection ``upgrade()`` hands over, or ``sqlalchemy.url``."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.pool import NullPool

from cormorant.common.db import Base
from cormorant.common.db.engine import create_engine
from cormorant.common.db.migrate import MIGRATION_LOCK, include_object

config = context.config


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        literal_binds=connection is None,
        target_metadata=Base.metadata,
        include_object=include_object,
        compare_type=True,
    )


def run_on(connection: Connection) -> None:
    """Run the migrations on ``connection`` (already inside a transaction)."""
    # Held to the end of the transaction: a second migrator waits, then finds nothing to do.
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_on_url(url: str) -> None:
    """Run the migrations on a connection of our own (the CLI's case)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_on)
    finally:
        await engine.dispose()


def run_offline() -> None:
    """Write the migrations' SQL instead of running it (``--sql``)."""
    _configure(url=config.get_main_option("sqlalchemy.url"))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (shared := config.attributes.get("connection")) is not None:
    run_on(shared)
else:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass --url or set CORMORANT_DATABASE_URL")
    asyncio.run(run_on_url(url))
