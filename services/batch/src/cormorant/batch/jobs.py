"""Batch jobs: a CSV of a dataset through a batch endpoint, the output synced into a dataset.

A job checks everything before it is accepted (endpoint, dataset, output path, the whole CSV
parsed once, which also counts its rows), then runs in the background: it holds its endpoint
(``capacity.py``: the deployer scales it to ``replicas.max``), streams the CSV in chunks of up
to ``chunk_rows`` rows (pyarrow; the first chunks smaller), sends each chunk to a ready
replica's ``POST /predict/batch`` with at most ``requests_per_replica`` chunks in flight per
replica (as an Arrow IPC stream when its columns are plain numbers, strings and booleans, else
as JSON rows), and writes the input columns plus ``prediction`` and ``error`` in input order
into a blob of the dataset store, hashed as it is written. Only a complete file is synced into
the dataset, as a new version; a failed or cancelled job writes nothing. Every change of a
job's status or progress is also published as ``BatchJobChanged``.

A service that restarts marks the jobs it was running ``failed`` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.batch.capacity import Capacity, Hold
from cormorant.batch.csvfiles import check_output, json_results, slices, write_csv
from cormorant.batch.schemas import (
    BatchJobComparison,
    BatchJobIn,
    BatchJobList,
    BatchJobOut,
    CustomMetric,
)
from cormorant.batch.settings import BatchSettings
from cormorant.common.bus import BatchedPublisher
from cormorant.common.datasets import DatasetStore, ResolvedFile
from cormorant.common.datasets.blobs import BlobWriter
from cormorant.common.db.models import BatchJob, Dataset, Endpoint, JobStatus
from cormorant.common.errors import (
    BadRequest,
    Conflict,
    CormorantError,
    NotFound,
    ServiceUnavailable,
)
from cormorant.common.events import BatchJobChanged, BatchJobStatus
from cormorant.common.internal import REPLICA_KEY_HEADER, InternalAuth, ReplicaKeys
from cormorant.common.predictor.arrow_rows import (
    ARROW_STREAM,
    decode_results,
    encode_batch,
    sendable,
)
from cormorant.common.predictor.rows import FIRST_ROW_HEADER, LOG_AS_HEADER

if TYPE_CHECKING:
    import pyarrow as pa


log = logging.getLogger(__name__)

_BATCH_PATH = "/predict/batch"
_SEND_ATTEMPTS = 3
_PROGRESS_EVERY_S = 0.5
_MAX_WINDOW_MINUTES = 7 * 24 * 60
_STOP_REASON = "the batch service stopped while this job ran; nothing was written; submit it again"
_RESTART_REASON = (
    "the batch service restarted while this job ran; nothing was written to the dataset; "
    "submit the job again"
)
_EVENT_STATUS: dict[JobStatus, BatchJobStatus] = {
    JobStatus.PENDING: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELLED: "cancelled",
}


class EndpointNotFound(NotFound):
    """No live endpoint has this slug."""

    def __init__(self, slug: str) -> None:
        super().__init__(
            f"endpoint {slug!r} not found; GET /api/v1/endpoints lists the endpoints",
            details={"slug": slug},
        )


class JobNotFound(NotFound):
    """No such batch job on this endpoint."""

    def __init__(self, slug: str, job_id: str) -> None:
        super().__init__(
            f"no batch job {job_id!r} on endpoint {slug!r}; "
            f"list them with GET /api/v1/endpoints/{slug}/batch-jobs"
        )


class JobFailed(CormorantError):
    """A job could not finish; its message becomes the job's ``error``."""


@dataclass(frozen=True, slots=True)
class Target:
    """The endpoint a job runs on, as its stored spec says."""

    id: uuid.UUID
    slug: str
    kind: str
    max_replicas: int
    timeout_s: float


@dataclass(slots=True)
class _Live:
    """A running job's counters, fresher than its row."""

    slug: str
    rows_total: int
    task: asyncio.Task[None] | None = None
    rows_done: int = 0
    failures: int = 0
    replicas_used: set[str] = field(default_factory=set)
    cancelled: bool = False
    """Cancelled by a user (not by the service stopping)."""
    marked: asyncio.Future[None] | None = None
    """The write of the job's ``running`` status and start time."""
    log_as: str | None = None
    """The request id prefix of the rows, when they are recorded in the prediction log."""


