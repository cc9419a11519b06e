"""Content-addressed file storage through fsspec: every blob stored once, under its sha256.

Layout under the root URL::

    blobs/sha256/<first two hex digits>/<sha256>   immutable file contents
    tmp/<random>                                   writes in progress

A blob is written to ``tmp/`` while it is hashed, then moved to its address (or dropped when
that address already holds it), so a reader never sees a half-written blob. fsspec's calls
block; every one runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeAlias, cast

import fsspec  # type: ignore[import-untyped]

from cormorant.common.errors import CormorantError, PayloadTooLarge

CHUNK_SIZE = 1 << 20
"""Bytes per read or write: large enough for object stores, small enough to stay flat."""


@dataclass(frozen=True, slots=True)
class Blob:
    """Stored content: its sha256 (hex) and size in bytes."""

    sha256: str
    size: int


FileSource: TypeAlias = (
    os.PathLike[str] | bytes | bytearray | memoryview | IO[bytes] | AsyncIterable[bytes] | Blob
)
"""What a file's content can be given as: a local file, bytes, a binary stream (sync or
async), or a ``Blob`` already stored (e.g. by ``BlobStore.writer``)."""


class BlobMissing(CormorantError):
    """A manifest names content that storage no longer holds."""

    status_code = 500
    code = "dataset_blob_missing"


def _too_large(label: str, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{label} is larger than the limit of {max_bytes} bytes; send a smaller file",
        details={"max_bytes": max_bytes},
    )


def _chunks_of(stream: IO[bytes]) -> Iterable[bytes]:
    return iter(lambda: stream.read(CHUNK_SIZE), b"")


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in _chunks_of(source):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore:
    """Blobs under one fsspec URL (a local directory, ``memory://``, ``s3://``…)."""

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        fs, root = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        self.url = url
        self._fs: Any = fs
        self._root: str = root.rstrip("/")

    def _join(self, *parts: str) -> str:
        return "/".join((self._root, *parts))

    def blob_path(self, sha256: str) -> str:
        """Where the blob with this digest lives, in the filesystem's own path form."""
        return self._join("blobs", "sha256", sha256[:2], sha256)

    def blob_url(self, sha256: str) -> str:
        """The blob's URL, with its filesystem's protocol (``file://…``, ``s3://…``)."""
        return str(self._fs.unstrip_protocol(self.blob_path(sha256)))

    async def prepare(self) -> None:
        """Create the storage directories; fails early when the URL is unusable."""
        await asyncio.to_thread(self._fs.makedirs, self._join("tmp"), exist_ok=True)

    async def exists(self, sha256: str) -> bool:
        """Whether the blob with this digest is stored."""
        return await asyncio.to_thread(self._has, sha256)

    def _has(self, sha256: str) -> bool:
        return bool(self._fs.exists(self.blob_path(sha256)))

    def count(self) -> int:
        """How many blobs are stored (blocking; for tests and operators)."""
        root = self._join("blobs", "sha256")
        if not self._fs.exists(root):
            return 0
        return len(self._fs.find(root))

    # -- writing ---------------------------------------------------------------------------

    def writer(self, *, max_bytes: int | None = None, label: str = "file") -> BlobWriter:
        """A writer to push one blob's bytes into, chunk by chunk, then ``commit``."""
        return BlobWriter(self, max_bytes=max_bytes, label=label)

    async def put(
        self, source: FileSource, *, max_bytes: int | None = None, label: str = "file"
    ) -> Blob:
        """Store ``source`` (see ``FileSource``) unless identical content is already stored."""
        if isinstance(source, Blob):
            if not await self.exists(source.sha256):
                raise BlobMissing(f"{label}: blob {source.sha256} is not in {self.url}")
            return source
        if isinstance(source, str):
            # A str could be a path or the content itself; guessing wrong would store garbage.
            raise TypeError(f"{label}: pass a pathlib.Path for a local file or bytes for content")
        if isinstance(source, bytes | bytearray | memoryview):
            return await asyncio.to_thread(self._put_bytes, bytes(source), max_bytes, label)
        if isinstance(source, os.PathLike):
            return await asyncio.to_thread(self._put_path, Path(source), max_bytes, label)
        if hasattr(source, "read"):
            chunks = _chunks_of(cast(IO[bytes], source))
            return await asyncio.to_thread(self._write_chunks, chunks, max_bytes, label)
        if hasattr(source, "__aiter__"):
            async with self.writer(max_bytes=max_bytes, label=label) as writer:
                async for chunk in source:
                    await writer.write(chunk)
                return await writer.commit()
        raise TypeError(f"{label}: cannot store a {type(source).__name__}; see FileSource")

    def _put_bytes(self, data: bytes, max_bytes: int | None, label: str) -> Blob:
        if max_bytes is not None and len(data) > max_bytes:
            raise _too_large(label, max_bytes)
        sha256 = hashlib.sha256(data).hexdigest()
        if self._has(sha256):
            return Blob(sha256, len(data))
        return self._write_chunks([data], max_bytes, label)

    def _put_path(self, path: Path, max_bytes: int | None, label: str) -> Blob:
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise _too_large(label, max_bytes)
        # Hashing first costs a read but saves the write when the content is already stored,
        # the common case when a sync repeats unchanged files.
        sha256 = _hash_file(path)
        if self._has(sha256):
            return Blob(sha256, size)
        with path.open("rb") as source:
            # Addressed by what was copied, should the file have changed since it was hashed.
            return self._write_chunks(_chunks_of(source), max_bytes, label)

    def _write_chunks(self, chunks: Iterable[bytes], max_bytes: int | None, label: str) -> Blob:
        tmp = self._join("tmp", uuid.uuid4().hex)
        digest = hashlib.sha256()
        size = 0
        try:
            with self._fs.open(tmp, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise _too_large(label, max_bytes)
                    digest.update(chunk)
                    out.write(chunk)
            blob = Blob(digest.hexdigest(), size)
            self._settle(tmp, blob.sha256)
        except BaseException:
            self._discard(tmp)
            raise
        return blob

    def _settle(self, tmp: str, sha256: str) -> None:
        final = self.blob_path(sha256)
        if self._fs.exists(final):
            self._fs.rm(tmp)
            return
        self._fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        # Two writers of the same content may both get here: the later move replaces an
        # identical blob, which readers cannot tell apart.
        self._fs.mv(tmp, final)

    def _discard(self, tmp: str) -> None:
        # Never created, or already moved into place: nothing to remove then.
        with contextlib.suppress(OSError):
            self._fs.rm(tmp)

    # -- reading ---------------------------------------------------------------------------

    def open(self, sha256: str) -> IO[bytes]:
        """The blob as a binary file object (blocking: use it from a worker thread)."""
        try:
            handle: IO[bytes] = self._fs.open(self.blob_path(sha256), "rb")
        except FileNotFoundError as exc:
            raise BlobMissing(f"blob {sha256} is missing from {self.url}") from exc
        return handle

    async def stream(self, sha256: str, *, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks; opened before returning, so a missing blob raises here."""
        handle = await asyncio.to_thread(self.open, sha256)
        return _read_chunks(handle, chunk_size)


async def _read_chunks(handle: IO[bytes], chunk_size: int) -> AsyncIterator[bytes]:
    try:
        while chunk := await asyncio.to_thread(handle.read, chunk_size):
            yield chunk
    finally:
        handle.close()


class BlobWriter:
    """One blob written from pushed chunks, hashed as they come; stored only on ``commit``.

    Used as an async context manager, the partial write is removed unless committed.
    """

    def __init__(self, store: BlobStore, *, max_bytes: int | None, label: str) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._label = label
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self._size = 0
        self._tmp: str | None = None
        self._out: Any = None
        self._blob: Blob | None = None
        # A cancelled await leaves its thread running: abort waits for it before cleaning up.
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    async def write(self, data: bytes) -> None:
        """Append ``data``; ``PayloadTooLarge`` (and the partial write removed) past the limit."""
        self._size += len(data)
        if self._max_bytes is not None and self._size > self._max_bytes:
            await self.abort()
            raise _too_large(self._label, self._max_bytes)
        self._buffer += data
        if len(self._buffer) >= CHUNK_SIZE:
            data, self._buffer = bytes(self._buffer), bytearray()
            await self._in_thread(self._write_sync, data)

    async def commit(self) -> Blob:
        """Store what was written under its sha256 and return it."""
        if self._blob is None:
            data, self._buffer = bytes(self._buffer), bytearray()
            self._blob = await self._in_thread(self._commit_sync, data)
        return self._blob

    async def abort(self) -> None:
        """Drop what was written."""
        try:
            await self._in_thread(self._abort_sync)
        except asyncio.CancelledError:
            # Cleanup must still happen; it waits for any write in flight, then is quick.
            with self._lock:
                self._abort_sync()
            raise

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return func(*args)

        return await asyncio.to_thread(locked)

    def _write_sync(self, data: bytes) -> None:
        if self._out is None:
            self._tmp = self._store._join("tmp", uuid.uuid4().hex)
            self._out = self._store._fs.open(self._tmp, "wb")
        self._digest.update(data)
        self._out.write(data)

    def _commit_sync(self, data: bytes) -> Blob:
        self._write_sync(data)
        self._out.close()
        self._out = None
        blob = Blob(self._digest.hexdigest(), self._size)
        assert self._tmp is not None
        self._store._settle(self._tmp, blob.sha256)
        self._tmp = None
        return blob

    def _abort_sync(self) -> None:
        if self._out is not None:
            # The partial file is removed next whether or not it closes cleanly.
            with contextlib.suppress(OSError):
                self._out.close()
            self._out = None
        if self._tmp is not None:
            self._store._discard(self._tmp)
            self._tmp = None

    async def __aenter__(self) -> BlobWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._blob is None:
            await self.abort()
