"""Running feedback loops: one run per due time, however many replicas are up.

A run holds the loop's row lock (``SELECT ... FOR UPDATE``) from the moment it decides to
run until its transaction commits the new dataset version, the run record, the advanced
watermark and the next due time — together, or not at all. So:

- two replicas never run the same due time: the scheduler locks with ``SKIP LOCKED`` and
  re-checks that the loop is still due under the lock;
- a replica killed mid-run leaves nothing behind but an orphan blob: its transaction rolls
  back, the loop stays due, and the next run exports the same rows again;
- Stop (``UPDATE ... enabled = false``) waits for a run in progress, and every later run
  sees the loop stopped under the lock: no run starts after Stop returns.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from cormorant.common.datasets import DatasetStore, FileEntry
from cormorant.common.db.models import ExportFormat, RunStatus, RunTrigger, ScheduleKind
from cormorant.common.errors import Conflict
from cormorant.common.events import FeedbackRunFinished
from cormorant.feedback.export import (
    ParquetEncoder,
    Summary,
    Window,
    columns_of,
    summarize,
    write_rows,
)
from cormorant.feedback.schedule import stored_schedule

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Publish = Callable[[FeedbackRunFinished], Awaitable[None]]

MANIFEST_NAME = "manifest.json"


def utc_now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


def data_path(slug: str, fmt: ExportFormat) -> str:
    """Where a loop of endpoint ``slug`` writes its rows in the dataset."""
    return f"feedback/{slug}/predictions.{fmt.value}"


def manifest_path(slug: str) -> str:
    """Where a loop of endpoint ``slug`` writes the manifest of its rows."""
    return f"feedback/{slug}/{MANIFEST_NAME}"


class FeedbackMetrics:
    """Prometheus counters of feedback runs, on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "cormorant_feedback_runs",
            "Feedback runs finished, by trigger (schedule, manual) and status.",
            ["trigger", "status"],
            registry=registry,
        )
        self.rows = Counter(
            "cormorant_feedback_rows_exported",
            "Prediction rows exported into datasets by feedback runs.",
            registry=registry,
        )
        self.failures = Counter(
            "cormorant_feedback_run_failures",
            "Feedback runs that failed (their rows are exported by the next run).",
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class _Loop:
    id: uuid.UUID
    endpoint_id: uuid.UUID
    slug: str
    dataset: str
    kind: ScheduleKind
    expr: str | None
    fmt: ExportFormat
    include: list[str]
    watermark: str | None
    created_at: datetime
    next_run_at: datetime | None


_LOOP_COLUMNS = (
    "l.id, l.endpoint_id, e.slug, d.name AS dataset, l.schedule_kind AS kind,"
    " l.schedule_expr AS expr, l.format AS fmt, l.include, l.watermark, l.created_at,"
    " l.next_run_at"
)
_LOOP_FROM = (
    "FROM feedback_loops l JOIN endpoints e ON e.id = l.endpoint_id"
    " JOIN datasets d ON d.id = l.dataset_id"
)


class Runner:
    """Runs loops: when due (scheduler) or on request (``POST .../run``)."""

    def __init__(
        self,
        engine: AsyncEngine,
        store: DatasetStore,
        metrics: FeedbackMetrics,
        *,
        clock: Clock = utc_now,
        publish: Publish | None = None,
        encoder: ParquetEncoder,
    ) -> None:
        self._engine = engine
        # The caller owns the encoder's thread (the service warms it at start and closes it
        # at shutdown); a Runner that made its own would leak that thread.
        self._encoder = encoder
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._publish = publish

    async def due_loops(self, limit: int = 50) -> list[uuid.UUID]:
        """Loops due now, most overdue first (not locked: ``run_due`` decides)."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT id FROM feedback_loops WHERE enabled AND next_run_at <= :now"
                    " ORDER BY next_run_at LIMIT :limit"
                ),
                {"now": self._clock(), "limit": limit},
            )
            return [row.id for row in rows]

    async def next_due_at(self) -> datetime | None:
        """The earliest due time of an enabled loop."""
        async with self._engine.connect() as conn:
            due: datetime | None = await conn.scalar(
                text("SELECT min(next_run_at) FROM feedback_loops WHERE enabled")
            )
            return due

    async def run_due(self, loop_id: uuid.UUID) -> dict[str, Any] | None:
        """Run the loop if it is due and no other replica is running it; its run or None."""
        return await self._run(loop_id, RunTrigger.SCHEDULE)

    async def run_now(self, loop_id: uuid.UUID) -> dict[str, Any]:
        """Run the loop now (after a run in progress ends); ``Conflict`` if it is stopped."""
        run = await self._run(loop_id, RunTrigger.MANUAL)
        if run is None:
            raise Conflict(f"feedback loop {loop_id} is stopped; create a new loop to export again")
        return run

    async def _run(self, loop_id: uuid.UUID, trigger: RunTrigger) -> dict[str, Any] | None:
        scheduled = trigger is RunTrigger.SCHEDULE
        condition = " AND l.next_run_at <= :now" if scheduled else ""
        lock = "FOR UPDATE OF l SKIP LOCKED" if scheduled else "FOR UPDATE OF l"
        async with self._engine.connect() as conn, conn.begin():
            started = self._clock()
            clock_start = time.perf_counter()
            found = (
                await conn.execute(
                    text(
                        f"SELECT {_LOOP_COLUMNS} {_LOOP_FROM}"
                        f" WHERE l.id = :id AND l.enabled{condition} {lock}"
                    ),
                    {"id": loop_id, "now": started},
                )
            ).one_or_none()
            if found is None:
                return None
            loop = _Loop(
                found.id,
                found.endpoint_id,
                found.slug,
                found.dataset,
                ScheduleKind(found.kind),
                found.expr,
                ExportFormat(found.fmt),
                list(found.include),
                found.watermark,
                found.created_at,
                found.next_run_at,
            )
            error: str | None = None
            summary = Summary()
            version: int | None = None
            watermark = loop.watermark
            try:
                # A savepoint: a failed export is undone while the loop stays locked for
                # recording the failure.
                async with conn.begin_nested():
                    watermark, summary, version = await self._export(conn, loop, started)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:
                log.exception("feedback loop %s: run failed", loop.id)
                error = f"{type(exc).__name__}: {exc}"
            finished = self._clock()
            # A manual run keeps the schedule; a `now` loop has done its one scheduled run.
            next_run = None if loop.kind is ScheduleKind.NOW else loop.next_run_at
            if scheduled:
                next_run = stored_schedule(loop.kind, loop.expr).next_after(
                    started, loop.created_at
                )
            await conn.execute(
                text(
                    "UPDATE feedback_loops SET watermark = :watermark, last_run_at = :now,"
                    " next_run_at = :next WHERE id = :id"
                ),
                {"watermark": watermark, "now": finished, "next": next_run, "id": loop.id},
            )
            status = RunStatus.FAILED if error else RunStatus.SUCCEEDED
            run = (
                await conn.execute(
                    text(
                        "INSERT INTO feedback_runs (loop_id, trigger, status, rows,"
                        " first_received_at, last_received_at, dataset_version, duration_s,"
                        " error, started_at, finished_at) VALUES (:loop, :trigger, :status,"
                        " :rows, :first, :last, :version, :duration, :error, :started,"
                        " :finished) RETURNING *"
                    ),
                    {
                        "loop": loop.id,
                        "trigger": trigger.value,
                        "status": status.value,
                        "rows": summary.rows,
                        "first": summary.first_received_at,
                        "last": summary.last_received_at,
                        "version": version,
                        "duration": time.perf_counter() - clock_start,
                        "error": error,
                        "started": started,
                        "finished": finished,
                    },
                )
            ).one()
        record = dict(run._mapping)
        self._metrics.runs.labels(trigger.value, status.value).inc()
        self._metrics.rows.inc(summary.rows)
        if error:
            self._metrics.failures.inc()
        await self._announce(loop, record)
        return record

    async def _export(
        self, conn: AsyncConnection, loop: _Loop, started: datetime
    ) -> tuple[str, Summary, int | None]:
        """Export the rows since the loop's watermark; the new watermark, what was exported
        and the dataset version written (None when nothing was new)."""
        # Taken under the loop's lock: every export's snapshot is newer than the one before.
        upto: str = await conn.scalar(text("SELECT pg_current_snapshot()::text"))
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        window = Window(loop.endpoint_id, loop.watermark, upto)
        summary = await summarize(driver, window)
        if summary.rows == 0:
            return upto, summary, None
        async with self._store.blobs.writer(label="the feedback export") as writer:
            summary.rows = await write_rows(
                driver, window, loop.include, loop.fmt, writer, encoder=self._encoder
            )
            blob = await writer.commit()
        manifest = _manifest(loop, window, summary, started)
        manifest_blob = await self._store.blobs.put(manifest)
        # The session works in a savepoint of this transaction; its commit releases the
        # savepoint, and the version becomes visible only when the run commits.
        async with AsyncSession(bind=conn, join_transaction_mode="create_savepoint") as session:
            version = await self._store.add_version_in(
                session,
                loop.dataset,
                [
                    FileEntry(data_path(loop.slug, loop.fmt), blob.size, blob.sha256),
                    FileEntry(manifest_path(loop.slug), manifest_blob.size, manifest_blob.sha256),
                ],
            )
            await session.commit()
        return upto, summary, version.version

    async def _announce(self, loop: _Loop, run: dict[str, Any]) -> None:
        if self._publish is None:
            return
        event = FeedbackRunFinished(
            endpoint=loop.slug,
            loop_id=str(loop.id),
            run_id=str(run["id"]),
            dataset=loop.dataset,
            status=run["status"],
            rows=run["rows"],
            dataset_version=run["dataset_version"],
        )
        try:
            await self._publish(event)
        except Exception as exc:  # the run is committed; a lost event is only logged
            log.warning("feedback loop %s: FeedbackRunFinished not published: %s", loop.id, exc)


def _manifest(loop: _Loop, window: Window, summary: Summary, started: datetime) -> bytes:
    """The manifest stored next to the rows: what they are and where they came from."""
    body = {
        "endpoint": loop.slug,
        "loop_id": str(loop.id),
        "file": data_path(loop.slug, loop.fmt),
        "format": loop.fmt.value,
        "rows": summary.rows,
        "time_range": {
            "first_received_at": _iso(summary.first_received_at),
            "last_received_at": _iso(summary.last_received_at),
        },
        "endpoint_versions": summary.versions,
        "columns": columns_of(loop.include),
        "watermark": {"after": window.after, "upto": window.upto},
        "exported_at": _iso(started),
    }
    return json.dumps(body, indent=2).encode()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat()


async def run_scheduler(runner: Runner, *, poll_interval_s: float, wake: asyncio.Event) -> None:
    """Run due loops until cancelled; ``wake`` cuts a wait short (a loop was created)."""
    while True:
        due: list[uuid.UUID] = []
        try:
            due = await runner.due_loops()
        except (DBAPIError, OSError) as exc:
            log.warning("feedback scheduler: database unavailable, retrying: %s", exc)
        for loop_id in due:
            try:
                await runner.run_due(loop_id)
            except Exception:
                # One loop's trouble must not hold up the others' schedules.
                log.exception("feedback scheduler: loop %s could not be run; retrying", loop_id)
        wake.clear()
        try:
            async with asyncio.timeout(poll_interval_s):
                await wake.wait()
        except TimeoutError:
            pass
