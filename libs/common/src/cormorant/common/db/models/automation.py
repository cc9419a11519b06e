"""Continual learning: feedback loops, metric triggers, and flows with their runs."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, func, text
from sqlalchemy.orm import Mapped, mapped_column

from cormorant.common.db.base import (
    Base,
    CreatedAt,
    EmptyArray,
    EmptyObject,
    JSONObject,
    UpdatedAt,
    UUIDPk,
)
from cormorant.common.db.models.batch import JobStatus


def _endpoint_fk() -> ForeignKey:
    return ForeignKey("endpoints.id", ondelete="CASCADE")


class ScheduleKind(StrEnum):
    """When a feedback loop runs."""

    NOW = "now"
    EVERY = "every"
    AT = "at"


class ExportFormat(StrEnum):
    """The file format a feedback loop writes."""

    CSV = "csv"
    PARQUET = "parquet"


class RunTrigger(StrEnum):
    """What started a feedback run."""

    SCHEDULE = "schedule"
    MANUAL = "manual"


class RunStatus(StrEnum):
    """How a feedback run ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Comparison(StrEnum):
    """How a trigger compares a metric with its threshold."""

    GREATER = ">"
    LESS = "<"


class Severity(StrEnum):
    """How urgent a trigger's firing is, as its action reports it."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class ActionKind(StrEnum):
    """What a trigger does when it fires."""

    EMAIL = "email"
    WEBHOOK = "webhook"
    FLOW = "flow"


class FeedbackLoop(Base):
    """Copies an endpoint's logged predictions into a dataset on a schedule."""

    __tablename__ = "feedback_loops"

    id: Mapped[UUIDPk]
    name: Mapped[str]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(_endpoint_fk(), index=True)
    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    schedule_kind: Mapped[ScheduleKind]
    schedule_expr: Mapped[str | None]
    """The interval for ``every`` (``15m``) or the days, time and zone for ``at``
    (``mon,thu 02:30 Europe/Berlin``); empty for ``now``."""
    query: Mapped[EmptyObject]
    """Which predictions to take (time window, version, status…)."""
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    last_run_at: Mapped[datetime | None]
    next_run_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    format: Mapped[ExportFormat] = mapped_column(server_default=ExportFormat.CSV.value)
    include: Mapped[EmptyArray]
    """The optional columns exported, in order (``input``, ``output``, ``metrics``…)."""
    watermark: Mapped[str | None]
    """The ``pg_snapshot`` the last export read: the next one takes the rows it did not see."""
    stopped_at: Mapped[datetime | None]


class FeedbackRun(Base):
    """One export of a feedback loop: how many rows, which time range, which version."""

    __tablename__ = "feedback_runs"
    __table_args__ = (Index(None, "loop_id", "started_at"),)

    id: Mapped[UUIDPk]
    loop_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("feedback_loops.id", ondelete="CASCADE"))
    trigger: Mapped[RunTrigger]
    status: Mapped[RunStatus]
    rows: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    first_received_at: Mapped[datetime | None]
    last_received_at: Mapped[datetime | None]
    dataset_version: Mapped[int | None]
    """The dataset version written; None when there was nothing new (or the run failed)."""
    duration_s: Mapped[float] = mapped_column(server_default=text("0"))
    error: Mapped[str | None]
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Trigger(Base):
    """Fires an action when a logged metric crosses a threshold."""

    __tablename__ = "triggers"
    __table_args__ = (
        CheckConstraint("every_seconds > 0", name="every_seconds_positive"),
        CheckConstraint("min_events >= 1", name="min_events_positive"),
        CheckConstraint("cooldown_seconds >= 0", name="cooldown_seconds_not_negative"),
    )

    id: Mapped[UUIDPk]
    name: Mapped[str]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(_endpoint_fk(), index=True)
    metric: Mapped[str]
    op: Mapped[Comparison]
    threshold: Mapped[float]
    every_seconds: Mapped[int]
    min_events: Mapped[int] = mapped_column(server_default=text("1"))
    action_kind: Mapped[ActionKind]
    action_config: Mapped[EmptyObject]
    enabled: Mapped[bool] = mapped_column(server_default=text("true"))
    last_fired_at: Mapped[datetime | None]
    created_at: Mapped[CreatedAt]
    severity: Mapped[Severity] = mapped_column(server_default=Severity.WARNING.value)
    cooldown_seconds: Mapped[int | None]
    """Seconds after a firing before the trigger may fire again; None: every × min_events."""
    secret: Mapped[str | None]
    """The webhook action's HMAC-SHA256 key (kept readable: every delivery is signed with it)."""
    updated_at: Mapped[UpdatedAt]


class Flow(Base):
    """A named list of tasks (exec, deploy, rollback, batch-predict) run in order."""

    __tablename__ = "flows"

    id: Mapped[UUIDPk]
    name: Mapped[str] = mapped_column(unique=True)
    spec: Mapped[JSONObject]
    """The parsed flow file."""
    source: Mapped[str | None]
    """The flow file as written (YAML), for display."""
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]


class FlowRun(Base):
    """One run of a flow, with each task's status, output and duration."""

    __tablename__ = "flow_runs"
    __table_args__ = (Index(None, "flow_id", "created_at"),)

    id: Mapped[UUIDPk]
    flow_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("flows.id", ondelete="CASCADE"))
    status: Mapped[JobStatus] = mapped_column(server_default=JobStatus.PENDING.value)
    tasks: Mapped[EmptyArray]
    """``[{"name", "type", "status", "output", "duration_s"}]`` in run order."""
    error: Mapped[str | None]
    created_at: Mapped[CreatedAt]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
