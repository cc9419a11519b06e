"""Endpoints and what serves them: model versions, traffic weights, rollouts, replicas."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    text,
)
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


class EndpointKind(StrEnum):
    """How an endpoint is served."""

    WEB = "web"
    BATCH = "batch"
    STREAM = "stream"


class EndpointStatus(StrEnum):
    """Lifecycle of an endpoint as the API reports it."""

    DEPLOYING = "deploying"
    RUNNING = "running"
    IDLE = "idle"
    FAILED = "failed"
    STOPPED = "stopped"
    DEGRADED = "degraded"
    """Serving, but its workers or replicas keep dying (``crash_loop_deaths``)."""


class VersionStatus(StrEnum):
    """Lifecycle of a model version."""

    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"
    RETIRED = "retired"


class RolloutStatus(StrEnum):
    """Outcome of a progressive rollout."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


class ReplicaState(StrEnum):
    """Lifecycle of one replica (a worker process or pod)."""

    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


def _endpoint_fk() -> ForeignKey:
    return ForeignKey("endpoints.id", ondelete="CASCADE")


def _version_fk() -> ForeignKey:
    return ForeignKey("model_versions.id", ondelete="CASCADE")


class Endpoint(Base):
    """A deployed predict function, addressed by its slug."""

    __tablename__ = "endpoints"
    __table_args__ = (Index(None, "created_at", postgresql_where="deleted_at IS NULL"),)

    id: Mapped[UUIDPk]
    # 63 characters: the slug doubles as a DNS label and a Kubernetes object name.
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    name: Mapped[str]
    kind: Mapped[EndpointKind]
    status: Mapped[EndpointStatus] = mapped_column(server_default=EndpointStatus.DEPLOYING.value)
    reason: Mapped[str | None]
    spec: Mapped[EmptyObject]
    """The creation request: source, file, function, preprocess, env, server, replicas, kafka."""
    desired_replicas: Mapped[int] = mapped_column(server_default=text("0"))
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    # Soft delete: prediction logs and metrics keep pointing at a deleted endpoint.
    deleted_at: Mapped[datetime | None]


class ModelVersion(Base):
    """An immutable snapshot of an endpoint's code and settings."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "number"),
        CheckConstraint("source_digest ~ '^[0-9a-f]{64}$'", name="source_digest_sha256"),
        CheckConstraint("number >= 1", name="number_positive"),
    )

    id: Mapped[UUIDPk]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(_endpoint_fk())
    number: Mapped[int]
    """1, 2, 3… within the endpoint; what the API and the traffic weights call the version."""
    source: Mapped[str]
    """Where the code came from: a local directory or a git URL."""
    commit: Mapped[str | None]
    source_digest: Mapped[str] = mapped_column(String(64), index=True)
    """SHA-256 (hex) of the source archive, which is stored under this name."""
    file: Mapped[str]
    function: Mapped[str]
    preprocess_file: Mapped[str | None]
    preprocess_function: Mapped[str | None]
    accepts_file: Mapped[bool] = mapped_column(server_default=text("false"))
    env: Mapped[EmptyObject]
    server: Mapped[EmptyObject]
    status: Mapped[VersionStatus] = mapped_column(server_default=VersionStatus.PENDING.value)
    reason: Mapped[str | None]
    created_at: Mapped[CreatedAt]


class Traffic(Base):
    """The current traffic split of an endpoint; one row per endpoint."""

    __tablename__ = "traffic"

    endpoint_id: Mapped[uuid.UUID] = mapped_column(_endpoint_fk(), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    """Bumped on every change, so replicas retire only after the gateway applied it."""
    weights: Mapped[EmptyObject]
    """``{"<version number>": percent}``, summing to 100."""
    policy: Mapped[JSONObject | None]
    """The progressive-delivery policy in force, if any."""
    shadow: Mapped[JSONObject | None]
    """``{"version": "<number>", "percent": p}`` while live requests are mirrored to a shadow
    version, else NULL."""
    updated_at: Mapped[UpdatedAt]


class TrafficChange(Base):
    """One past generation of an endpoint's traffic split."""

    __tablename__ = "traffic_history"

    endpoint_id: Mapped[uuid.UUID] = mapped_column(_endpoint_fk(), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    weights: Mapped[JSONObject]
    action: Mapped[str]
    """What made the change: ``deploy``, ``rollout``, ``promote``, ``rollback``…"""
    reason: Mapped[str | None]
    created_at: Mapped[CreatedAt]


class Rollout(Base):
    """A progressive rollout of one version: its policy, current step and check results."""

    __tablename__ = "rollouts"
    __table_args__ = (
        # At most one rollout in progress per endpoint.
        Index(
            "uq_rollouts_endpoint_id_running",
            "endpoint_id",
            unique=True,
            postgresql_where="status = 'running'",
        ),
    )

    id: Mapped[UUIDPk]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(_endpoint_fk(), index=True)
    version_id: Mapped[uuid.UUID] = mapped_column(_version_fk())
    policy: Mapped[JSONObject]
    step: Mapped[int] = mapped_column(server_default=text("0"))
    status: Mapped[RolloutStatus] = mapped_column(server_default=RolloutStatus.RUNNING.value)
    checks: Mapped[EmptyArray]
    """Each step's check results, in order."""
    reason: Mapped[str | None]
    started_at: Mapped[CreatedAt]
    finished_at: Mapped[datetime | None]


class Replica(Base):
    """One running copy of a model version."""

    __tablename__ = "replicas"
    __table_args__ = (Index(None, "endpoint_id", "state"),)

    id: Mapped[UUIDPk]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(_endpoint_fk())
    version_id: Mapped[uuid.UUID] = mapped_column(_version_fk(), index=True)
    url: Mapped[str | None]
    host: Mapped[str | None]
    pid: Mapped[int | None]
    state: Mapped[ReplicaState] = mapped_column(server_default=ReplicaState.STARTING.value)
    restarts: Mapped[int] = mapped_column(server_default=text("0"))
    last_error: Mapped[str | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
