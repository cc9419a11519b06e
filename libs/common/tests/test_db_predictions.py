"""The prediction log: daily partitions, the default partition, retention, COPY ingest."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cormorant.common.db import (
    PredictionRow,
    asyncpg_dsn,
    copy_predictions,
    drop_prediction_partitions_before,
    ensure_prediction_partitions,
    insert_predictions,
)
from cormorant.common.db.partitions import daily_partitions

ENDPOINT = uuid.UUID("00000000-0000-0000-0000-000000000001")


@pytest.fixture
async def pg(engine: AsyncEngine, database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    yield conn
    await conn.close()


def at(day: int, hour: int = 12, month: int = 1, year: int = 2030) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


def row(request_id: str, received_at: datetime, **fields: Any) -> PredictionRow:
    values: dict[str, Any] = {"status": 200, "latency_ms": 2.5, "version": 1} | fields
    return PredictionRow(
        request_id=request_id, received_at=received_at, endpoint_id=ENDPOINT, **values
    )


async def insert_sql(conn: AsyncConnection, request_id: str, received_at: datetime) -> None:
    await conn.execute(
        text(
            "INSERT INTO predictions (request_id, received_at, endpoint_id, status, latency_ms)"
            " VALUES (:id, :at, :endpoint, 200, 1.0)"
        ),
        {"id": request_id, "at": received_at, "endpoint": ENDPOINT},
    )


async def placement(conn: AsyncConnection) -> dict[str, str]:
    result = await conn.execute(
        text("SELECT request_id, tableoid::regclass::text FROM predictions")
    )
    return {request_id: partition for request_id, partition in result}


async def test_daily_partitions_are_created_once(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        created = await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 3))
    assert created == ["predictions_p20300101", "predictions_p20300102", "predictions_p20300103"]
    async with engine.begin() as conn:
        assert await ensure_prediction_partitions(conn, date(2030, 1, 2), date(2030, 1, 4)) == [
            "predictions_p20300104"
        ]
        assert await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 4)) == []
        assert set(await daily_partitions(conn)) == {
            f"predictions_p2030010{day}" for day in (1, 2, 3, 4)
        }


async def test_days_are_utc_days(engine: AsyncEngine) -> None:
    plus_five = timezone(timedelta(hours=5))
    async with engine.begin() as conn:
        created = await ensure_prediction_partitions(
            conn, datetime(2030, 1, 2, 3, tzinfo=plus_five), datetime(2030, 1, 2, 23)
        )
    assert created == ["predictions_p20300101", "predictions_p20300102"]


async def test_rows_land_in_their_day_or_the_default_partition(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 2))
        await insert_sql(conn, "first", at(1, 0))
        await insert_sql(conn, "last", datetime(2030, 1, 2, 23, 59, 59, 999999, tzinfo=UTC))
        await insert_sql(conn, "later", at(3, 0))
        await insert_sql(conn, "earlier", at(31, month=12, year=2029))
        assert await placement(conn) == {
            "first": "predictions_p20300101",
            "last": "predictions_p20300102",
            "later": "predictions_default",
            "earlier": "predictions_default",
        }


async def test_a_new_partition_takes_its_rows_from_the_default_one(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await insert_sql(conn, "a", at(5, 1))
        await insert_sql(conn, "b", at(5, 23))
        await insert_sql(conn, "c", at(6, 0))
    async with engine.begin() as conn:
        assert await ensure_prediction_partitions(conn, date(2030, 1, 5), date(2030, 1, 5)) == [
            "predictions_p20300105"
        ]
        assert await placement(conn) == {
            "a": "predictions_p20300105",
            "b": "predictions_p20300105",
            "c": "predictions_default",
        }
        # The adopted partition got the parent's indexes when attached.
        indexes = await conn.scalar(
            text("SELECT count(*) FROM pg_indexes WHERE tablename = 'predictions_p20300105'")
        )
        assert indexes == 3  # the key, (endpoint_id, received_at), (endpoint_id, ingest_xid)
        await insert_sql(conn, "d", at(5, 12))
        assert (await placement(conn))["d"] == "predictions_p20300105"


async def test_retention_drops_old_partitions_and_old_default_rows(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 4))
        for day in (1, 2, 3, 4):
            await insert_sql(conn, f"day{day}", at(day))
        await insert_sql(conn, "old-stray", at(20, month=12, year=2029))
        await insert_sql(conn, "new-stray", at(5))
    async with engine.begin() as conn:
        dropped = await drop_prediction_partitions_before(conn, date(2030, 1, 3))
    assert dropped == ["predictions_p20300101", "predictions_p20300102"]
    async with engine.begin() as conn:
        assert set(await daily_partitions(conn)) == {
            "predictions_p20300103",
            "predictions_p20300104",
        }
        assert set(await placement(conn)) == {"day3", "day4", "new-stray"}
        assert await drop_prediction_partitions_before(conn, date(2030, 1, 3)) == []


async def test_retention_by_instant_keeps_the_partition_it_falls_in(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 2))
        dropped = await drop_prediction_partitions_before(conn, at(2, 6))
    assert dropped == ["predictions_p20300101"]


async def test_copy_writes_rows_with_json_values(engine: AsyncEngine, pg: Any) -> None:
    async with engine.begin() as conn:
        await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 1))
    rows = [
        row("r1", at(1), input=["I love it", 2], output={"label": "positive"}, trace_id="t1"),
        row("r2", at(1), input="plain", output=None, error="boom", status=500),
        row("r3", at(9), input={"nested": [1, {"x": None}]}, output=0.5, version=None),
    ]
    assert await copy_predictions(pg, rows) == 3
    stored = {
        record["request_id"]: record
        for record in await pg.fetch("SELECT *, tableoid::regclass::text AS part FROM predictions")
    }
    assert stored["r1"]["input"] == '["I love it", 2]'
    assert stored["r1"]["output"] == '{"label": "positive"}'
    assert (stored["r1"]["trace_id"], stored["r1"]["part"]) == ("t1", "predictions_p20300101")
    assert (stored["r2"]["output"], stored["r2"]["error"], stored["r2"]["status"]) == (
        None,
        "boom",
        500,
    )
    assert (stored["r3"]["version"], stored["r3"]["part"]) == (None, "predictions_default")
    assert stored["r3"]["endpoint_id"] == ENDPOINT
    assert stored["r3"]["received_at"] == at(9)


async def test_copy_of_a_stored_key_fails_the_batch(pg: Any) -> None:
    await copy_predictions(pg, [row("r1", at(1))])
    with pytest.raises(asyncpg.UniqueViolationError):
        await copy_predictions(pg, [row("r2", at(1)), row("r1", at(1))])
    assert await pg.fetchval("SELECT count(*) FROM predictions") == 1


async def test_insert_skips_request_ids_already_stored(pg: Any) -> None:
    first = [row(f"r{i}", at(1 + i % 3)) for i in range(10)]
    assert await insert_predictions(pg, first) == 10
    assert await insert_predictions(pg, first) == 0
    overlapping = first[5:] + [row(f"n{i}", at(2)) for i in range(4)]
    assert await insert_predictions(pg, overlapping) == 4
    # The same request twice in one batch (a redelivery inside one fetch).
    assert await insert_predictions(pg, [row("twice", at(2)), row("twice", at(2))]) == 1
    counts = await pg.fetch("SELECT request_id, count(*) AS n FROM predictions GROUP BY 1")
    assert len(counts) == 15
    assert {record["n"] for record in counts} == {1}


async def test_insert_runs_inside_the_callers_transaction(pg: Any) -> None:
    async with pg.transaction():
        assert await insert_predictions(pg, [row("a", at(1))]) == 1
        assert await insert_predictions(pg, [row("a", at(1)), row("b", at(1))]) == 1
    transaction = pg.transaction()
    await transaction.start()
    await insert_predictions(pg, [row("c", at(1))])
    await transaction.rollback()
    rows = await pg.fetch("SELECT request_id FROM predictions ORDER BY 1")
    assert [record["request_id"] for record in rows] == ["a", "b"]
    assert await pg.fetchval("SELECT count(*) FROM predictions_staging") == 0


async def test_values_postgresql_refuses_are_replaced_not_fatal(pg: Any) -> None:
    rows = [
        row(
            "odd",
            at(1),
            input=["nul\x00here", "literal \\u0000 text", "lone \ud800 surrogate"],
            output={"score": math.nan, "hi": math.inf, "lo": -math.inf},
            error="bad\x00byte",
        )
    ]
    assert await insert_predictions(pg, rows) == 1
    stored = await pg.fetchrow("SELECT input, output, error FROM predictions")
    assert stored["input"] == '["nul\ufffdhere", "literal \\\\u0000 text", "lone ? surrogate"]'
    assert stored["output"] == '{"hi": "Infinity", "lo": "-Infinity", "score": "NaN"}'
    assert stored["error"] == "bad\ufffdbyte"


async def test_a_batch_of_20000_is_ingested(engine: AsyncEngine, pg: Any) -> None:
    async with engine.begin() as conn:
        await ensure_prediction_partitions(conn, date(2030, 1, 1), date(2030, 1, 2))
    rows = [
        row(str(uuid.uuid4()), at(1 + i % 2), input=[f"text {i}"], output={"label": "pos"})
        for i in range(20_000)
    ]
    started = time.perf_counter()
    assert await insert_predictions(pg, rows) == 20_000
    elapsed = time.perf_counter() - started
    assert await insert_predictions(pg, rows[:1000]) == 0
    assert await pg.fetchval("SELECT count(*) FROM predictions") == 20_000
    print(f"insert_predictions: {20_000 / elapsed:,.0f} rows/s")
