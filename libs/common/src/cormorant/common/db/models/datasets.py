"""Datasets: named collections of files, each sync an immutable numbered version."""

from __future__ import annotations

import uuid

from sqlalchemy import CheckConstraint, ForeignKey
from sqlalchemy.orm import Mapped, mapped_column

from cormorant.common.db.base import Base, CreatedAt, EmptyArray, UUIDPk


class Dataset(Base):
    """A named, versioned collection of files."""

    __tablename__ = "datasets"

    id: Mapped[UUIDPk]
    name: Mapped[str] = mapped_column(unique=True)
    created_at: Mapped[CreatedAt]


class DatasetVersion(Base):
    """One immutable version of a dataset."""

    __tablename__ = "dataset_versions"
    __table_args__ = (CheckConstraint("version >= 1", name="version_positive"),)

    dataset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(primary_key=True)
    files: Mapped[EmptyArray]
    """``[{"path": ..., "size": ..., "sha256": ...}]``."""
    created_at: Mapped[CreatedAt]
