"""The task types of flows: ``exec``, ``deploy``, ``rollback``, ``batch-predict``.

A task type is one class registered with ``@task_type("name")``: a pydantic model of its
fields (unknown fields refused) with an ``async run(ctx)`` that returns its output text or
raises ``TaskFailed``. Adding a type is adding such a class.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from cormorant.common.errors import CormorantError
from cormorant.common.internal import PLATFORM_SECRET_VARIABLES
from cormorant.deployer.api_batch import batch_service
from cormorant.deployer.batch import BatchJobIn
from cormorant.deployer.endpoints import EndpointService
from cormorant.deployer.rollout import RolloutService
from cormorant.deployer.rollout_schemas import RolloutIn, VersionCreate
from cormorant.deployer.schemas import EndpointCreate, ReplicasIn, ServerValue
from cormorant.deployer.store import slugify

log = logging.getLogger(__name__)

# Output kept per task: the tail of what it printed.
MAX_OUTPUT = 16_000


class TaskFailed(Exception):
    """The task did not do its job; ``output`` is what it printed or why."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.output = output


@dataclass(slots=True)
class TaskContext:
    """What a task may use: the flow's directory and the deployer's services."""

    directory: Path
    endpoints: EndpointService
    rollouts: RolloutService
    outputs: dict[str, str] = field(default_factory=dict)
    """Output of each earlier task of the run, by task name."""


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


def _tail(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT else "…" + text[-MAX_OUTPUT:]


@task_type("exec")
class ExecTask(FlowTask):
    """A command run in the flow's directory (a shell line, or an argument list)."""

    command: str | list[str] = Field(min_length=1)
    timeout_s: float = Field(default=3600.0, gt=0)
    env: dict[str, str] = Field(default_factory=dict)

    async def run(self, ctx: TaskContext) -> str:
        """Run the command; fails on a non-zero exit or after ``timeout_s``."""
        # A flow's command is user code: the platform's own secrets stay out of its reach.
        env = {k: v for k, v in os.environ.items() if k not in PLATFORM_SECRET_VARIABLES}
        env.update(self.env)
        # `python` in a flow means the platform's interpreter, whatever PATH says.
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        if isinstance(self.command, str):
            argv = ["/bin/sh", "-c", self.command]
        else:
            argv = list(self.command)
        shown = self.command if isinstance(self.command, str) else shlex.join(self.command)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=ctx.directory,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise TaskFailed(f"{shown!r} could not start: {exc}") from exc
        try:
            async with asyncio.timeout(self.timeout_s):
                out, _ = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise TaskFailed(f"{shown!r} did not finish within {self.timeout_s:g} s") from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        text = _tail(out.decode(errors="replace"))
        if proc.returncode != 0:
            raise TaskFailed(f"{shown!r} exited with status {proc.returncode}", text)
        return text


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
        path = Path(self.source)
        if "://" in self.source or self.source.startswith("git@"):
            return self.source
        return str(path if path.is_absolute() else (ctx.directory / path).resolve())

    def _code_fields(self) -> dict[str, Any]:
        fields = {
            "file": self.file,
            "function": self.function,
            "preprocess_file": self.preprocess_file,
            "preprocess_function": self.preprocess_function,
            "env": self.env,
            "server": self.server,
            "replicas": self.replicas,
        }
        return {k: v for k, v in fields.items() if v is not None}

    async def run(self, ctx: TaskContext) -> str:
        """Deploy; fails when the endpoint does not run or the rollout is rolled back."""
        source = self._source(ctx)
        slug = slugify(self.endpoint)
        record = await ctx.endpoints.store.find(slug)
        try:
            if record is None:
                return await self._create(ctx, source)
            return await self._update(ctx, slug, source)
        except CormorantError as exc:
            raise TaskFailed(exc.message) from exc

    async def _create(self, ctx: TaskContext, source: str) -> str:
        fields = self._code_fields()
        request = EndpointCreate.model_validate({"name": self.endpoint, "source": source, **fields})
        created = await ctx.endpoints.create(request)
        primary = ctx.endpoints.supervisor.endpoints.get(_id(ctx, created.slug))
        if primary is not None:
            failure = await ctx.rollouts.wait_ready(primary)
            if failure is not None:
                raise TaskFailed(f"endpoint {created.slug} did not start: {failure}")
        # The token is not kept in the run's output: rotate one for the endpoint to use it.
        return (
            f"created endpoint {created.slug} (version {created.version}); get a token with "
            f"POST /api/v1/endpoints/{created.slug}/token"
        )

    async def _update(self, ctx: TaskContext, slug: str, source: str) -> str:
        rollouts = ctx.rollouts
        body = VersionCreate.model_validate({"source": source, **self._code_fields()})
        version = (await rollouts.create_version(slug, body)).version
        if self.policy is None:
            traffic = await rollouts.rollout(slug, RolloutIn(version=version, percent=100))
            # A stream's rollout at 100 % is already complete: there is no canary to promote.
            if traffic.canary is not None:
                await rollouts.promote(slug, reason="flow deploy")
            return f"version {version} of {slug} deployed and promoted"
        await rollouts.rollout(slug, RolloutIn(version=version, percent=1, policy=self.policy))
        record = await ctx.endpoints.store.find(slug)
        assert record is not None
        outcome = await rollouts.wait_rollout(record.id)
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


@task_type("rollback")
class RollbackTask(FlowTask):
    """All traffic of the endpoint back to its stable version."""

    endpoint_id: str = Field(min_length=1, description="The endpoint's slug.")

    async def run(self, ctx: TaskContext) -> str:
        """Roll back; fails when there is nothing to roll back."""
        try:
            traffic = await ctx.rollouts.rollback(self.endpoint_id, reason="flow rollback")
        except CormorantError as exc:
            raise TaskFailed(exc.message) from exc
        return f"{traffic.slug} rolled back to version {traffic.stable}"


@task_type("batch-predict")
class BatchPredictTask(FlowTask):
    """Run a batch job on a batch endpoint and wait for it; fails if the job fails."""

    endpoint_id: str = Field(min_length=1, description="The batch endpoint's slug.")
    input_file: str = Field(min_length=1, description="'<dataset>[@<n>]/<path>' of a CSV.")
    output_file: str = Field(min_length=1, description="Relative path of the output CSV.")
    dataset: str = Field(min_length=1, description="Dataset the output is synced into.")

    async def run(self, ctx: TaskContext) -> str:
        """Run the job to its end; its output reference and figures."""
        service = batch_service(ctx.endpoints)
        if service is None:
            raise TaskFailed("batch jobs are not running in this deployer")
        body = BatchJobIn(
            input_file=self.input_file, output_file=self.output_file, dataset=self.dataset
        )
        try:
            job = await service.run(self.endpoint_id, body)
        except CormorantError as exc:
            raise TaskFailed(exc.message) from exc
        if job.status != "succeeded":
            raise TaskFailed(f"batch job {job.id} {job.status}: {job.error}")
        return (
            f"batch job {job.id}: {job.rows_done} rows ({job.failures} failed) "
            f"→ {job.output_reference}"
        )


def _id(ctx: TaskContext, slug: str) -> Any:
    for endpoint_id, runtime in ctx.endpoints.supervisor.endpoints.items():
        if runtime.slug == slug:
            return endpoint_id
    return None
