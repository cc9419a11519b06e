"""Batch jobs: a CSV through a batch endpoint, the output synced into a dataset."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, ForeignKeyConstraint, Index, false, text
from sqlalchemy.orm import Mapped, mapped_column

from cormorant.common.db.base import Base, CreatedAt, UpdatedAt, UUIDPk


class JobStatus(StrEnum):
    """Lifecycle of a batch job or a flow run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class BatchJob(Base):
    """One batch prediction job and its progress."""

    __tablename__ = "batch_jobs"
    __table_args__ = (
        Index(None, "endpoint_id", "created_at"),
        ForeignKeyConstraint(
            ["dataset_id", "output_dataset_version"],
            ["dataset_versions.dataset_id", "dataset_versions.version"],
            name="fk_batch_jobs_output_dataset_version",
        ),
    )

    id: Mapped[UUIDPk]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    status: Mapped[JobStatus] = mapped_column(server_default=JobStatus.PENDING.value)
    input_file: Mapped[str]
    output_file: Mapped[str]
    # RESTRICT: a dataset that job records point at cannot vanish from under them.
    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="RESTRICT"), index=True
    )
    rows_total: Mapped[int | None]
    rows_done: Mapped[int] = mapped_column(server_default=text("0"))
    failures: Mapped[int] = mapped_column(server_default=text("0"))
    replicas: Mapped[int | None]
    """Replicas the job ran on."""
    output_dataset_version: Mapped[int | None]
    log_predictions: Mapped[bool] = mapped_column(server_default=false())
    """Whether each row is also recorded in the prediction log."""
    error: Mapped[str | None]
    created_at: Mapped[CreatedAt]
    updated_at: Mapped[UpdatedAt]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
