"""The task types of flows: ``exec``, ``deploy``, ``rollback``, ``batch-predict``.

A task type is one class registered with ``@task_type("name")``: a pydantic model of its
fields (unknown fields refused) with an ``async run(ctx)`` that returns its output text or
raises ``TaskFailed``. Every type but ``exec`` calls the public API through the SDK's
``Client`` (a blocking client: its calls run in a thread); ``exec`` runs through ``run_exec``.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cormorant.alerts.flows.exec import ExecFailed, ExecLimits, run_exec
from cormorant.sdk import Client, CormorantAPIError
from cormorant.sdk.batch import BatchJob

ServerValue = str | int | float | bool
_ROLLOUT_POLL_S = 1.0
_READY_TIMEOUT_S = 300.0
_BATCH_TIMEOUT_S = 24 * 3600.0


class TaskFailed(Exception):
    """The task did not do its job; ``output`` is what it printed or why."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.output = output


@dataclass(slots=True)
class TaskContext:
    """What a task may use: the run's workspace, the public API, the limits of ``exec``."""

    workspace: Path
    client: Client
    limits: ExecLimits
    outputs: dict[str, str] = field(default_factory=dict)
    """Output of each earlier task of the run, by task name."""

    async def call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """An SDK call, off the event loop; an API refusal becomes ``TaskFailed``."""
        try:
            return await asyncio.to_thread(method, *args, **kwargs)
        except CormorantAPIError as exc:
            raise TaskFailed(exc.message) from exc


class FlowTask(BaseModel):
    """Base of every task type: a name shown in the run, and the type."""

    model_config = ConfigDict(extra="forbid")

    type_name: ClassVar[str] = ""
    name: str | None = Field(default=None, min_length=1, max_length=200)
    type: str

    async def run(self, ctx: TaskContext) -> str:
        """Do the task; its output text, or ``TaskFailed``."""
        raise NotImplementedError


TASK_TYPES: dict[str, type[FlowTask]] = {}
"""Every task type by its name in a flow file."""

T = TypeVar("T", bound=type[FlowTask])


def task_type(name: str) -> Callable[[T], T]:
    """Register a task class under ``name``."""

    def register(cls: T) -> T:
        cls.type_name = name
        TASK_TYPES[name] = cls
        return cls

    return register


@task_type("exec")
class ExecTask(FlowTask):
    """A command run in the run's workspace (a shell line, or an argument list)."""

    command: str | list[str] = Field(min_length=1)
    timeout_s: float = Field(default=3600.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)

    async def run(self, ctx: TaskContext) -> str:
        """Run the command; fails on a non-zero exit or after ``timeout_s``."""
        if isinstance(self.command, str):
            argv, shown = ["/bin/sh", "-c", self.command], self.command
        else:
            argv, shown = list(self.command), shlex.join(self.command)
        try:
            finished = await run_exec(
                argv,
                workspace=ctx.workspace,
                env=self.env,
                timeout_s=self.timeout_s,
                limits=ctx.limits,
            )
        except ExecFailed as exc:
            raise TaskFailed(f"{shown!r} {exc.message}", exc.output) from exc
        if finished.returncode != 0:
            raise TaskFailed(f"{shown!r} exited with status {finished.returncode}", finished.output)
        return finished.output


class ReplicasIn(BaseModel):
    """Replica bounds of a deployed endpoint."""

    model_config = ConfigDict(extra="forbid")

    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=1)
    target: float | None = Field(default=None, gt=0)


