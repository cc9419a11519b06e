"""Batch jobs: a CSV of a dataset through a batch endpoint, the output synced into a dataset.

A job checks everything before it is accepted (endpoint, dataset, output path, the whole CSV
parsed once, which also counts its rows), then runs in the background: it scales the endpoint
to ``replicas.max``, streams the CSV in chunks of up to ``batch_chunk_rows`` rows (pyarrow; the
first chunks smaller), sends each chunk to a ready replica's ``POST /predict/batch`` with at most
``batch_requests_per_replica`` chunks in flight per replica (as an Arrow IPC stream when its
columns are plain numbers, strings and booleans, else as JSON rows), and writes the input columns
plus ``prediction`` and ``error`` in input order into a blob of the dataset store, hashed as it
is written. Only a complete file is synced into the dataset, as a new version; a failed or
cancelled job writes nothing. After the last job of an endpoint its
replicas stay ``batch_idle_timeout_s`` seconds, then it scales back to 0.

A deployer that restarts marks the jobs it was running ``failed`` with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
import orjson
from pydantic import BaseModel, Field
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.datasets import DatasetStore, ResolvedFile, validate_path
from cormorant.common.datasets.blobs import BlobWriter
from cormorant.common.db.models import BatchJob, Dataset, JobStatus
from cormorant.common.errors import (
    BadRequest,
    Conflict,
    CormorantError,
    NotFound,
    ServiceUnavailable,
)
from cormorant.common.internal import InternalAuth
from cormorant.common.predictor.arrow_rows import (
    ARROW_STREAM,
    decode_results,
    encode_batch,
    prediction_cells,
    sendable,
)
from cormorant.common.predictor.rows import FIRST_ROW_HEADER, LOG_AS_HEADER
from cormorant.deployer.endpoints import EndpointNotFound
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.supervisor import EndpointRuntime, Supervisor

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

_BATCH_PATH = "/predict/batch"
_SEND_ATTEMPTS = 3
_PROGRESS_EVERY_S = 0.5
_READY_POLL_S = 0.05
_BLOCK_BYTES = 1 << 20
_CHUNK_BYTES = 2 << 20
_FIRST_CHUNK_ROWS = 1000
_MAX_WINDOW_MINUTES = 7 * 24 * 60
_STOP_REASON = "the deployer stopped while this job ran; nothing was written; submit it again"
_RESTART_REASON = (
    "the deployer restarted while this job ran; nothing was written to the dataset; "
    "submit the job again"
)


class BatchJobIn(BaseModel):
    """``POST /api/v1/endpoints/{slug}/batch-jobs``: the CSV to predict and where to put it."""

    input_file: str = Field(
        min_length=1, description="A dataset file: '<dataset>/<path>' or '<dataset>@<n>/<path>'."
    )
    output_file: str = Field(min_length=1, description="Relative path of the output CSV.")
    dataset: str = Field(min_length=1, description="Dataset the output CSV is synced into.")
    log_predictions: bool = Field(
        default=False,
        description="Also record every row in the prediction log (logs, charts, CSV export), "
        "with request ids '<job id>-<row number>'. Off by default: a job's rows are already in "
        "its output, and logging costs the machine ~15 µs of CPU per row.",
    )


class BatchJobOut(BaseModel):
    """A batch job, its progress and its figures."""

    id: str
    endpoint: str
    status: str
    input_file: str
    output_file: str
    dataset: str
    rows_total: int | None
    rows_done: int
    failures: int
    replicas: int | None
    output_dataset_version: int | None
    output_reference: str | None
    log_predictions: bool
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_s: float | None
    rows_per_s: float | None


class BatchJobList(BaseModel):
    """An endpoint's batch jobs, newest first."""

    jobs: list[BatchJobOut]


class BatchJobComparison(BaseModel):
    """Jobs' figures side by side, in the order asked."""

    jobs: list[BatchJobOut]
    metrics: dict[str, dict[str, float | int | None]]
    """Per figure (``rows_per_s``, ``duration_s``, ``failures``...), its value per job id."""
    custom: dict[str, dict[str, CustomMetric | None]] = Field(default_factory=dict)
    """Per custom metric asked for, what predict code logged during each job (by minute, from
    the prediction log: minutes shared with another job of the endpoint count for both)."""


