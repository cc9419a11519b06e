"""Flow files and the JSON shapes of flows and runs.

A flow comes as a YAML (or JSON) document::

    name: retrain-iris
    tasks:
      - {name: train, type: exec, command: python train.py out/model}
      - {name: ship, type: deploy, endpoint: iris, source: out/model, policy: {...}}

with the directory its relative paths and commands start from (copied into each run's
private workspace). Task types live in ``tasks.py``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cormorant.alerts.flows.tasks import TASK_TYPES, FlowTask
from cormorant.common.errors import BadRequest
from cormorant.common.events import subject_token

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
        task = _task(index, raw)
        if task.name in names:
            raise BadRequest(f"tasks[{index}].name: {task.name!r} is used by an earlier task")
        names.add(task.name or "")
        tasks.append(task)
    spec = {
        "name": name,
        "directory": str(directory),
        "tasks": [t.model_dump(mode="json", exclude_none=True) for t in tasks],
    }
    return name, spec, tasks


def stored_tasks(spec: dict[str, Any]) -> list[FlowTask]:
    """The tasks of a stored (already checked) spec."""
    return [TASK_TYPES[t["type"]].model_validate(t) for t in spec["tasks"]]


def _task(index: int, raw: Any) -> FlowTask:
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
    return task