@task_type("deploy")
class DeployTask(FlowTask):
    """Create the endpoint from ``source``, or add it as a new version and roll it out
    (under ``policy`` if given, else straight to 100 % and promoted)."""

    endpoint: str = Field(min_length=1, description="Name (or slug) of the endpoint.")
    source: str = Field(min_length=1, description="Directory, relative to the flow's.")
    file: str | None = None
    function: str | None = None
    preprocess_file: str | None = None
    preprocess_function: str | None = None
    env: dict[str, str] | None = None
    server: dict[str, ServerValue] | None = None
    replicas: ReplicasIn | None = None
    policy: dict[str, Any] | None = None

    def _source(self, ctx: TaskContext) -> str:
        if "://" in self.source or self.source.startswith("git@"):
            return self.source
        path = Path(self.source)
        return str(path if path.is_absolute() else (ctx.workspace / path).resolve())

    def _code_fields(self) -> dict[str, Any]:
        fields = self.model_dump(
            include={"file", "function", "preprocess_file", "preprocess_function", "env",
                     "server", "replicas"},
            exclude_none=True,
        )  # fmt: skip
        return dict(fields)

    async def run(self, ctx: TaskContext) -> str:
        """Deploy; fails when the endpoint does not run or the rollout is rolled back."""
        source = self._source(ctx)
        endpoints: list[dict[str, Any]] = await ctx.call(ctx.client.endpoints.list)
        found = next(
            (e["slug"] for e in endpoints if self.endpoint in (e["slug"], e["name"])), None
        )
        if found is None:
            return await self._create(ctx, source)
        return await self._update(ctx, found, source)

    async def _create(self, ctx: TaskContext, source: str) -> str:
        created = await ctx.call(
            ctx.client.endpoints.create, self.endpoint, source, **self._code_fields()
        )
        slug = created["slug"]
        try:
            await ctx.call(ctx.client.endpoints.wait_until_running, slug, _READY_TIMEOUT_S)
        except (TaskFailed, TimeoutError) as exc:
            raise TaskFailed(f"endpoint {slug} did not start: {exc}") from exc
        # The token is not kept in the run's output: rotate one for the endpoint to use it.
        return (
            f"created endpoint {slug} (version {created['version']}); get a token with "
            f"POST /api/v1/endpoints/{slug}/token"
        )

    async def _update(self, ctx: TaskContext, slug: str, source: str) -> str:
        rollouts = ctx.client.rollouts
        created = await ctx.call(rollouts.create_version, slug, source, **self._code_fields())
        version = str(created["version"])
        if self.policy is None:
            traffic = await ctx.call(rollouts.rollout, slug, version, 100)
            # A stream's rollout at 100 % is already complete: there is no canary to promote.
            if traffic.get("canary") is not None:
                await ctx.call(rollouts.promote, slug)
            return f"version {version} of {slug} deployed and promoted"
        await ctx.call(rollouts.rollout, slug, version, 1, policy=self.policy)
        outcome = await self._rollout_outcome(ctx, slug, version)
        lines = [f"version {version} of {slug}: rollout {outcome['status']}"]
        for step in outcome.get("checks", []):
            for result in step.get("results", []):
                lines.append(f"  at {step['percent']}%: {result['reason']}")
        output = "\n".join(lines)
        if outcome["status"] != "succeeded":
            raise TaskFailed(
                f"version {version} of {slug} was not promoted: {outcome.get('reason')}", output
            )
        return output

    async def _rollout_outcome(self, ctx: TaskContext, slug: str, version: str) -> dict[str, Any]:
        """The version's progressive rollout, once it ended (the deployer runs it)."""
        while True:
            traffic = await ctx.call(ctx.client.rollouts.traffic, slug)
            latest = next((r for r in traffic["rollouts"] if r["version"] == version), None)
            if latest is None:
                raise TaskFailed(f"no rollout of version {version} of {slug} was recorded")
            if latest["status"] != "running":
                outcome: dict[str, Any] = latest
                return outcome
            await asyncio.sleep(_ROLLOUT_POLL_S)


@task_type("rollback")
class RollbackTask(FlowTask):
    """All traffic of the endpoint back to its stable version."""

    endpoint_id: str = Field(min_length=1, description="The endpoint's slug.")

    async def run(self, ctx: TaskContext) -> str:
        """Roll back; fails when there is nothing to roll back."""
        traffic = await ctx.call(ctx.client.rollouts.rollback, self.endpoint_id)
        return f"{traffic['slug']} rolled back to version {traffic['stable']}"


@task_type("batch-predict")
class BatchPredictTask(FlowTask):
    """Run a batch job on a batch endpoint and wait for it; fails if the job fails."""

    endpoint_id: str = Field(min_length=1, description="The batch endpoint's slug.")
    input_file: str = Field(min_length=1, description="'<dataset>[@<n>]/<path>' of a CSV.")
    output_file: str = Field(min_length=1, description="Relative path of the output CSV.")
    dataset: str = Field(min_length=1, description="Dataset the output is synced into.")

    async def run(self, ctx: TaskContext) -> str:
        """Run the job to its end; its output reference and figures."""
        body = {"input_file": self.input_file, "output_file": self.output_file,
                "dataset": self.dataset}  # fmt: skip
        path = f"/api/v1/endpoints/{self.endpoint_id}/batch-jobs"
        started = await ctx.call(ctx.client.request, "POST", path, json=body)
        handle = BatchJob(ctx.client, self.endpoint_id, started)
        begun = time.monotonic()
        job: dict[str, Any] = await ctx.call(handle.wait, poll_s=0.5, timeout=_BATCH_TIMEOUT_S)
        if job["status"] != "succeeded":
            raise TaskFailed(f"batch job {job['id']} {job['status']}: {job['error']}")
        return (
            f"batch job {job['id']}: {job['rows_done']} rows ({job['failures']} failed) "
            f"→ {job['output_reference']} in {time.monotonic() - begun:.1f} s"
        )
