"""Partition upkeep: daily partitions created ahead of time, old ones dropped for retention."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from cormorant.common.db import drop_prediction_partitions_before, ensure_prediction_partitions

log = logging.getLogger(__name__)

# After a failed pass (database away), try again this soon rather than a day later.
_RETRY_AFTER = 60.0


@dataclass(slots=True, frozen=True)
class Upkeep:
    """What one pass did."""

    created: list[str]
    dropped: list[str]


async def maintain(
    engine: AsyncEngine, *, retention_days: int, ahead_days: int, today: date | None = None
) -> Upkeep:
    """Create the partitions of ``today`` and ``ahead_days`` after; drop those past retention."""
    day = today or datetime.now(UTC).date()
    async with engine.begin() as conn:
        created = await ensure_prediction_partitions(conn, day, day + timedelta(days=ahead_days))
        dropped = await drop_prediction_partitions_before(
            conn, day - timedelta(days=retention_days)
        )
    if created or dropped:
        log.info("prediction partitions: created %s, dropped %s", created, dropped)
    return Upkeep(created, dropped)


async def keep_partitions(
    engine: AsyncEngine,
    *,
    retention_days: int,
    ahead_days: int,
    interval: float,
    stopping: asyncio.Event,
) -> None:
    """Run ``maintain`` every ``interval`` seconds (after a first wait) until ``stopping``."""
    wait = interval
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await stopping.wait()
        if stopping.is_set():
            return
        wait = interval
        try:
            await maintain(engine, retention_days=retention_days, ahead_days=ahead_days)
        except Exception as exc:  # the database is away: try again soon, never end the task
            wait = min(interval, _RETRY_AFTER)
            log.warning("partition upkeep failed (%s: %s); retrying", type(exc).__name__, exc)
