"""Datasets: named collections of files, each sync an immutable, numbered version.

A version's manifest (``dataset_versions.files``) lists every file of the dataset at that
point as ``{path, size, sha256}``; contents live in a ``BlobStore`` under their sha256. A sync
copies the previous manifest and overrides the paths it brings, so unchanged files are
listed again by address and no byte is stored twice.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from sqlalchemy import Select, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.datasets.blobs import CHUNK_SIZE, BlobStore, FileSource
from cormorant.common.datasets.refs import (
    DatasetRef,
    parse_reference,
    validate_name,
    validate_path,
)
from cormorant.common.db.models import Dataset, DatasetVersion
from cormorant.common.errors import BadRequest, Conflict, NotFound

_LISTED_IN_ERRORS = 20
_VERSION_PK = "pk_dataset_versions"


MAX_VERSION = 2**31 - 1
"""The largest version number a dataset version can have (PostgreSQL ``integer``)."""


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a version: its path in the dataset, size in bytes, and content digest."""

    path: str
    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        """The manifest entry stored in ``dataset_versions.files``."""
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FileEntry:
        """The entry read back from a manifest."""
        return cls(path=str(raw["path"]), size=int(raw["size"]), sha256=str(raw["sha256"]))


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """A dataset and the number of its latest version (None before the first sync)."""

    id: uuid.UUID
    """Primary key, for rows that reference the dataset (``batch_jobs.dataset_id``)."""
    name: str
    created_at: datetime
    latest_version: int | None


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One immutable version of a dataset with every file it holds, sorted by path."""

    dataset: str
    version: int
    created_at: datetime
    files: tuple[FileEntry, ...]

    @property
    def size(self) -> int:
        """Total bytes of the version's files."""
        return sum(f.size for f in self.files)

    def file(self, path: str) -> ResolvedFile:
        """The file at ``path``; ``NotFound`` naming the files this version has."""
        for entry in self.files:
            if entry.path == path:
                return ResolvedFile(self.dataset, self.version, entry)
        raise NotFound(
            f"version {self.version} of dataset {self.dataset!r} has no file {path!r}; "
            f"its files are {_listing([f.path for f in self.files])}"
        )


@dataclass(frozen=True, slots=True)
class ResolvedFile:
    """A file pinned to one version, as a reference resolves to."""

    dataset: str
    version: int
    entry: FileEntry

    @property
    def path(self) -> str:
        """The file's path in the dataset."""
        return self.entry.path

    @property
    def size(self) -> int:
        """Size in bytes."""
        return self.entry.size

    @property
    def sha256(self) -> str:
        """Content digest (hex)."""
        return self.entry.sha256

    @property
    def reference(self) -> str:
        """The pinned reference ``<dataset>@<version>/<path>``."""
        return f"{self.dataset}@{self.version}/{self.path}"


def _listing(items: list[str]) -> str:
    if not items:
        return "none"
    shown = ", ".join(repr(i) for i in items[:_LISTED_IN_ERRORS])
    more = len(items) - _LISTED_IN_ERRORS
    return f"{shown} and {more} more" if more > 0 else shown


def _check_tree(paths: list[str]) -> None:
    """Refuse a manifest where one file's path is a directory of another's (``a`` and ``a/b``)."""
    present = set(paths)
    for path in paths:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in present:
                raise BadRequest(
                    f"file path {path!r} would put a file inside {parent!r}, which is a file "
                    "of this dataset; choose another path"
                )