class CustomMetric(BaseModel):
    """A custom metric over one job's minutes."""

    count: int
    avg: float | None
    min: float | None
    max: float | None


class JobNotFound(NotFound):
    """No such batch job on this endpoint."""

    def __init__(self, slug: str, job_id: str) -> None:
        super().__init__(
            f"no batch job {job_id!r} on endpoint {slug!r}; "
            f"list them with GET /api/v1/endpoints/{slug}/batch-jobs"
        )


class JobFailed(CormorantError):
    """A job could not finish; its message becomes the job's ``error``."""


@dataclass(slots=True)
class _Live:
    """A running job's counters, fresher than its row."""

    task: asyncio.Task[None] | None = None
    rows_done: int = 0
    failures: int = 0
    replicas_used: set[str] = field(default_factory=set)
    cancelled: bool = False
    """Cancelled by a user (not by the deployer stopping)."""
    marked: asyncio.Future[None] | None = None
    """The write of the job's ``running`` status and start time."""
    log_as: str | None = None
    """The request id prefix of the rows, when they are recorded in the prediction log."""


class BatchService:
    """Accepts, runs, tracks and cancels batch jobs."""

    def __init__(
        self,
        *,
        settings: DeployerSettings,
        sessions: async_sessionmaker[AsyncSession],
        supervisor: Supervisor,
        datasets: DatasetStore,
        http: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.supervisor = supervisor
        self.datasets = datasets
        self.http = http
        self._live: dict[uuid.UUID, _Live] = {}
        self._active: dict[uuid.UUID, int] = {}
        """Per endpoint id, its jobs running now."""
        self._idle: dict[uuid.UUID, asyncio.Task[None]] = {}

    async def recover(self) -> None:
        """Fail the jobs a previous deployer left unfinished; idle batch endpoints scale down."""
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
        for endpoint in list(self.supervisor.endpoints.values()):
            if endpoint.kind == "batch" and endpoint.desired > 0:
                self._schedule_idle(endpoint)

    # --- API ------------------------------------------------------------------------------

    async def create(self, slug: str, body: BatchJobIn) -> BatchJobOut:
        """Check the job's inputs, record it as ``pending`` and start it."""
        endpoint = self._endpoint(slug)
        if endpoint.kind != "batch":
            raise Conflict(
                f"endpoint {slug!r} is a {endpoint.kind} endpoint; batch jobs run on endpoints "
                "of kind 'batch' (create one with kind: batch)"
            )
        output_file = _check_output(body.output_file)
        dataset = await self.datasets.get_dataset(body.dataset)
        source = await self.datasets.resolve(body.input_file)
        rows_total = await asyncio.to_thread(self._scan, source)
        job = BatchJob(
            endpoint_id=endpoint.id,
            status=JobStatus.PENDING,
            input_file=source.reference,
            output_file=output_file,
            dataset_id=dataset.id,
            rows_total=rows_total,
            log_predictions=body.log_predictions,
        )
        async with self.sessions() as session, session.begin():
            session.add(job)
        live = _Live(log_as=str(job.id) if body.log_predictions else None)
        self._live[job.id] = live
        live.task = self.supervisor.spawn(
            self._run(job.id, endpoint, source, dataset.name, output_file),
            name=f"batch-job-{job.id}",
        )
        return await self.get(slug, str(job.id))

    async def run(self, slug: str, body: BatchJobIn) -> BatchJobOut:
        """Start a job and wait for it to end (for flow tasks); the job as it ended."""
        job = await self.create(slug, body)
        live = self._live.get(uuid.UUID(job.id))
        if live is not None and live.task is not None:
            await asyncio.wait([live.task])
        return await self.get(slug, job.id)

    async def jobs(self, slug: str) -> BatchJobList:
        """The endpoint's jobs, newest first."""
        endpoint = self._endpoint(slug)
        async with self.sessions() as session:
            rows = await session.execute(
                select(BatchJob, Dataset.name)
                .join(Dataset, Dataset.id == BatchJob.dataset_id)
                .where(BatchJob.endpoint_id == endpoint.id)
                .order_by(BatchJob.created_at.desc())
            )
            return BatchJobList(jobs=[self._view(slug, job, name) for job, name in rows])

    async def get(self, slug: str, job_id: str) -> BatchJobOut:
        """One job, with live progress while it runs."""
        endpoint = self._endpoint(slug)
        key = _job_uuid(slug, job_id)
        async with self.sessions() as session:
            found = (
                await session.execute(
                    select(BatchJob, Dataset.name)
                    .join(Dataset, Dataset.id == BatchJob.dataset_id)
                    .where(BatchJob.id == key, BatchJob.endpoint_id == endpoint.id)
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
        endpoint: EndpointRuntime,
        source: ResolvedFile,
        dataset: str,
        output_file: str,
    ) -> None:
        live = self._live[job_id]
        self._start_using(endpoint)
        stopping = False
        try:
            started = time.monotonic()
            # Written while the job starts its work: every later write of the row waits for it.
            live.marked = asyncio.ensure_future(
                self._update(job_id, status=JobStatus.RUNNING, started_at=_now())
            )
            await self.supervisor.scale(endpoint, endpoint.spec.replicas.max)
            await self._wait_ready(endpoint)
            ready = time.monotonic()
            # The output goes straight into the dataset's blob store, hashed as it is written;
            # it is kept only if every row was written (the writer drops it otherwise).
            label = f"file {output_file!r}"
            async with self.datasets.blobs.writer(label=label) as output:
                await self._predict_file(job_id, live, endpoint, source, output)
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
                stopping = True
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
            # A stopping deployer starts no idle timer: the next one's recover() does.
            self._stop_using(endpoint, schedule=not stopping)

    async def _wait_ready(self, endpoint: EndpointRuntime) -> None:
        deadline = time.monotonic() + self.settings.rollout_ready_timeout_s
        while not _ready_urls(endpoint):
            if endpoint.deleted:
                raise JobFailed(f"endpoint {endpoint.slug!r} was deleted")
            if endpoint.status == "failed":
                raise JobFailed(f"the endpoint's replicas failed to start: {endpoint.reason}")
            if time.monotonic() > deadline:
                raise JobFailed(
                    f"no replica of {endpoint.slug!r} became ready within "
                    f"{self.settings.rollout_ready_timeout_s:g} s"
                )
            await asyncio.sleep(_READY_POLL_S)

    async def _predict_file(
        self,
        job_id: uuid.UUID,
        live: _Live,
        endpoint: EndpointRuntime,
        source: ResolvedFile,
        output: BlobWriter,
    ) -> None:
        chunks = await asyncio.to_thread(self._chunks, source)
        # Imported by the first job: the deployer starts faster.
        import pyarrow as pa

        header = True
        in_flight: deque[asyncio.Task[tuple[pa.RecordBatch, pa.Array, pa.Array]]] = deque()
        limit = endpoint.spec.replicas.max * self.settings.batch_requests_per_replica
        turn = itertools.count()
        flushed = time.monotonic()
        writing: asyncio.Future[None] | None = None
        first_row = 1
        try:
            while True:
                batch = await asyncio.to_thread(next, chunks, None)
                if batch is not None:
                    sending = self._send(endpoint, batch, live, turn, first_row)
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
                    writing = asyncio.ensure_future(_write_csv(output, table, header=header))
                    header = False
                    live.rows_done += table.num_rows
                    live.failures += len(errors) - errors.null_count
                    if time.monotonic() - flushed > _PROGRESS_EVERY_S:
                        flushed = time.monotonic()
                        await self._marked(live)
                        await self._update(job_id, rows_done=live.rows_done,
                                           failures=live.failures,
                                           replicas=len(live.replicas_used))  # fmt: skip
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
        endpoint: EndpointRuntime,
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
            replicas = _ready_urls(endpoint)
            if not replicas:
                await self._wait_ready(endpoint)
                continue
            replica_id, url = replicas[next(turn) % len(replicas)]
            try:
                response = await self.http.post(
                    url + _BATCH_PATH,
                    content=body,
                    headers=headers,
                    timeout=endpoint.spec.timeout_s,
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
                    predictions, errors = _json_results(response.content, batch.num_rows)
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
        return _slices(handle, source.reference, self.settings.batch_chunk_rows)

    # --- bookkeeping ----------------------------------------------------------------------

    def _endpoint(self, slug: str) -> EndpointRuntime:
        for endpoint in self.supervisor.endpoints.values():
            if endpoint.slug == slug and not endpoint.deleted:
                return endpoint
        raise EndpointNotFound(slug)

    def _start_using(self, endpoint: EndpointRuntime) -> None:
        self._active[endpoint.id] = self._active.get(endpoint.id, 0) + 1
        idle = self._idle.pop(endpoint.id, None)
        if idle is not None:
            idle.cancel()

    def _stop_using(self, endpoint: EndpointRuntime, *, schedule: bool = True) -> None:
        left = self._active.get(endpoint.id, 1) - 1
        if left > 0:
            self._active[endpoint.id] = left
            return
        self._active.pop(endpoint.id, None)
        if schedule:
            self._schedule_idle(endpoint)

    def _schedule_idle(self, endpoint: EndpointRuntime) -> None:
        async def scale_down() -> None:
            await asyncio.sleep(self.settings.batch_idle_timeout_s)
            if self._active.get(endpoint.id):
                return
            self._idle.pop(endpoint.id, None)
            await self.supervisor.scale(endpoint, 0)

        previous = self._idle.pop(endpoint.id, None)
        if previous is not None:
            previous.cancel()
        self._idle[endpoint.id] = self.supervisor.spawn(
            scale_down(), name=f"batch-idle-{endpoint.slug}"
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


def _slices(handle: IO[bytes], reference: str, rows: int) -> Generator[pa.RecordBatch, None, None]:
    """The CSV's record batches cut to at most ``rows`` rows; malformed → ``BadRequest``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with handle:
        try:
            reader = pacsv.open_csv(handle, read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES))
            # The first chunks are small and double: replicas start on the first rows sooner.
            ramp = _FIRST_CHUNK_ROWS
            for batch in reader:
                # Wide rows get smaller chunks, so a request stays well under the worker's
                # body limit (JSON is about twice the size of the Arrow columns).
                per_row = max(batch.nbytes // max(batch.num_rows, 1), 1)
                most = max(1, min(rows, _CHUNK_BYTES // per_row))
                start = 0
                while start < batch.num_rows:
                    chunk = batch.slice(start, min(most, ramp))
                    ramp = min(ramp * 2, rows)
                    start += chunk.num_rows
                    yield chunk
        except pa.ArrowInvalid as exc:
            raise BadRequest(
                f"{reference} is not a valid CSV file ({exc}); give a header line and rows "
                "with the same number of columns"
            ) from exc


async def _write_csv(output: BlobWriter, table: pa.RecordBatch, *, header: bool) -> None:
    """Append ``table``'s rows to the output as CSV (with the header line if ``header``)."""

    def encode() -> bytes:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        sink = pa.BufferOutputStream()
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=header))
        data: bytes = sink.getvalue().to_pybytes()
        return data

    await output.write(await asyncio.to_thread(encode))


def _json_results(content: bytes, rows: int) -> tuple[pa.Array, pa.Array]:
    """A JSON answer's results as the output's ``prediction`` cells and ``error`` column."""
    import pyarrow as pa

    try:
        results: list[dict[str, Any]] = orjson.loads(content)["results"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"the answer is not JSON with 'results' ({exc})") from exc
    if len(results) != rows:
        raise ValueError(f"the answer has {len(results)} results for {rows} rows")
    predictions = prediction_cells([r.get("prediction") for r in results])
    return predictions, pa.array([r.get("error") for r in results], pa.string())


def _check_output(path: str) -> str:
    """``path`` if it is a relative path that stays inside a directory (``BadRequest`` else)."""
    try:
        validate_path(path)
    except BadRequest as exc:
        raise BadRequest(f"output_file: {exc.message}") from exc
    # A symlink cannot exist inside a dataset (its files are content-addressed blobs); this
    # refuses the path anyway if one resolves out of a fresh directory.
    with tempfile.TemporaryDirectory() as root:
        base = Path(root).resolve()
        if not (base / path).resolve().is_relative_to(base):
            raise BadRequest(f"output_file {path!r} escapes the dataset; give a relative path")
    return path


def _ready_urls(endpoint: EndpointRuntime) -> list[tuple[str, str]]:
    return [
        (str(r.id), r.url)
        for r in endpoint.replicas.values()
        if r.state == "ready" and r.url and not r.stop_requested.is_set()
    ]


def _job_uuid(slug: str, job_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(job_id)
    except ValueError:
        raise JobNotFound(slug, job_id) from None


def _now() -> datetime:
    return datetime.now(UTC)
