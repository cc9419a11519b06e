"""Request and response bodies of the datasets and feedback-loop APIs."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cormorant.common.datasets import DatasetInfo, FileEntry, VersionInfo
from cormorant.common.db.models import ExportFormat, RunStatus, RunTrigger


class DatasetCreate(BaseModel):
    """A new, empty dataset."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        description="Lowercase letters, digits, '-' and '_', starting with a letter or digit; "
        "at most 64 characters.",
        examples=["churn-inputs"],
    )


class DatasetOut(BaseModel):
    """A dataset and its latest version number (null before the first upload)."""

    name: str
    created_at: datetime
    latest_version: int | None

    @classmethod
    def of(cls, info: DatasetInfo) -> DatasetOut:
        """The API view of ``info``."""
        return cls(name=info.name, created_at=info.created_at, latest_version=info.latest_version)


class DatasetList(BaseModel):
    """Every dataset, by name."""

    datasets: list[DatasetOut]


class FileOut(BaseModel):
    """One file of a version."""

    path: str
    size: int = Field(description="Size in bytes.")
    sha256: str = Field(description="SHA-256 of the content, hex.")

    @classmethod
    def of(cls, entry: FileEntry) -> FileOut:
        """The API view of ``entry``."""
        return cls(path=entry.path, size=entry.size, sha256=entry.sha256)


class VersionOut(BaseModel):
    """One immutable version of a dataset: every file it holds, by path."""

    dataset: str
    version: int
    created_at: datetime
    files: list[FileOut]

    @classmethod
    def of(cls, info: VersionInfo) -> VersionOut:
        """The API view of ``info``."""
        return cls(
            dataset=info.dataset,
            version=info.version,
            created_at=info.created_at,
            files=[FileOut.of(f) for f in info.files],
        )


class VersionList(BaseModel):
    """Every version of a dataset, oldest first."""

    versions: list[VersionOut]


class LoopCreate(BaseModel):
    """A feedback loop: the endpoint's logged predictions into ``dataset``, now or on a
    schedule."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(description="The dataset the exports go into (it must exist).")
    schedule: dict[str, Any] = Field(
        description="Exactly one of {'now': true}, {'every': '15m'|'6h'|'1d'} or "
        "{'on': {'days': ['mon', 'thu'], 'time': '02:30', 'timezone': 'Europe/Berlin'}} "
        "('on' also as the text 'mon,thu 02:30 Europe/Berlin').",
        examples=[{"every": "6h"}, {"on": {"days": ["mon"], "time": "02:30", "timezone": "UTC"}}],
    )
    format: ExportFormat = Field(default=ExportFormat.CSV, description="csv or parquet.")
    include: list[str] | None = Field(
        default=None,
        description="Columns exported besides request_id and received_at, in order, from "
        "input, output, error, status, latency_ms, version, trace_id, metrics (the request's "
        "logged custom metrics as a JSON object), shadow (true for a shadow version's answer "
        "to a mirrored request); default all but trace_id, metrics and shadow.",
    )


class RunOut(BaseModel):
    """One run of a feedback loop."""

    id: uuid.UUID
    trigger: RunTrigger
    status: RunStatus
    rows: int = Field(description="Predictions exported.")
    first_received_at: datetime | None = Field(description="Earliest received_at exported.")
    last_received_at: datetime | None = Field(description="Latest received_at exported.")
    dataset_version: int | None = Field(
        description="The dataset version holding the rows; null when nothing was new."
    )
    duration_s: float
    error: str | None
    started_at: datetime
    finished_at: datetime


class LoopOut(BaseModel):
    """A feedback loop and where it stands."""

    id: uuid.UUID
    endpoint: str
    dataset: str
    schedule: dict[str, Any]
    format: ExportFormat
    include: list[str]
    state: Literal["scheduled", "done", "failing", "stopped"]
    last_run: RunOut | None
    next_run: datetime | None
    created_at: datetime
    stopped_at: datetime | None


class LoopDetail(LoopOut):
    """A feedback loop with its runs, newest first."""

    runs: list[RunOut]


class LoopList(BaseModel):
    """Feedback loops, oldest first."""

    feedback_loops: list[LoopOut]
