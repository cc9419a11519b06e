"""Flows: a named list of tasks run in order, each run recorded with every task's status,
output and duration (tables ``flows`` and ``flow_runs``).

A flow comes as a YAML (or JSON) document::

    name: retrain-iris
    tasks:
      - {name: train, type: exec, command: python train.py out/model}
      - {name: ship, type: deploy, endpoint: iris, source: out/model, policy: {...}}

with the directory its relative paths and commands start from. Task types live in
``flow_tasks.py``. A run stops at the first task that fails; the ones after it are skipped.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.db.models import Flow, FlowRun, JobStatus
from cormorant.common.errors import BadRequest, NotFound
from cormorant.common.events import FlowRunChanged, FlowRunStatus, subject_token
from cormorant.deployer.batch import BatchService
from cormorant.deployer.endpoints.service import EndpointService
from cormorant.deployer.flow_tasks import TASK_TYPES, FlowTask, TaskContext, TaskFailed
from cormorant.deployer.rollout.service import RolloutService

log = logging.getLogger(__name__)

MAX_TASKS = 100


class FlowIn(BaseModel):
    """``POST /api/v1/flows``: the flow file's text (YAML or JSON), or its parsed content."""

    model_config = ConfigDict(extra="forbid")

    yaml: str | None = Field(default=None, description="The flow file as written.")
    spec: dict[str, Any] | None = Field(default=None, description="The flow file, parsed.")
    directory: str = Field(
        min_length=1, description="Absolute directory that commands and relative paths use."
    )


class TaskOut(BaseModel):
    """One task of a run."""

    name: str
    type: str
    status: str
    output: str = ""
    duration_s: float | None = None


class FlowOut(BaseModel):
    """A stored flow."""

    name: str
    directory: str
    tasks: list[dict[str, Any]]
    created_at: datetime
    updated_at: datetime


class FlowList(BaseModel):
    """Every flow."""

    flows: list[FlowOut]


class RunOut(BaseModel):
    """A run of a flow."""

    id: str
    flow: str
    status: str
    error: str | None
    tasks: list[TaskOut]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunList(BaseModel):
    """Runs of a flow, newest first."""

    runs: list[RunOut]


def parse_flow(body: FlowIn) -> tuple[str, dict[str, Any], list[FlowTask]]:
    """The flow's name, its normalized spec and its tasks; ``BadRequest`` naming what to fix."""
    if (body.yaml is None) == (body.spec is None):
        raise BadRequest(
            "send the flow file as `yaml` (its text) or as `spec` (parsed), one of them"
        )
    document: Any = body.spec
    if body.yaml is not None:
        try:
            document = yaml.safe_load(body.yaml)
        except yaml.YAMLError as exc:
            raise BadRequest(f"the flow file is not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise BadRequest("a flow file is a mapping with `name` and `tasks`")
    unknown = set(document) - {"name", "tasks", "description"}
    if unknown:
        raise BadRequest(f"unknown field(s) {', '.join(sorted(unknown))}; a flow has name, tasks")
    name = document.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("name: required, e.g. name: retrain-iris")
    try:
        subject_token(name)
    except ValueError as exc:
        raise BadRequest(f"name: {exc}") from exc
    directory = Path(body.directory)
    if not directory.is_absolute() or not directory.is_dir():
        raise BadRequest(f"directory: {body.directory!r} is not an absolute path of a directory")
    raw_tasks = document.get("tasks")
    if not isinstance(raw_tasks, list) or not raw_tasks:
        raise BadRequest("tasks: required, a list of at least one task")
    if len(raw_tasks) > MAX_TASKS:
        raise BadRequest(f"tasks: at most {MAX_TASKS} tasks")
    tasks = []
    names: set[str] = set()
    for index, raw in enumerate(raw_tasks):
        where = f"tasks[{index}]"
        if not isinstance(raw, dict):
            raise BadRequest(f"{where}: a task is a mapping with a `type`")
        kind = raw.get("type")
        cls = TASK_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            known = ", ".join(sorted(TASK_TYPES))
            raise BadRequest(f"{where}.type: unknown task type {kind!r}; known types: {known}")
        try:
            task = cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{where} ({kind}).{'.'.join(str(p) for p in err['loc'])}: "
                + ("required" if err["type"] == "missing" else err["msg"])
                for err in exc.errors()
            )
            raise BadRequest(problems) from exc
        task.name = task.name or f"{kind}-{index + 1}"
        if task.name in names:
            raise BadRequest(f"{where}.name: {task.name!r} is used by an earlier task")
        names.add(task.name)
        tasks.append(task)
    spec = {
        "name": name,
        "directory": str(directory),
        "tasks": [t.model_dump(mode="json", exclude_none=True) for t in tasks],
    }
    return name, spec, tasks


def _tasks(spec: dict[str, Any]) -> list[FlowTask]:
    return [TASK_TYPES[t["type"]].model_validate(t) for t in spec["tasks"]]


class FlowService:
    """Flows and their runs, independent of HTTP."""

    def __init__(
        self,
        *,
        sessions: async_sessionmaker[AsyncSession],
        endpoints: EndpointService,
        rollouts: RolloutService,
        batch: BatchService | None = None,
    ) -> None:
        self.sessions = sessions
        self.endpoints = endpoints
        self.rollouts = rollouts
        self.batch = batch

    async def save(self, body: FlowIn) -> FlowOut:
        """Store the flow under its name (replacing an earlier one of that name)."""
        name, spec, _ = parse_flow(body)
        async with self.sessions() as session, session.begin():
            statement = insert(Flow).values(id=uuid.uuid4(), name=name, spec=spec, source=body.yaml)
            await session.execute(
                statement.on_conflict_do_update(
                    index_elements=[Flow.name],
                    set_={"spec": spec, "source": body.yaml, "updated_at": datetime.now(UTC)},
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
            tasks = _tasks(flow.spec)
            run_id = uuid.uuid4()
            run = FlowRun(
                id=run_id,
                flow_id=flow.id,
                status=JobStatus.RUNNING,
                started_at=datetime.now(UTC),
                tasks=[
                    TaskOut(name=t.name or "", type=t.type, status="pending").model_dump()
                    for t in tasks
                ],
            )
            session.add(run)
            directory = Path(flow.spec["directory"])
        self._publish(name, run_id, None, "running")
        self.endpoints.supervisor.spawn(
            self._run(name, run_id, directory, tasks), name=f"flow-{name}-{run_id}"
        )
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
        ctx = TaskContext(
            directory=directory, endpoints=self.endpoints, rollouts=self.rollouts, batch=self.batch
        )
        records = [TaskOut(name=t.name or "", type=t.type, status="pending") for t in tasks]
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
                row.finished_at = datetime.now(UTC)

    def _publish(
        self, name: str, run_id: uuid.UUID, task: str | None, status: FlowRunStatus
    ) -> None:
        self.endpoints.supervisor.publish(
            FlowRunChanged(flow=name, run_id=str(run_id), task=task, status=status)
        )


async def _find(session: AsyncSession, name: str) -> Flow:
    flow = await session.scalar(select(Flow).where(Flow.name == name))
    if flow is None:
        raise NotFound(f"no flow {name!r}; create it with POST /api/v1/flows")
    return flow


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
