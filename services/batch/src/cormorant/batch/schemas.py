"""The JSON shapes of batch jobs: what a client sends and what it gets."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


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


class CustomMetric(BaseModel):
    """A custom metric over one job's minutes."""

    count: int
    avg: float | None
    min: float | None
    max: float | None


class BatchJobComparison(BaseModel):
    """Jobs' figures side by side, in the order asked."""

    jobs: list[BatchJobOut]
    metrics: dict[str, dict[str, float | int | None]]
    """Per figure (``rows_per_s``, ``duration_s``, ``failures``...), its value per job id."""
    custom: dict[str, dict[str, CustomMetric | None]] = Field(default_factory=dict)
    """Per custom metric asked for, what predict code logged during each job (by minute, from
    the prediction log: minutes shared with another job of the endpoint count for both)."""