class BatchService:
    """Accepts, runs, tracks and cancels batch jobs."""

    def __init__(
        self,
        *,
        settings: BatchSettings,
        sessions: async_sessionmaker[AsyncSession],
        capacity: Capacity,
        datasets: DatasetStore,
        http: httpx.AsyncClient,
        publisher: BatchedPublisher,
    ) -> None:
        self.settings = settings
        self.replica_keys = ReplicaKeys(settings.internal_secret)
        """Each replica's key, sent with every chunk (its port refuses calls without it)."""
        self.sessions = sessions
        self.capacity = capacity
        self.datasets = datasets
        self.http = http
        self.publisher = publisher
        self._live: dict[uuid.UUID, _Live] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def recover(self) -> None:
        """Fail the jobs a previous service left unfinished."""
        async with self.sessions() as session, session.begin():
            result = await session.execute(
                update(BatchJob)
                .where(BatchJob.status.in_([JobStatus.PENDING, JobStatus.RUNNING]))
                .values(status=JobStatus.FAILED, error=_RESTART_REASON, finished_at=_now())
                .returning(BatchJob.id)
            )
            failed = list(result.scalars())
        if failed:
            log.warning("marked %d unfinished batch job(s) failed after a restart", len(failed))

    async def close(self) -> None:
        """Stop every running job (each is marked failed: nothing was written)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # --- API ------------------------------------------------------------------------------

    async def create(self, slug: str, body: BatchJobIn) -> BatchJobOut:
        """Check the job's inputs, record it as ``pending`` and start it."""
        target = await self._endpoint(slug)
        if target.kind != "batch":
            raise Conflict(
                f"endpoint {slug!r} is a {target.kind} endpoint; batch jobs run on endpoints "
                "of kind 'batch' (create one with kind: batch)"
            )
        output_file = check_output(body.output_file)
        dataset = await self.datasets.get_dataset(body.dataset)
        source = await self.datasets.resolve(body.input_file)
        rows_total = await asyncio.to_thread(self._scan, source)
        job = BatchJob(
            endpoint_id=target.id,
            status=JobStatus.PENDING,
            input_file=source.reference,
            output_file=output_file,
            dataset_id=dataset.id,
            rows_total=rows_total,
            log_predictions=body.log_predictions,
        )
        async with self.sessions() as session, session.begin():
            session.add(job)
        live = _Live(slug, rows_total, log_as=str(job.id) if body.log_predictions else None)
        self._live[job.id] = live
        self._publish(job.id, live, JobStatus.PENDING)
        live.task = self._spawn(
            self._run(job.id, target, source, dataset.name, output_file),
            name=f"batch-job-{job.id}",
        )
        return await self.get(slug, str(job.id))

    async def jobs(self, slug: str) -> BatchJobList:
        """The endpoint's jobs, newest first."""
        target = await self._endpoint(slug)
        async with self.sessions() as session:
            rows = await session.execute(
                select(BatchJob, Dataset.name)
                .join(Dataset, Dataset.id == BatchJob.dataset_id)
                .where(BatchJob.endpoint_id == target.id)
                .order_by(BatchJob.created_at.desc())
            )
            return BatchJobList(jobs=[self._view(slug, job, name) for job, name in rows])

    async def get(self, slug: str, job_id: str) -> BatchJobOut:
        """One job, with live progress while it runs."""
        target = await self._endpoint(slug)
        key = _job_uuid(slug, job_id)
        async with self.sessions() as session:
            found = (
                await session.execute(
                    select(BatchJob, Dataset.name)
                    .join(Dataset, Dataset.id == BatchJob.dataset_id)
                    .where(BatchJob.id == key, BatchJob.endpoint_id == target.id)
                )
            ).first()
        if found is None:
            raise JobNotFound(slug, job_id)
        return self._view(slug, found[0], found[1])

    async def cancel(self, slug: str, job_id: str) -> BatchJobOut:
        """Stop a pending or running job; nothing is written. A finished job is left as is."""
        job = await self.get(slug, job_id)
        key = uuid.UUID(job.id)
        live = self._live.get(key)
        if live is not None and live.task is not None and not live.task.done():
            live.cancelled = True
            live.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([live.task])
        elif job.status in (JobStatus.PENDING, JobStatus.RUNNING):
            await self._finish(key, JobStatus.CANCELLED, error="cancelled")
        return await self.get(slug, job_id)

    async def compare(
        self, slug: str, ids: list[str], custom: list[str] | None = None
    ) -> BatchJobComparison:
        """The jobs' figures side by side, with the custom metrics named in ``custom``."""
        if not ids:
            raise BadRequest("give the jobs to compare, e.g. ?ids=ID1,ID2")
        jobs = [await self.get(slug, job_id) for job_id in ids]
        figures = ("rows_total", "rows_done", "failures", "replicas", "duration_s", "rows_per_s")
        metrics: dict[str, dict[str, float | int | None]] = {
            name: {job.id: getattr(job, name) for job in jobs} for name in figures
        }
        metrics["failure_rate"] = {
            job.id: (job.failures / job.rows_done) if job.rows_done else None for job in jobs
        }
        logged = {key: {job.id: await self._custom(slug, key, job) for job in jobs}
                  for key in custom or []}  # fmt: skip
        return BatchJobComparison(jobs=jobs, metrics=metrics, custom=logged)

    async def _custom(self, slug: str, key: str, job: BatchJobOut) -> CustomMetric | None:
        """``key`` as logged in the minutes ``job`` ran, from the prediction log's charts."""
        if job.started_at is None:
            return None
        first = job.started_at.replace(second=0, microsecond=0)
        last = job.finished_at or _now()
        minutes = min(int((_now() - first).total_seconds() // 60) + 2, _MAX_WINDOW_MINUTES)
        try:
            response = await self.http.get(
                f"{self.settings.predictlog_url.rstrip('/')}/api/v1/endpoints/{slug}/charts",
                params={"series": key, "window": f"{minutes}m"},
                timeout=10.0,
                auth=InternalAuth(self.settings.internal_secret),
            )
            response.raise_for_status()
            points = response.json()["points"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise ServiceUnavailable(
                f"the prediction log could not be read for metric {key!r} ({exc}); retry"
            ) from exc
        count, total = 0, 0.0
        low: float | None = None
        high: float | None = None
        for point in points:
            moment = datetime.fromisoformat(point["t"].replace("Z", "+00:00"))
            if not first <= moment <= last or not point.get("count"):
                continue
            count += point["count"]
            total += point["avg"] * point["count"]
            low = point["min"] if low is None else min(low, point["min"])
            high = point["max"] if high is None else max(high, point["max"])
        if count == 0:
            return CustomMetric(count=0, avg=None, min=None, max=None)
        return CustomMetric(count=count, avg=total / count, min=low, max=high)

    # --- the job --------------------------------------------------------------------------

    async def _run(
        self,
        job_id: uuid.UUID,
        target: Target,
        source: ResolvedFile,
        dataset: str,
        output_file: str,
    ) -> None:
        live = self._live[job_id]
        try:
            started = time.monotonic()
            # Written while the job starts its work: every later write of the row waits for it.
            live.marked = asyncio.ensure_future(
                self._update(job_id, status=JobStatus.RUNNING, started_at=_now())
            )
            self._publish(job_id, live, JobStatus.RUNNING)
            async with self.capacity.hold(target.slug, target.max_replicas) as held:
                await held.wait_ready(self.settings.ready_timeout_s)
                ready = time.monotonic()
                # The output goes straight into the dataset's blob store, hashed as it is
                # written; it is kept only if every row was written (the writer drops it else).
                label = f"file {output_file!r}"
                async with self.datasets.blobs.writer(label=label) as output:
                    await self._predict_file(job_id, live, target, held, source, output)
                    blob = await output.commit()
            predicted = time.monotonic()
            await self._marked(live)
            version = await self.datasets.add_files(dataset, {output_file: blob})
            await self._finish(
                job_id, JobStatus.SUCCEEDED, live=live, output_dataset_version=version.version
            )
            log.info(
                "batch job %s succeeded: %d rows, %d failed; replicas ready after %.3f s, "
                "rows predicted and written in %.3f s, synced after %.3f s",
                job_id, live.rows_done, live.failures, ready - started, predicted - ready,
                time.monotonic() - started,
            )  # fmt: skip
        except asyncio.CancelledError:
            if live.cancelled:
                outcome = self._finish(job_id, JobStatus.CANCELLED, live=live, error="cancelled")
            else:
                outcome = self._finish(job_id, JobStatus.FAILED, live=live, error=_STOP_REASON)
            with contextlib.suppress(Exception):
                await asyncio.shield(outcome)
            raise
        except CormorantError as exc:
            log.warning("batch job %s failed: %s", job_id, exc.message)
            await self._finish(job_id, JobStatus.FAILED, live=live, error=exc.message)
        except Exception as exc:
            log.exception("batch job %s failed unexpectedly", job_id)
            await self._finish(
                job_id, JobStatus.FAILED, live=live, error=f"{type(exc).__name__}: {exc}"
            )
        finally:
            self._live.pop(job_id, None)

    async def _predict_file(
        self,
        job_id: uuid.UUID,
        live: _Live,
        target: Target,
        held: Hold,
        source: ResolvedFile,
        output: BlobWriter,
    ) -> None:
        chunks = await asyncio.to_thread(self._chunks, source)
        # Imported by the first job: the service starts faster.
        import pyarrow as pa

        header = True
        in_flight: deque[asyncio.Task[tuple[pa.RecordBatch, pa.Array, pa.Array]]] = deque()
        limit = target.max_replicas * self.settings.requests_per_replica
        turn = itertools.count()
        flushed = time.monotonic()
        writing: asyncio.Future[None] | None = None
        first_row = 1
        try:
            while True:
                batch = await asyncio.to_thread(next, chunks, None)
                if batch is not None:
                    sending = self._send(target, held, batch, live, turn, first_row)
                    in_flight.append(asyncio.create_task(sending))
                    first_row += batch.num_rows
                if in_flight and (batch is None or len(in_flight) >= limit):
                    done_batch, predictions, errors = await in_flight.popleft()
                    table = pa.RecordBatch.from_arrays(
                        [*done_batch.columns, predictions, errors],
                        names=[*done_batch.schema.names, "prediction", "error"],
                    )
                    # Written (CSV made in a thread) while the loop reads and sends the next
                    # chunks; one write at a time keeps the rows in order.
                    if writing is not None:
                        await writing
                    writing = asyncio.ensure_future(write_csv(output, table, header=header))
                    header = False
                    live.rows_done += table.num_rows
                    live.failures += len(errors) - errors.null_count
                    if time.monotonic() - flushed > _PROGRESS_EVERY_S:
                        flushed = time.monotonic()
                        await self._marked(live)
                        await self._update(job_id, rows_done=live.rows_done,
                                           failures=live.failures,
                                           replicas=len(live.replicas_used))  # fmt: skip
                        self._publish(job_id, live, JobStatus.RUNNING)
                if batch is None and not in_flight:
                    break
            if writing is not None:
                await writing
        finally:
            for task in in_flight:
                task.cancel()
            if writing is not None:
                # A write thread cannot be stopped: the output is dropped once it has returned.
                with contextlib.suppress(BaseException):
                    await asyncio.shield(writing)
            chunks.close()
        if header:
            raise JobFailed("the input CSV has no rows")

    async def _send(
        self,
        target: Target,
        held: Hold,
        batch: pa.RecordBatch,
        live: _Live,
        turn: Iterator[int],
        first_row: int,
    ) -> tuple[pa.RecordBatch, pa.Array, pa.Array]:
        # Plain columns go as Arrow (no per-row work here); other types as JSON rows, which
        # encode them as they always have.
        arrow = sendable(batch.schema)
        if arrow:
            body = encode_batch(batch)
            media = ARROW_STREAM
        else:
            columns = [column.to_pylist() for column in batch.columns]
            body = orjson.dumps({"rows": list(zip(*columns, strict=True))})
            media = "application/json"
        headers = {"Content-Type": media, "Accept": media}
        if live.log_as is not None:
            headers[LOG_AS_HEADER] = live.log_as
            headers[FIRST_ROW_HEADER] = str(first_row)
        problem = "no replica is ready"
        for _ in range(_SEND_ATTEMPTS):
            replicas = held.view.urls()
            if not replicas:
                await held.wait_ready(self.settings.ready_timeout_s)
                continue
            replica_id, url = replicas[next(turn) % len(replicas)]
            key = self.replica_keys(replica_id)
            if key is not None:
                headers[REPLICA_KEY_HEADER] = key
            try:
                response = await self.http.post(
                    url + _BATCH_PATH, content=body, headers=headers, timeout=target.timeout_s
                )
            except httpx.HTTPError as exc:
                problem = f"replica {replica_id} did not answer ({type(exc).__name__}: {exc})"
                continue
            if response.status_code != 200:
                problem = f"replica {replica_id} answered {response.status_code}: {response.text}"
                if response.status_code < 500:
                    break
                continue
            live.replicas_used.add(replica_id)
            try:
                if arrow:
                    predictions, errors = decode_results(response.content, batch.num_rows)
                else:
                    predictions, errors = json_results(response.content, batch.num_rows)
            except ValueError as exc:
                raise JobFailed(f"replica {replica_id} answered a chunk wrongly: {exc}") from exc
            return batch, predictions, errors
        raise JobFailed(f"a chunk of {batch.num_rows} rows could not be predicted: {problem}")

    # --- CSV ------------------------------------------------------------------------------

    def _scan(self, source: ResolvedFile) -> int:
        """Parse the whole CSV once (malformed → ``BadRequest``); its number of rows."""
        rows = 0
        chunks = self._chunks(source)
        try:
            for batch in chunks:
                rows += batch.num_rows
        finally:
            chunks.close()
        if rows == 0:
            raise BadRequest(f"{source.reference} has no rows; give a CSV with a header and rows")
        return rows

    def _chunks(self, source: ResolvedFile) -> Generator[pa.RecordBatch, None, None]:
        handle = self.datasets.open_sync(source)
        return slices(handle, source.reference, self.settings.chunk_rows)

    # --- bookkeeping ----------------------------------------------------------------------

    async def _endpoint(self, slug: str) -> Target:
        async with self.sessions() as session:
            row = await session.scalar(
                select(Endpoint).where(Endpoint.slug == slug, Endpoint.deleted_at.is_(None))
            )
        if row is None:
            raise EndpointNotFound(slug)
        replicas = row.spec.get("replicas") or {}
        return Target(
            id=row.id,
            slug=row.slug,
            kind=str(row.kind),
            max_replicas=int(replicas.get("max", 1)),
            timeout_s=float(row.spec.get("timeout_s") or 60.0),
        )

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _publish(self, job_id: uuid.UUID, live: _Live, status: JobStatus) -> None:
        self.publisher.publish(
            BatchJobChanged(
                endpoint=live.slug,
                job_id=str(job_id),
                status=_EVENT_STATUS[status],
                rows_done=live.rows_done,
                rows_total=live.rows_total,
                failures=live.failures,
            )
        )

    async def _update(self, job_id: uuid.UUID, **values: Any) -> None:
        async with self.sessions() as session, session.begin():
            await session.execute(update(BatchJob).where(BatchJob.id == job_id).values(**values))

    async def _marked(self, live: _Live) -> None:
        """Wait until the job's row says ``running`` (an error writing it is raised here)."""
        if live.marked is not None:
            await live.marked

    async def _finish(
        self, job_id: uuid.UUID, status: JobStatus, *, live: _Live | None = None, **values: Any
    ) -> None:
        if live is not None:
            with contextlib.suppress(Exception):
                await self._marked(live)
            values |= {"rows_done": live.rows_done, "failures": live.failures,
                       "replicas": len(live.replicas_used)}  # fmt: skip
        await self._update(job_id, status=status, finished_at=_now(), **values)
        if live is not None:
            self._publish(job_id, live, status)

    def _view(self, slug: str, job: BatchJob, dataset: str) -> BatchJobOut:
        live = self._live.get(job.id)
        rows_done = live.rows_done if live is not None else job.rows_done
        failures = live.failures if live is not None else job.failures
        replicas = len(live.replicas_used) if live is not None else job.replicas
        duration: float | None = None
        if job.started_at is not None:
            end = job.finished_at or _now()
            duration = max((end - job.started_at).total_seconds(), 0.0)
        rate = rows_done / duration if duration else None
        version = job.output_dataset_version
        return BatchJobOut(
            id=str(job.id),
            endpoint=slug,
            status=str(job.status),
            input_file=job.input_file,
            output_file=job.output_file,
            dataset=dataset,
            rows_total=job.rows_total,
            rows_done=rows_done,
            failures=failures,
            replicas=replicas,
            output_dataset_version=version,
            output_reference=f"{dataset}@{version}/{job.output_file}" if version else None,
            log_predictions=job.log_predictions,
            error=job.error,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            duration_s=duration,
            rows_per_s=rate,
        )


def _job_uuid(slug: str, job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFound(slug, job_id) from None


def _now() -> datetime:
    return datetime.now(UTC)