class DatasetStore:
    """Datasets with their metadata in PostgreSQL and their files in a ``BlobStore``."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        blobs: BlobStore,
        *,
        sync_attempts: int = 5,
    ) -> None:
        self._sessions = sessions
        self.blobs = blobs
        self._sync_attempts = sync_attempts

    async def create_dataset(self, name: str) -> DatasetInfo:
        """Create an empty dataset; ``Conflict`` if the name is taken."""
        validate_name(name)
        statement = (
            insert(Dataset)
            .values(name=name)
            .on_conflict_do_nothing(index_elements=[Dataset.name])
            .returning(Dataset.id, Dataset.created_at)
        )
        async with self._sessions() as session, session.begin():
            row = (await session.execute(statement)).one_or_none()
        if row is None:
            raise Conflict(
                f"dataset {name!r} already exists; add files to it or choose another name"
            )
        return DatasetInfo(row.id, name, row.created_at, None)

    async def get_dataset(self, name: str) -> DatasetInfo:
        """One dataset; ``NotFound`` if there is none by that name."""
        validate_name(name)
        async with self._sessions() as session:
            rows = (await session.execute(self._summaries().where(Dataset.name == name))).all()
        if not rows:
            raise _no_dataset(name)
        return DatasetInfo(*rows[0])

    async def list_datasets(self) -> list[DatasetInfo]:
        """Every dataset, by name."""
        async with self._sessions() as session:
            rows = (await session.execute(self._summaries().order_by(Dataset.name))).all()
        return [DatasetInfo(*row) for row in rows]

    @staticmethod
    def _summaries() -> Select[uuid.UUID, str, datetime, int | None]:
        # Correlated: one primary-key index probe per dataset, never an aggregate of them all.
        latest = (
            select(func.max(DatasetVersion.version))
            .where(DatasetVersion.dataset_id == Dataset.id)
            .scalar_subquery()
        )
        return select(Dataset.id, Dataset.name, Dataset.created_at, latest)

    async def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of the dataset, oldest first."""
        validate_name(name)
        async with self._sessions() as session:
            dataset_id = await _dataset_id(session, name)
            rows = await session.scalars(
                select(DatasetVersion)
                .where(DatasetVersion.dataset_id == dataset_id)
                .order_by(DatasetVersion.version)
            )
            return [_version_info(name, row) for row in rows]

    async def get_version(self, name: str, version: int | None = None) -> VersionInfo:
        """Version ``version`` of the dataset, or its latest; ``NotFound`` naming what exists."""
        validate_name(name)
        async with self._sessions() as session:
            dataset_id = await _dataset_id(session, name)
            latest = await session.scalar(
                select(func.max(DatasetVersion.version)).where(
                    DatasetVersion.dataset_id == dataset_id
                )
            )
            if latest is None:
                raise NotFound(
                    f"dataset {name!r} has no versions yet; add files to create version 1"
                )
            wanted = latest if version is None else version
            # A number past the column's int4 cannot name a version (and cannot be queried).
            row = (
                await session.get(DatasetVersion, (dataset_id, wanted))
                if 1 <= wanted <= MAX_VERSION
                else None
            )
            if row is None:
                # Versions are numbered 1, 2, … without gaps: the range names them all.
                span = "only version 1" if latest == 1 else f"versions 1 to {latest}"
                raise NotFound(f"dataset {name!r} has no version {version}; it has {span}")
            return _version_info(name, row)

    async def resolve(self, reference: str | DatasetRef) -> ResolvedFile:
        """The file a reference ``<dataset>/<path>`` or ``<dataset>@<n>/<path>`` names."""
        ref = parse_reference(reference) if isinstance(reference, str) else reference
        version = await self.get_version(ref.dataset, ref.version)
        return version.file(ref.path)

    async def add_files(
        self,
        name: str,
        files: Mapping[str, FileSource],
        *,
        max_bytes: int | None = None,
    ) -> VersionInfo:
        """Store ``files`` ({path: content}) as a new version that keeps every other file.

        Paths and the dataset are checked before any byte is stored; ``max_bytes`` limits each
        file (``PayloadTooLarge``). Concurrent calls get consecutive versions, each built on
        the one before it.
        """
        validate_name(name)
        if not files:
            raise BadRequest("no files given; pass at least one path with its content")
        for path in files:
            validate_path(path)
        await self.get_dataset(name)
        entries: dict[str, FileEntry] = {}
        for path, source in files.items():
            blob = await self.blobs.put(source, max_bytes=max_bytes, label=f"file {path!r}")
            entries[path] = FileEntry(path, blob.size, blob.sha256)
        return await self._commit(name, entries.values())

    async def _commit(self, name: str, entries: Iterable[FileEntry]) -> VersionInfo:
        new = {entry.path: entry for entry in entries}
        for attempt in range(1, self._sync_attempts + 1):
            try:
                return await self._commit_once(name, new)
            except IntegrityError as exc:
                # The row lock serialises syncs; this only guards writers that skip it.
                if _VERSION_PK not in str(exc.orig) or attempt == self._sync_attempts:
                    raise
        raise AssertionError("unreachable")

    async def _commit_once(self, name: str, new: Mapping[str, FileEntry]) -> VersionInfo:
        async with self._sessions() as session, session.begin():
            return await self.add_version_in(session, name, new.values())

    async def add_version_in(
        self, session: AsyncSession, name: str, entries: Iterable[FileEntry]
    ) -> VersionInfo:
        """Record a new version of ``name`` with ``entries`` (blobs already stored) in the
        caller's transaction: it exists exactly when the caller's other writes commit."""
        new = {entry.path: entry for entry in entries}
        for path in new:
            validate_path(path)
        # FOR NO KEY UPDATE: serialises syncs of this dataset without blocking inserts
        # that reference it (batch jobs hold FOR KEY SHARE through their foreign key).
        dataset_id = await session.scalar(
            select(Dataset.id).where(Dataset.name == name).with_for_update(key_share=True)
        )
        if dataset_id is None:
            raise _no_dataset(name)
        previous = await session.scalar(
            select(DatasetVersion)
            .where(DatasetVersion.dataset_id == dataset_id)
            .order_by(DatasetVersion.version.desc())
            .limit(1)
        )
        manifest = {}
        if previous is not None:
            manifest = {f.path: f for f in map(FileEntry.from_json, previous.files)}
        manifest.update(new)
        paths = sorted(manifest)
        _check_tree(paths)
        row = DatasetVersion(
            dataset_id=dataset_id,
            version=1 if previous is None else previous.version + 1,
            files=[manifest[path].to_json() for path in paths],
        )
        session.add(row)
        await session.flush()
        return _version_info(name, row)

    async def open_file(
        self, file: str | DatasetRef | ResolvedFile, *, chunk_size: int = CHUNK_SIZE
    ) -> AsyncIterator[bytes]:
        """The file's bytes in chunks (constant memory); a reference is resolved first."""
        resolved = file if isinstance(file, ResolvedFile) else await self.resolve(file)
        return await self.blobs.stream(resolved.sha256, chunk_size=chunk_size)

    async def read_file(self, file: str | DatasetRef | ResolvedFile) -> bytes:
        """The whole file in memory: for small files only; ``open_file`` streams."""
        return b"".join([chunk async for chunk in await self.open_file(file)])

    def open_sync(self, file: ResolvedFile) -> IO[bytes]:
        """The file as a blocking binary file object, for worker threads (e.g. pyarrow)."""
        return self.blobs.open(file.sha256)


async def _dataset_id(session: AsyncSession, name: str) -> uuid.UUID:
    dataset_id = await session.scalar(select(Dataset.id).where(Dataset.name == name))
    if dataset_id is None:
        raise _no_dataset(name)
    return dataset_id


def _no_dataset(name: str) -> NotFound:
    return NotFound(f"dataset {name!r} does not exist; create it first")


def _version_info(name: str, row: DatasetVersion) -> VersionInfo:
    files = tuple(FileEntry.from_json(raw) for raw in row.files)
    return VersionInfo(name, row.version, row.created_at, files)
