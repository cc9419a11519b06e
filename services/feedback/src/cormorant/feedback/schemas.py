"""Request and response bodies of the datasets API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from cormorant.common.datasets import DatasetInfo, FileEntry, VersionInfo


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
