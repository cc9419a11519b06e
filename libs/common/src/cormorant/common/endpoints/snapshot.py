"""Content-addressed snapshots of an endpoint's source: a deterministic tar.gz and its copy.

A version's code is archived once as a blob of the archives store (``CORMORANT_ARCHIVES_URL``:
a directory, ``s3://``…; its sha256 is the version's digest) and extracted once to
``<data_dir>/versions/<sha256>/``; replicas run from the extracted copy, so a rerun or a
rollback serves exactly the code that was deployed, whatever happened to the user's folder.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import re
import shutil
import stat
import tarfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from cormorant.common.datasets.blobs import BlobMissing, BlobStore
from cormorant.common.errors import BadRequest, CormorantError

EXCLUDED_DIRS = frozenset({".git", "__pycache__"})
"""Directories never archived: history and byte-code are not the model."""

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An archived source: its digest, the archive's URL and the extracted directory."""

    digest: str
    archive: str
    directory: Path


class SnapshotMissing(CormorantError):
    """A version's archive is gone from the data directory."""

    code = "snapshot_missing"


class _HashingWriter:
    """A binary sink that hashes what it forwards to a file."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()


def _entries(root: Path) -> Iterator[tuple[str, Path]]:
    """``(archive name, path)`` of every file and directory under ``root``, sorted."""
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_DIRS)
        base = Path(current)
        for name in dirs:
            path = base / name
            # A linked directory could loop or reach outside the source: never followed.
            if not path.is_symlink():
                yield path.relative_to(root).as_posix(), path
        for name in sorted(files):
            path = base / name
            if path.suffix == ".pyc":
                continue
            yield path.relative_to(root).as_posix(), path


def write_archive(source: Path, out: BinaryIO) -> str:
    """Write the deterministic tar.gz of ``source`` to ``out``; the sha256 hex digest."""
    sink = _HashingWriter(out)
    # mtime=0 and no file name in the gzip header: the bytes depend on the content only.
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=sink, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path in _entries(source):
            info = tarfile.TarInfo(name)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            try:
                st = path.stat()  # follows a linked file: its content is what the model reads
            except OSError:
                continue  # a dangling link has nothing to archive
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                # Never wider than 0644: a replica reads code, it does not execute files.
                info.mode = 0o644
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
    return sink.sha.hexdigest()


class SnapshotStore:
    """Archives in a blob store and their extracted copies under the data directory."""

    def __init__(self, data_dir: Path, archives: BlobStore | None = None) -> None:
        self.archives = archives or BlobStore(str((data_dir / "archives").resolve()))
        self.versions = data_dir / "versions"
        # Where archives lived before the blob store: still read, never written.
        self._legacy = data_dir / "archives"

    def archive_url(self, digest: str) -> str:
        """The URL of the archive of ``digest``."""
        return self.archives.blob_url(_checked(digest))

    def directory(self, digest: str) -> Path:
        """Where the archive of ``digest`` is extracted."""
        return self.versions / _checked(digest)

    async def snapshot(self, source: Path) -> Snapshot:
        """Archive ``source`` (unless the same content is archived already) and extract it."""
        partial = self.versions / f".partial-{uuid.uuid4().hex}.tar.gz"
        try:
            digest = await asyncio.to_thread(_write_file, source, partial)
            await self.archives.prepare()
            await self.archives.put(partial, label="source archive")
            return await asyncio.to_thread(self._extract, digest, partial)
        finally:
            partial.unlink(missing_ok=True)

    async def extracted(self, digest: str) -> Snapshot:
        """The snapshot of ``digest``, extracting its archive again if the copy was removed."""
        return await asyncio.to_thread(self._extract, digest, None)

    def _extract(self, digest: str, archive: Path | None) -> Snapshot:
        directory = self.directory(digest)
        snapshot = Snapshot(digest, self.archive_url(digest), directory)
        if directory.is_dir():
            return snapshot
        self.versions.mkdir(parents=True, exist_ok=True)
        partial = self.versions / f".partial-{uuid.uuid4().hex}"
        try:
            with self._open(digest, archive) as fh, tarfile.open(fileobj=fh, mode="r:gz") as tar:
                tar.extractall(partial, filter="data")
            try:
                os.rename(partial, directory)
            except OSError:
                # Another create extracted the same digest first: theirs is identical.
                if not directory.is_dir():
                    raise
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)
        return snapshot

    def _open(self, digest: str, archive: Path | None) -> IO[bytes]:
        if archive is not None:
            return archive.open("rb")
        legacy = self._legacy / f"{digest}.tar.gz"
        if legacy.is_file():
            return legacy.open("rb")
        try:
            return self.archives.open(digest)
        except (BlobMissing, FileNotFoundError) as exc:
            raise SnapshotMissing(
                f"the source archive {self.archive_url(digest)} is missing; deploy the source again"
            ) from exc


def _write_file(source: Path, path: Path) -> str:
    if not source.is_dir():
        raise BadRequest(f"source: {str(source)!r} is not a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        return write_archive(source, out)


def _checked(digest: str) -> str:
    if _DIGEST_RE.fullmatch(digest) is None:
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest
