"""Flows and their runs (tables ``flows`` and ``flow_runs``): stored, started, recorded.

A run copies the flow's directory into a private workspace, executes the tasks in order,
saves each task's status, output tail and duration after each step, skips the rest after a
failure, and publishes ``FlowRunChanged``. Runs this service was executing when it stopped
are marked failed at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.alerts.flows.exec import ExecFailed, ExecLimits, private_workspace
from cormorant.alerts.flows.spec import (
    FlowIn,
    FlowList,
    FlowOut,
    RunList,
    RunOut,
    TaskOut,
    parse_flow,
    stored_tasks,
)
from cormorant.alerts.flows.tasks import FlowTask, TaskContext, TaskFailed
from cormorant.common.bus import BatchedPublisher
from cormorant.common.db.models import Flow, FlowRun, JobStatus
from cormorant.common.errors import NotFound
from cormorant.common.events import FlowRunChanged, FlowRunStatus
from cormorant.sdk import Client

log = logging.getLogger(__name__)

_RESTART_REASON = "the alerts service stopped while this run was executing; start it again"


class FlowService:
    """Flows and their runs, independent of HTTP."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        publisher: BatchedPublisher,
        client: Callable[[], Client],
        limits: ExecLimits,
        workspace_max_bytes: int,
    ) -> None:
        self.sessions = sessions
        self.publisher = publisher
        self.client = client
        self.limits = limits
        self.workspace_max_bytes = workspace_max_bytes
        self._tasks: set[asyncio.Task[None]] = set()

    async def recover(self) -> None:
        """Fail the runs a previous start of the service left executing."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(FlowRun)
                .where(FlowRun.status == JobStatus.RUNNING)
                .values(status=JobStatus.FAILED, error=_RESTART_REASON, finished_at=_now())
            )

    async def close(self) -> None:
        """Stop every run in progress (their processes are killed)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def save(self, body: FlowIn) -> FlowOut:
        """Store the flow under its name (replacing an earlier one of that name)."""
        name, spec, _ = parse_flow(body)
        async with self.sessions() as session, session.begin():
            statement = insert(Flow).values(id=uuid.uuid4(), name=name, spec=spec, source=body.yaml)
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=[Flow.name],
                    set_={"spec": spec, "source": body.yaml, "updated_at": _now()},
                )
            )
        return await self.get(name)

    async def list_flows(self) -> FlowList:
        """Every flow, by name."""
        async with self.sessions() as session:
            rows = await session.scalars(select(Flow).order_by(Flow.name))
            return FlowList(flows=[_flow_out(row) for row in rows])

    async def get(self, name: str) -> FlowOut:
        """The flow ``name``."""
        async with self.sessions() as session:
            return _flow_out(await _find(session, name))

    async def start(self, name: str) -> RunOut:
        """A new run of the flow, started in the background."""
        async with self.sessions() as session, session.begin():
            flow = await _find(session, name)
            tasks = stored_tasks(flow.spec)
            run_id = uuid.uuid4()
            session.add(
                FlowRun(
                    id=run_id,
                    flow_id=flow.id,
                    status=JobStatus.RUNNING,
                    started_at=_now(),
                    tasks=[_pending(t).model_dump() for t in tasks],
                )
            )
            directory = Path(flow.spec["directory"])
        self._publish(name, run_id, None, "running")
        self._spawn(self._run(name, run_id, directory, tasks), name=f"flow-{name}-{run_id}")
        return await self.run(name, str(run_id))

    async def runs(self, name: str, limit: int = 20) -> RunList:
        """The flow's latest runs, newest first."""
        async with self.sessions() as session:
            flow = await _find(session, name)
            rows = await session.scalars(
                select(FlowRun)
                .where(FlowRun.flow_id == flow.id)
                .order_by(FlowRun.created_at.desc())
                .limit(limit)
            )
            return RunList(runs=[_run_out(name, row) for row in rows])

    async def run(self, name: str, run_id: str) -> RunOut:
        """One run of the flow."""
        try:
            key = uuid.UUID(run_id)
        except ValueError as exc:
            raise NotFound(f"no run {run_id!r} of flow {name!r}") from exc
        async with self.sessions() as session:
            flow = await _find(session, name)
            row = await session.get(FlowRun, key)
            if row is None or row.flow_id != flow.id:
                raise NotFound(f"no run {run_id!r} of flow {name!r}; see GET .../runs")
            return _run_out(name, row)

    async def _run(
        self, name: str, run_id: uuid.UUID, directory: Path, tasks: list[FlowTask]
    ) -> None:
        records = [_pending(t) for t in tasks]
        error: str | None = None
        try:
            workspace = private_workspace(
                directory, max_bytes=self.workspace_max_bytes, owner=self.limits.identity
            )
            # Copied and removed in a thread: a large directory must not stall the service.
            path = await asyncio.to_thread(workspace.__enter__)
            try:
                with self.client() as client:
                    ctx = TaskContext(workspace=path, client=client, limits=self.limits)
                    error = await self._tasks_in_order(name, run_id, tasks, records, ctx)
            finally:
                await asyncio.shield(asyncio.to_thread(workspace.__exit__, None, None, None))
        except ExecFailed as exc:
            error = exc.message
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._end(name, run_id, records, _RESTART_REASON))
            raise
        await self._end(name, run_id, records, error)

    async def _tasks_in_order(
        self,
        name: str,
        run_id: uuid.UUID,
        tasks: list[FlowTask],
        records: list[TaskOut],
        ctx: TaskContext,
    ) -> str | None:
        """Run the tasks until one fails (the rest are skipped); the run's error, if any."""
        error: str | None = None
        for task, record in zip(tasks, records, strict=True):
            if error is not None:
                record.status = "skipped"
                continue
            record.status = "running"
            await self._save(run_id, records, JobStatus.RUNNING)
            self._publish(name, run_id, record.name, "running")
            started = time.monotonic()
            try:
                record.output = await task.run(ctx)
                record.status = "succeeded"
            except TaskFailed as exc:
                record.status = "failed"
                record.output = "\n".join(p for p in (exc.output, exc.message) if p)
                error = f"task {record.name} ({record.type}) failed: {exc.message}"
            except Exception as exc:
                log.exception("flow %s: task %s failed unexpectedly", name, record.name)
                record.status = "failed"
                record.output = f"{type(exc).__name__}: {exc}"
                error = f"task {record.name} ({record.type}) failed: {record.output}"
            record.duration_s = round(time.monotonic() - started, 3)
            ctx.outputs[record.name] = record.output
            self._publish(name, run_id, record.name, "failed" if error else "succeeded")
        return error

    async def _end(
        self, name: str, run_id: uuid.UUID, records: list[TaskOut], error: str | None
    ) -> None:
        for record in records:
            if record.status in ("pending", "running"):
                record.status = "skipped" if record.status == "pending" else "failed"
        status = JobStatus.FAILED if error else JobStatus.SUCCEEDED
        await self._save(run_id, records, status, error=error, finished=True)
        self._publish(name, run_id, None, "failed" if error else "succeeded")
        log.info("flow %s run %s %s", name, run_id, status.value)

    async def _save(
        self,
        run_id: uuid.UUID,
        records: list[TaskOut],
        status: JobStatus,
        *,
        error: str | None = None,
        finished: bool = False,
    ) -> None:
        async with self.sessions() as session, session.begin():
            row = await session.get(FlowRun, run_id)
            if row is None:
                return
            row.tasks = [r.model_dump() for r in records]
            row.status = status
            row.error = error
            if finished:
                row.finished_at = _now()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish(
        self, name: str, run_id: uuid.UUID, task: str | None, status: FlowRunStatus
    ) -> None:
        self.publisher.publish(
            FlowRunChanged(flow=name, run_id=str(run_id), task=task, status=status)
        )


async def _find(session: AsyncSession, name: str) -> Flow:
    flow = await session.scalar(select(Flow).where(Flow.name == name))
    if flow is None:
        raise NotFound(f"no flow {name!r}; create it with POST /api/v1/flows")
    return flow


def _pending(task: FlowTask) -> TaskOut:
    return TaskOut(name=task.name or "", type=task.type, status="pending")


def _flow_out(row: Flow) -> FlowOut:
    return FlowOut(
        name=row.name,
        directory=str(row.spec.get("directory", "")),
        tasks=list(row.spec.get("tasks", [])),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _run_out(name: str, row: FlowRun) -> RunOut:
    return RunOut(
        id=str(row.id),
        flow=name,
        status=row.status.value,
        error=row.error,
        tasks=[TaskOut.model_validate(t) for t in row.tasks],
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _now() -> datetime:
    return datetime.now(UTC)
