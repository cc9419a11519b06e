"""Alembic driven from code: the configuration, ``upgrade``/``downgrade``, and a CLI.

The migrations ship inside this package, so no ``alembic.ini`` is needed. From a shell::

    python -m cormorant.common.db upgrade head
    python -m cormorant.common.db --url postgresql://… current
    python -m cormorant.common.db revision --autogenerate --rev-id 0002 -m "add things"

Any Alembic command and option works; ``--url`` defaults to ``CORMORANT_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from alembic import command
from alembic.config import CommandLine, Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.schema import SchemaItem

from cormorant.common.db.engine import async_url, create_engine
from cormorant.common.db.partitions import is_prediction_partition

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
"""Alembic's script directory: ``env.py`` and ``versions/``."""

MIGRATION_LOCK = 0x636D_6D67
"""Advisory lock key held while migrating, so services starting together take turns."""


# Alembic keeps its running context in module globals (alembic.context, alembic.op), so
# two migrations interleaving on one event loop would trample each other: one at a time
# per loop here, one at a time per database through the advisory lock in env.py.
_loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def alembic_config(url: str | URL | None = None) -> Config:
    """Alembic configuration for the migrations shipped in this package."""
    config = Config()
    # ConfigParser interpolates '%': paths and URLs must escape it.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    if url is not None:
        rendered = async_url(url).render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def include_object(
    obj: SchemaItem, name: str | None, type_: str, reflected: bool, compare_to: SchemaItem | None
) -> bool:
    """Leave the prediction partitions, made at run time, out of autogenerate."""
    return not (type_ == "table" and reflected and name and is_prediction_partition(name))


async def upgrade(target: str | URL | AsyncEngine, revision: str = "head") -> None:
    """Migrate the database to ``revision`` (the newest by default); a no-op if already there."""
    await _migrate(target, command.upgrade, revision)


async def downgrade(target: str | URL | AsyncEngine, revision: str) -> None:
    """Migrate the database back to ``revision``; ``"base"`` removes every table."""
    await _migrate(target, command.downgrade, revision)


async def current_revision(target: str | URL | AsyncEngine) -> str | None:
    """The revision the database is at, or None before the first migration."""
    engine = _engine(target)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        if engine is not target:
            await engine.dispose()


def _engine(target: str | URL | AsyncEngine) -> AsyncEngine:
    if isinstance(target, AsyncEngine):
        return target
    return create_engine(target, poolclass=NullPool)


async def _migrate(
    target: str | URL | AsyncEngine, step: Callable[[Config, str], None], revision: str
) -> None:
    engine = _engine(target)
    lock = _loop_locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
    try:
        # One transaction for the whole run: PostgreSQL DDL is transactional, so a failed
        # migration leaves the schema as it was.
        async with lock, engine.begin() as conn:
            await conn.run_sync(_run_alembic, step, revision)
    finally:
        if engine is not target:
            await engine.dispose()


def _run_alembic(connection: Connection, step: Callable[[Config, str], None], rev: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    step(config, rev)


def main(argv: Sequence[str] | None = None) -> None:
    """Run an Alembic command on these migrations (``python -m cormorant.common.db``)."""
    cli = CommandLine(prog="python -m cormorant.common.db")
    cli.parser.add_argument(
        "--url", help="database URL (default: the CORMORANT_DATABASE_URL setting)"
    )
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("an Alembic command is required, e.g. 'upgrade head'")
    url = options.url
    if url is None:
        from cormorant.common.settings import CommonSettings

        url = CommonSettings().database_url
    logging.basicConfig(level=logging.INFO, format="%(levelname)s [%(name)s] %(message)s")
    config = alembic_config(url)
    config.cmd_opts = options
    cli.run_cmd(config, options)
