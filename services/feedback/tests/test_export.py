"""The Parquet export against real PostgreSQL: the same rows as the CSV export, whatever the
block boundaries, with exports sharing the service's one encoder thread."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow.parquet as pq

from cormorant.common.datasets import BlobStore
from cormorant.common.db import PredictionRow, asyncpg_dsn, insert_predictions
from cormorant.common.db.models import ExportFormat
from cormorant.feedback.export import DEFAULT_INCLUDE, ParquetEncoder, Window, write_rows

ROWS = 3000
T0 = datetime(2027, 3, 27, 12, 0, tzinfo=UTC)
NULL_LOOKING_IDS = {11: "NA", 13: "null", 17: "NaN"}


def _prediction(endpoint_id: uuid.UUID, n: int) -> PredictionRow:
    """A prediction whose text columns hold what CSV must quote (commas, quotes, newlines) and
    text that CSV readers take for NULL when it stands unquoted ("NA", "null")."""
    failed = n % 7 == 0
    return PredictionRow(
        request_id=NULL_LOOKING_IDS.get(n, f"r{n:04d}"),
        received_at=T0 + timedelta(microseconds=1001 * n),
        endpoint_id=endpoint_id,
        status=500 if failed else 200,
        latency_ms=0.25 * n,
        version=1 + n % 3,
        input=[n, f'text, "quoted"\nline {n}'],
        output=None if failed else {"label": n, "note": ""},
        error=f'boom,\n"{n}"'
        if failed
        else ("N/A" if n % 11 == 3 else ("" if n % 5 == 0 else None)),
    )


async def _export(
    conn: asyncpg.Connection, window: Window, fmt: ExportFormat, blobs: BlobStore, **kw: Any
) -> tuple[int, bytes]:
    async with conn.transaction(), blobs.writer(label="the test export") as writer:
        rows = await write_rows(conn, window, DEFAULT_INCLUDE, fmt, writer, **kw)
        blob = await writer.commit()
    with blobs.open(blob.sha256) as stored:
        return rows, stored.read()


def _csv_rows(content: bytes) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = list(csv.DictReader(io.StringIO(content.decode())))
    for row in rows:
        row["received_at"] = datetime.fromisoformat(row["received_at"])
    return rows


def _as_csv_text(value: Any) -> Any:
    """A Parquet value as PostgreSQL's CSV writes it (NULL and "" both read back as "");
    times stay times."""
    if isinstance(value, datetime):
        return value
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


async def test_parquet_rows_equal_the_csv_rows_across_blocks_and_concurrent_exports(
    migrated_url: str, endpoint_id: uuid.UUID, tmp_path: Path
) -> None:
    """With blocks of a few rows (several row groups) and two exports at once on one warmed-up
    encoder, each Parquet file holds exactly the CSV export's rows, values and NULLs."""
    dsn = asyncpg_dsn(migrated_url)
    conn = await asyncpg.connect(dsn)
    other = await asyncpg.connect(dsn)
    encoder = ParquetEncoder(block_bytes=2048)
    try:
        await insert_predictions(conn, [_prediction(endpoint_id, n) for n in range(ROWS)])
        snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
        window = Window(endpoint_id, None, snapshot)
        blobs = BlobStore(str(tmp_path / "blobs"))
        await blobs.prepare()
        await encoder.start()

        stored = {
            row["request_id"]: row["error"]
            for row in await conn.fetch(
                "SELECT request_id, error FROM predictions WHERE endpoint_id = $1", endpoint_id
            )
        }
        csv_rows, csv_content = await _export(
            conn, window, ExportFormat.CSV, blobs, encoder=encoder
        )
        (first_rows, first), (second_rows, second) = await asyncio.gather(
            _export(conn, window, ExportFormat.PARQUET, blobs, encoder=encoder),
            _export(other, window, ExportFormat.PARQUET, blobs, encoder=encoder),
        )
    finally:
        encoder.close()
        await other.close()
        await conn.close()

    expected = _csv_rows(csv_content)
    assert csv_rows == first_rows == second_rows == len(expected) == ROWS
    for content in (first, second):
        parquet = pq.ParquetFile(io.BytesIO(content))
        assert parquet.metadata.num_row_groups > 1
        table = parquet.read()
        assert table.column_names == list(expected[0])
        got = [{k: _as_csv_text(v) for k, v in row.items()} for row in table.to_pylist()]
        assert got == expected
        # NULL and the empty string stay apart in Parquet (CSV reads both back as "").
        errors = {row["request_id"]: row["error"] for row in table.to_pylist()}
        assert (errors["r0005"], errors["r0001"], errors["r0007"]) == ("", None, 'boom,\n"7"')
        # Every row's NULLs are the database's, whatever the text looks like.
        assert errors == stored
        assert (errors["NA"], errors["null"]) == (None, None)
