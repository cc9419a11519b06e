"""Daily partitions of ``predictions``: create ahead of time, drop for retention.

Partitions cover whole UTC days and are named ``predictions_pYYYYMMDD``. Rows for a day
without a partition land in ``predictions_default`` (created by the initial migration), so
an insert never fails for want of a partition; creating that day's partition later moves
them over. Create partitions a few days ahead: a new partition is checked against the
default one's rows, which is quick only while that partition stays small.

The functions run in the caller's transaction and serialise on an advisory lock, so
several predictlog replicas may call them at once; the caller commits.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

PARENT = "predictions"
"""The partitioned table."""

DEFAULT_PARTITION = "predictions_default"
"""The partition for rows no daily partition covers."""

PARTITION_LOCK = 0x636D_7070
"""Advisory lock key held while partitions are created or dropped."""

_DAILY = re.compile(r"^predictions_p(\d{8})$")


def partition_name(day: date) -> str:
    """The name of the partition holding ``day`` (a UTC day)."""
    return f"{PARENT}_p{day:%Y%m%d}"


def is_prediction_partition(name: str) -> bool:
    """Whether ``name`` is a partition of ``predictions`` (daily or default)."""
    return name == DEFAULT_PARTITION or _DAILY.match(name) is not None


async def daily_partitions(conn: AsyncConnection) -> dict[str, date]:
    """The daily partitions that exist, by name, with the day each holds."""
    result = await conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": PARENT},
    )
    found: dict[str, date] = {}
    for (name,) in result:
        match = _DAILY.match(name)
        if match:
            found[name] = datetime.strptime(match[1], "%Y%m%d").date()
    return found


async def ensure_prediction_partitions(conn: AsyncConnection, start: date, end: date) -> list[str]:
    """Create the missing daily partitions from ``start``'s UTC day to ``end``'s, inclusive."""
    await _lock(conn)
    existing = await daily_partitions(conn)
    created = []
    day, last = _utc_day(start), _utc_day(end)
    while day <= last:
        name = partition_name(day)
        if name not in existing:
            await _create_partition(conn, name, day)
            created.append(name)
        day += timedelta(days=1)
    return created


async def drop_prediction_partitions_before(conn: AsyncConnection, cutoff: date) -> list[str]:
    """Drop the daily partitions wholly before ``cutoff`` and older rows of the default one."""
    await _lock(conn)
    limit = _as_utc(cutoff) if isinstance(cutoff, datetime) else _utc_start(cutoff)
    dropped = []
    for name, day in sorted((await daily_partitions(conn)).items(), key=lambda item: item[1]):
        if _utc_start(day + timedelta(days=1)) <= limit:
            await conn.execute(text(f'DROP TABLE "{name}"'))
            dropped.append(name)
    await conn.execute(
        text(f'DELETE FROM "{DEFAULT_PARTITION}" WHERE received_at < :limit'), {"limit": limit}
    )
    return dropped


async def _lock(conn: AsyncConnection) -> None:
    await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PARTITION_LOCK})


async def _create_partition(conn: AsyncConnection, name: str, day: date) -> None:
    lower, upper = _utc_start(day), _utc_start(day + timedelta(days=1))
    # DDL takes no bind parameters; the bounds are rendered from dates, never from input.
    bounds = f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
    in_range = {"lower": lower, "upper": upper}
    strays = await conn.scalar(
        text(
            f'SELECT EXISTS (SELECT 1 FROM "{DEFAULT_PARTITION}"'
            " WHERE received_at >= :lower AND received_at < :upper)"
        ),
        in_range,
    )
    if not strays:
        create = f'CREATE TABLE IF NOT EXISTS "{name}" PARTITION OF {PARENT} {bounds}'
        await conn.execute(text(create))
        return
    # PostgreSQL refuses a partition whose rows already sit in the default partition:
    # build the table aside, move those rows in, then attach it.
    await conn.execute(
        text(f'CREATE TABLE "{name}" (LIKE {PARENT} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)')
    )
    await conn.execute(
        text(
            f'WITH moved AS (DELETE FROM "{DEFAULT_PARTITION}"'
            " WHERE received_at >= :lower AND received_at < :upper RETURNING *)"
            f' INSERT INTO "{name}" SELECT * FROM moved'
        ),
        in_range,
    )
    await conn.execute(text(f'ALTER TABLE {PARENT} ATTACH PARTITION "{name}" {bounds}'))


def _as_utc(moment: datetime) -> datetime:
    # A naive datetime is taken to be UTC, like every timestamp Cormorant writes.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _utc_day(value: date) -> date:
    return _as_utc(value).date() if isinstance(value, datetime) else value


def _utc_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)
