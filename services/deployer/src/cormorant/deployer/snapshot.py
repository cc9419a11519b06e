"""Content-addressed snapshots of an endpoint's source: a deterministic tar.gz and its copy.

A version's code is archived once under ``<data_dir>/archives/<sha256>.tar.gz`` and extracted
once to ``<data_dir>/versions/<sha256>/``; replicas run from the extracted copy, so a rerun or
a rollback serves exactly the code that was deployed, whatever happened to the user's folder.
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
from typing import BinaryIO

from cormorant.common.errors import BadRequest, CormorantError

EXCLUDED_DIRS = frozenset({".git", "__pycache__"})
"""Directories never archived: history and byte-code are not the model."""

_DIGEST_RE = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An archived source: its digest, the archive and the extracted directory."""

    digest: str
    archive: Path
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
    """Archives and extracted copies under the data directory, named by digest."""

    def __init__(self, data_dir: Path) -> None:
        self.archives = data_dir / "archives"
        self.versions = data_dir / "versions"

    def archive_path(self, digest: str) -> Path:
        """Where the archive of ``digest`` lives."""
        return self.archives / f"{_checked(digest)}.tar.gz"

    def directory(self, digest: str) -> Path:
        """Where the archive of ``digest`` is extracted."""
        return self.versions / _checked(digest)

    async def snapshot(self, source: Path) -> Snapshot:
        """Archive ``source`` (unless the same content is archived already) and extract it."""
        return await asyncio.to_thread(self._snapshot, source)

    async def extracted(self, digest: str) -> Snapshot:
        """The snapshot of ``digest``, extracting its archive again if the copy was removed."""
        return await asyncio.to_thread(self._extracted, digest)

    def _snapshot(self, source: Path) -> Snapshot:
        if not source.is_dir():
            raise BadRequest(f"source: {str(source)!r} is not a directory")
        self.archives.mkdir(parents=True, exist_ok=True)
        partial = self.archives / f".partial-{uuid.uuid4().hex}"
        try:
            with partial.open("wb") as out:
                digest = write_archive(source, out)
            archive = self.archive_path(digest)
            if archive.exists():
                partial.unlink()
            else:
                # Atomic: a reader never sees a half-written archive under its final name.
                os.replace(partial, archive)
        finally:
            partial.unlink(missing_ok=True)
        return self._extracted(digest)

    def _extracted(self, digest: str) -> Snapshot:
        archive = self.archive_path(digest)
        directory = self.directory(digest)
        if directory.is_dir():
            return Snapshot(digest, archive, directory)
        if not archive.is_file():
            raise SnapshotMissing(
                f"the source archive {archive} is missing; deploy the source again"
            )
        self.versions.mkdir(parents=True, exist_ok=True)
        partial = self.versions / f".partial-{uuid.uuid4().hex}"
        try:
            with tarfile.open(archive, "r:gz") as tar:
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
        return Snapshot(digest, archive, directory)


def _checked(digest: str) -> str:
    if _DIGEST_RE.fullmatch(digest) is None:
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest
