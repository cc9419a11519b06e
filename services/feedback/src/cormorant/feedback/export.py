"""One feedback export: the predictions between two snapshots, streamed into a blob.

Which rows: those of the endpoint whose storing transaction (``ingest_xid``) the previous
run's snapshot did not see and this run's snapshot does. Snapshots only ever grow, so the
runs of a loop partition the rows: none twice, none missed, whatever order ingest
transactions commit in and whenever a row was received.

CSV is PostgreSQL's own ``COPY (SELECT ...) TO STDOUT`` output passed straight to storage;
Parquet reads a server-side cursor in batches that become row groups. Either way memory
holds one buffer or one batch, whatever the export's size.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import pyarrow as pa
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
}

WRITE_BYTES = 1 << 20
"""Parquet bytes gathered before they are handed to storage."""

PARQUET_BATCH_ROWS = 20_000
"""Rows per cursor fetch and per Parquet row group."""


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

    def cursor(self, query: str, *args: Any, prefetch: int | None = None) -> Any:
        """A server-side cursor."""
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


def select_query(window: Window, include: Sequence[str]) -> tuple[str, list[Any]]:
    """The SELECT of the window's rows with the exported columns."""
    where, args = window.where()
    listed = ", ".join(f"{_SQL[c]} AS {c}" for c in columns_of(include))
    return f"SELECT {listed} FROM predictions p WHERE {where}", args


async def write_rows(
    conn: ExportConnection,
    window: Window,
    include: Sequence[str],
    fmt: ExportFormat,
    writer: BlobWriter,
) -> int:
    """Stream the window's rows into ``writer`` as ``fmt``; the number of rows written."""
    query, args = select_query(window, include)
    if fmt is ExportFormat.CSV:
        return await _write_csv(conn, query, args, writer)
    return await _write_parquet(conn, query, args, include, writer)


async def _write_csv(
    conn: ExportConnection, query: str, args: list[Any], writer: BlobWriter
) -> int:
    # The writer gathers chunks up to 1 MiB before each (threaded) write to storage.
    status = await conn.copy_from_query(
        query, *args, output=writer.write, format="csv", header=True
    )
    return int(status.rsplit(" ", 1)[-1])


class _Sink(io.RawIOBase):
    """A write-only file for pyarrow that keeps what it is given until drained."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.position = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.buffer.extend(view)
        self.position += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self.position

    def drain(self) -> bytes:
        taken = bytes(self.buffer)
        self.buffer.clear()
        return taken


async def _write_parquet(
    conn: ExportConnection,
    query: str,
    args: list[Any],
    include: Sequence[str],
    writer: BlobWriter,
) -> int:
    names = columns_of(include)
    schema = pa.schema([pa.field(name, _ARROW[name]) for name in names])
    sink = _Sink()
    rows = 0
    with pq.ParquetWriter(sink, schema, compression="zstd") as parquet:
        cursor = await conn.cursor(query, *args)
        while True:
            batch = await cursor.fetch(PARQUET_BATCH_ROWS)
            if not batch:
                break
            rows += len(batch)
            columns = list(zip(*batch, strict=True))
            table = pa.Table.from_arrays(
                [pa.array(columns[i], type=_ARROW[name]) for i, name in enumerate(names)],
                schema=schema,
            )
            parquet.write_table(table)
            if len(sink.buffer) >= WRITE_BYTES:
                await writer.write(sink.drain())
        if rows == 0:
            parquet.write_table(schema.empty_table())
    await writer.write(sink.drain())
    return rows
