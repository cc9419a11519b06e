"""Partition upkeep: ahead of time and past retention."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cormorant.common.db import create_engine, ensure_prediction_partitions
from cormorant.common.db.partitions import daily_partitions
from cormorant.predictlog.retention import maintain


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_url)
    yield engine
    await engine.dispose()


async def test_partitions_are_made_ahead_and_dropped_past_retention(engine: AsyncEngine) -> None:
    """Today plus three days exist afterwards; days wholly before the retention are gone."""
    async with engine.begin() as conn:
        await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 3))
    upkeep = await maintain(engine, retention_days=30, ahead_days=3, today=date(2030, 2, 1))
    assert upkeep.dropped == ["predictions_p20300101"]
    assert upkeep.created == [f"predictions_p203002{day:02d}" for day in range(1, 5)]
    async with engine.connect() as conn:
        kept = sorted(await daily_partitions(conn))
    assert kept == ["predictions_p20300102", "predictions_p20300103", *upkeep.created]
    again = await maintain(engine, retention_days=30, ahead_days=3, today=date(2030, 2, 1))
    assert (again.created, again.dropped) == ([], [])
