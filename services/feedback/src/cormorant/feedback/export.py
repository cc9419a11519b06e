"""One feedback export: the predictions between two snapshots, streamed into a blob.

Which rows: those of the endpoint whose storing transaction (``ingest_xid``) the previous
run's snapshot did not see and this run's snapshot does. Snapshots only ever grow, so the
runs of a loop partition the rows: none twice, none missed, whatever order ingest
transactions commit in and whenever a row was received.

CSV is PostgreSQL's own ``COPY (SELECT ...) TO STDOUT`` output passed straight to storage;
Parquet is the same COPY cut into blocks of whole rows, each parsed by Arrow's CSV reader on
the encoder's thread and written as one row group. Either way memory holds about one block, whatever
the export's size.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cormorant.common.datasets import BlobWriter
from cormorant.common.db.models import ExportFormat

OPTIONAL_COLUMNS = (
    "version",
    "status",
    "latency_ms",
    "input",
    "output",
    "error",
    "trace_id",
    "metrics",
    "shadow",
)
"""What ``include`` may name, in the order of the API's documentation."""

DEFAULT_INCLUDE = ("input", "output", "error", "status", "latency_ms", "version")
"""What a loop exports when ``include`` is not given."""

_SQL = {
    "request_id": "p.request_id",
    "received_at": "p.received_at",
    "version": "p.version",
    "status": "p.status",
    "latency_ms": "p.latency_ms",
    "input": "p.input::text",
    "output": "p.output::text",
    "error": "p.error",
    "trace_id": "p.trace_id",
    # true/false, as Arrow's CSV reader takes booleans (PostgreSQL's CSV would say t/f).
    "shadow": "p.shadow::text",
    # Correlated on (endpoint_id, request_id), indexed: the metrics stored by export time.
    "metrics": (
        "(SELECT jsonb_object_agg(m.key, m.value)::text FROM metrics m"
        " WHERE m.endpoint_id = p.endpoint_id AND m.request_id = p.request_id)"
    ),
}

_ARROW: dict[str, pa.DataType] = {
    "request_id": pa.string(),
    "received_at": pa.timestamp("us", tz="UTC"),
    "version": pa.int32(),
    "status": pa.int16(),
    "latency_ms": pa.float32(),
    "input": pa.string(),
    "output": pa.string(),
    "error": pa.string(),
    "trace_id": pa.string(),
    "metrics": pa.string(),
    "shadow": pa.bool_(),
}

_T = TypeVar("_T")

WRITE_BYTES = 1 << 20
"""Parquet bytes gathered before they are handed to storage."""

PARQUET_BLOCK_BYTES = 1 << 20
"""Bytes of CSV per Parquet row group (about 7,000 predictions). A block's conversion
peaks at about 15 times its size (4 MiB: 25 MB; see docs/benchmarks.md)."""


class ExportConnection(Protocol):
    """The part of an asyncpg connection an export uses (inside a transaction)."""

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        """Every row."""
        ...

    async def copy_from_query(
        self, query: str, *args: Any, output: Any, format: str, header: bool
    ) -> str:
        """COPY a query's rows out."""
        ...


@dataclass(frozen=True, slots=True)
class Window:
    """The rows of one run: stored by transactions ``after`` did not see and ``upto`` does."""

    endpoint_id: uuid.UUID
    after: str | None
    """The previous run's snapshot (``pg_snapshot`` text); None for a loop's first run."""
    upto: str
    """This run's snapshot."""

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition on ``predictions p`` and its parameters."""
        # Rows from before revision 0005 have no ingest_xid: every first run takes them.
        clauses = [
            "p.endpoint_id = $1",
            "(p.ingest_xid IS NULL OR pg_visible_in_snapshot(p.ingest_xid, $2::text::pg_snapshot))",
        ]
        args: list[Any] = [self.endpoint_id, self.upto]
        if self.after is not None:
            # The range lets the (endpoint_id, ingest_xid) index skip everything older.
            clauses.append(
                "p.ingest_xid >= pg_snapshot_xmin($3::text::pg_snapshot)"
                " AND p.ingest_xid < pg_snapshot_xmax($2::text::pg_snapshot)"
                " AND NOT pg_visible_in_snapshot(p.ingest_xid, $3::text::pg_snapshot)"
            )
            args.append(self.after)
        return " AND ".join(clauses), args


@dataclass(slots=True)
class Summary:
    """What an export holds, for its manifest and its run record."""

    rows: int = 0
    first_received_at: datetime | None = None
    last_received_at: datetime | None = None
    versions: list[int] = field(default_factory=list)


def columns_of(include: Sequence[str]) -> list[str]:
    """Every exported column, in file order."""
    return ["request_id", "received_at", *include]


async def summarize(conn: ExportConnection, window: Window) -> Summary:
    """Row count, time range and endpoint versions of the window."""
    where, args = window.where()
    # Grouped by version: one hash aggregate of a few groups, where array_agg(DISTINCT)
    # would sort every row.
    groups = await conn.fetch(
        "SELECT p.version, count(*) AS n, min(p.received_at) AS first,"
        f" max(p.received_at) AS last FROM predictions p WHERE {where} GROUP BY p.version",
        *args,
    )
    summary = Summary()
    for group in groups:
        summary.rows += group["n"]
        if group["version"] is not None:
            summary.versions.append(group["version"])
        if summary.first_received_at is None or group["first"] < summary.first_received_at:
            summary.first_received_at = group["first"]
        if summary.last_received_at is None or group["last"] > summary.last_received_at:
            summary.last_received_at = group["last"]
    summary.versions.sort()
    return summary


def select_query(
    window: Window, include: Sequence[str], *, utc_wall_time: bool = False
) -> tuple[str, list[Any]]:
    """The SELECT of the window's rows with the exported columns (``received_at`` as UTC
    wall time without an offset with ``utc_wall_time``)."""
    where, args = window.where()
    sql = _SQL | {"received_at": "p.received_at AT TIME ZONE 'UTC'"} if utc_wall_time else _SQL
    listed = ", ".join(f"{sql[c]} AS {c}" for c in columns_of(include))
    return f"SELECT {listed} FROM predictions p WHERE {where}", args


async def write_rows(
    conn: ExportConnection,
    window: Window,
    include: Sequence[str],
    fmt: ExportFormat,
    writer: BlobWriter,
    *,
    encoder: ParquetEncoder,
) -> int:
    """Stream the window's rows into ``writer`` as ``fmt`` (Parquet by ``encoder``); the
    number of rows written."""
    if fmt is ExportFormat.CSV:
        query, args = select_query(window, include)
        return await _write_csv(conn, query, args, writer)
    query, args = select_query(window, include, utc_wall_time=True)
    return await encoder.write(conn, query, args, include, writer)


async def _write_csv(
    conn: ExportConnection, query: str, args: list[Any], writer: BlobWriter
) -> int:
    # The writer gathers chunks up to 1 MiB before each (threaded) write to storage.
    status = await conn.copy_from_query(
        query, *args, output=writer.write, format="csv", header=True
    )
    return int(status.rsplit(" ", 1)[-1])


class ParquetEncoder:
    """Turns blocks of CSV rows into Parquet row groups on one long-lived thread.

    One thread for every export, kept for the service's life: its allocator state (malloc
    arena, Arrow's per-thread heap) is reused instead of one grown per export, and exports
    running together convert one block at a time. ``start`` pays Arrow's one-time costs (CSV
    reader, compute kernels, Parquet writer and codec: about 20 MB) when the service starts,
    not during the first export; after each block the memory Arrow freed goes back to the
    system, so an export holds about one block's worth whatever its size.
    """

    def __init__(self, *, block_bytes: int = PARQUET_BLOCK_BYTES) -> None:
        self._thread = ThreadPoolExecutor(1, "feedback-parquet")
        self._block_bytes = block_bytes

    async def start(self) -> None:
        """Load and initialise Arrow's CSV reader and Parquet writer (one row, in memory)."""
        names = columns_of(DEFAULT_INCLUDE)
        row = b'w,2000-01-01 00:00:00,"[1]","{}",,200,1.5,1\n'
        await self._call(_encode_in_memory, row, names)

    def close(self) -> None:
        """Let the thread end (an export in progress finishes first)."""
        self._thread.shutdown(wait=False)

    async def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def write(
        self,
        conn: ExportConnection,
        query: str,
        args: list[Any],
        include: Sequence[str],
        writer: BlobWriter,
    ) -> int:
        """COPY the query's rows (CSV, no header) into ``writer`` as Parquet; the rows."""
        # asyncpg hands COPY data over in whole CopyData messages (as many as one read
        # brought), and PostgreSQL sends one per row: every chunk ends at a row boundary, so
        # blocks of chunks parse on their own. While a block is converted the COPY waits,
        # which bounds memory to about one block. The file is spooled locally (a Parquet
        # footer is written last), then streamed into storage.
        names = columns_of(include)
        schema = pa.schema([pa.field(name, _ARROW[name]) for name in names])
        rows = 0
        with tempfile.TemporaryFile() as spool:
            parquet = await self._call(_open_writer, spool, schema)
            pending = bytearray()

            async def convert() -> None:
                nonlocal rows, pending
                # Handed over as is (no copy): the next rows gather in a new buffer.
                block, pending = pending, bytearray()
                rows += await self._call(_append_block, parquet, block, names, schema)

            async def feed(chunk: bytes) -> None:
                pending.extend(chunk)
                if len(pending) >= self._block_bytes:
                    await convert()

            try:
                await conn.copy_from_query(query, *args, output=feed, format="csv", header=False)
                if pending:
                    await convert()
            finally:
                await self._call(_close_writer, parquet)
            spool.seek(0)
            while chunk := await asyncio.to_thread(spool.read, WRITE_BYTES):
                await writer.write(chunk)
        return rows


def _open_writer(sink: Any, schema: pa.Schema) -> pq.ParquetWriter:
    # Dictionary pages only where values repeat by nature (an endpoint has few versions and
    # statuses). Request ids and trace ids are all distinct: their dictionary holds every
    # value plus an index per row, and made the bench's file twice as large.
    dictionary = [name for name in ("version", "status") if name in schema.names]
    return pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=dictionary)


def _close_writer(parquet: pq.ParquetWriter) -> None:
    parquet.close()
    pa.default_memory_pool().release_unused()


def _encode_in_memory(block: bytes, names: Sequence[str]) -> int:
    """One block into an in-memory Parquet file (Arrow's warm-up); its rows."""
    schema = pa.schema([pa.field(name, _ARROW[name]) for name in names])
    parquet = _open_writer(pa.BufferOutputStream(), schema)
    try:
        return _append_block(parquet, block, names, schema)
    finally:
        _close_writer(parquet)


def _append_block(
    parquet: pq.ParquetWriter, block: bytes | bytearray, names: Sequence[str], schema: pa.Schema
) -> int:
    """Parse a block of whole CSV rows with Arrow and write it as one row group; its rows.

    Runs on the encoder's thread (Arrow's C++ parser and the Parquet encoder release the GIL).
    """
    # received_at comes as UTC wall time (see select_query) and is tagged UTC afterwards.
    column_types = {name: _ARROW[name] for name in names} | {"received_at": pa.timestamp("us")}
    table = pa_csv.read_csv(
        pa.py_buffer(block),
        read_options=pa_csv.ReadOptions(column_names=list(names), use_threads=False),
        # Error messages may hold line breaks; PostgreSQL quotes them.
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types=column_types,
            strings_can_be_null=True,
            # PostgreSQL writes NULL as an empty unquoted field and the empty string as "";
            # Arrow's default null spellings ("NA", "null", "N/A", ...) would turn such text
            # in a request id or an error into NULL where the CSV export keeps it.
            null_values=[""],
            quoted_strings_can_be_null=False,
        ),
    )
    parquet.write_table(table.cast(schema))
    rows: int = table.num_rows
    del table
    # Arrow's allocator keeps freed pages for reuse; handing them back keeps the
    # service's memory at its resting size between blocks and between exports.
    pa.default_memory_pool().release_unused()
    return rows
