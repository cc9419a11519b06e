"""Datasets on a migrated PostgreSQL and real fsspec storage (a local directory and memory)."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cormorant.common.datasets import (
    BlobMissing,
    BlobStore,
    DatasetRef,
    DatasetStore,
    parse_reference,
)
from cormorant.common.db import session_factory
from cormorant.common.errors import BadRequest, Conflict, NotFound, PayloadTooLarge


@pytest.fixture(params=["file", "memory"])
async def store(
    request: pytest.FixtureRequest, engine: AsyncEngine, tmp_path: Path
) -> AsyncIterator[DatasetStore]:
    """A store on this test's database, its files in a local directory or in memory."""
    if request.param == "file":
        url = f"file://{tmp_path}/datasets"
    else:
        url = f"memory://datasets-{uuid.uuid4().hex}"
    blobs = BlobStore(url)
    await blobs.prepare()
    yield DatasetStore(session_factory(engine), blobs)
    if request.param == "memory":
        blobs._fs.rm(blobs._root, recursive=True)


async def test_versions_are_immutable_numbered_and_deduplicated(
    store: DatasetStore, tmp_path: Path
) -> None:
    """Each sync is a new version holding every file; unchanged contents are stored once."""
    await store.create_dataset("scores")
    local = tmp_path / "b.csv"
    local.write_bytes(b"id,y\n1,2\n")

    v1 = await store.add_files("scores", {"a.csv": b"x\n1\n", "dir/b.csv": local})
    v2 = await store.add_files("scores", {"a.csv": b"x\n2\n"})
    v3 = await store.add_files("scores", {"dir/b.csv": io.BytesIO(local.read_bytes())})

    assert [v.version for v in (v1, v2, v3)] == [1, 2, 3]
    assert [f.path for f in v2.files] == ["a.csv", "dir/b.csv"]
    assert v2.file("dir/b.csv").sha256 == v1.file("dir/b.csv").sha256
    assert v3.files == v2.files
    # Three distinct contents across three versions of two files each.
    assert await asyncio.to_thread(store.blobs.count) == 3

    versions = await store.list_versions("scores")
    assert [(v.version, v.files) for v in versions] == [(1, v1.files), (2, v2.files), (3, v3.files)]
    assert versions[0].created_at <= versions[2].created_at
    assert await store.read_file("scores@1/a.csv") == b"x\n1\n"
    assert await store.read_file("scores/a.csv") == b"x\n2\n"
    assert await store.read_file("scores@1/dir/b.csv") == b"id,y\n1,2\n"

    [info] = await store.list_datasets()
    assert (info.name, info.latest_version) == ("scores", 3)
    assert info == await store.get_dataset("scores")


async def test_references_resolve_and_errors_name_what_exists(store: DatasetStore) -> None:
    """`<dataset>/<path>` is the latest version; unknown versions and paths list the real ones."""
    await store.create_dataset("refs")
    with pytest.raises(NotFound, match="no versions yet"):
        await store.resolve("refs/a.txt")
    await store.add_files("refs", {"a.txt": b"one"})
    await store.add_files("refs", {"b.txt": b"two"})

    latest = await store.resolve("refs/a.txt")
    assert (latest.version, latest.size, latest.reference) == (2, 3, "refs@2/a.txt")
    # Blocking access for worker threads (pyarrow reads CSVs through such a file object).
    handle = await asyncio.to_thread(store.open_sync, latest)
    with handle:
        assert await asyncio.to_thread(handle.read) == b"one"
    assert (await store.resolve(DatasetRef("refs", "a.txt", 1))).version == 1

    with pytest.raises(NotFound, match="has no version 7; it has versions 1 to 2"):
        await store.resolve("refs@7/a.txt")
    with pytest.raises(NotFound, match=r"no file 'b.txt'; its files are 'a.txt'"):
        await store.resolve("refs@1/b.txt")
    with pytest.raises(NotFound, match="dataset 'nope' does not exist"):
        await store.resolve("nope/a.txt")
    for bad in ("refs", "refs@0/a.txt", "refs@x/a.txt", "/a.txt", "refs/../a.txt"):
        with pytest.raises(BadRequest):
            parse_reference(bad)


UNSAFE_PATHS = [
    ("../etc/passwd", r"must not contain '\.\.'"),
    ("a/../../b", r"must not contain '\.\.'"),
    ("/etc/passwd", "must be relative"),
    ("a\\b.csv", "backslash"),
    ("a\x00b", "NUL"),
    ("a\nb", "control character"),
    ("a//b", "empty segment"),
    ("a/", "empty segment"),
    ("./a", "'.' segments"),
    ("", "empty"),
]


async def test_unsafe_paths_are_refused_before_anything_is_stored(store: DatasetStore) -> None:
    """A traversal or malformed path is a BadRequest; no blob, no version."""
    await store.create_dataset("safe")
    for path, message in UNSAFE_PATHS:
        with pytest.raises(BadRequest, match=message):
            await store.add_files("safe", {"ok.csv": b"fine", path: b"evil"})
    assert await store.list_versions("safe") == []
    assert await asyncio.to_thread(store.blobs.count) == 0


async def test_names_duplicates_and_unknown_datasets(store: DatasetStore) -> None:
    """Names follow [a-z0-9][a-z0-9-_]* up to 64; a taken name is a Conflict."""
    for bad in ("", "Upper", "-lead", "sp ace", "a/b", "x" * 65):
        with pytest.raises(BadRequest, match="dataset name"):
            await store.create_dataset(bad)
    await store.create_dataset("a" * 64)
    await store.create_dataset("ok_name-2")
    with pytest.raises(Conflict, match="already exists"):
        await store.create_dataset("ok_name-2")
    with pytest.raises(NotFound, match="create it first"):
        await store.add_files("missing", {"a": b"1"})
    with pytest.raises(NotFound):
        await store.list_versions("missing")
    assert [d.name for d in await store.list_datasets()] == ["a" * 64, "ok_name-2"]


async def test_a_file_cannot_also_be_a_directory(store: DatasetStore) -> None:
    """`a` and `a/b` cannot both be files: the dataset could not be downloaded to disk."""
    await store.create_dataset("tree")
    await store.add_files("tree", {"a": b"1"})
    with pytest.raises(BadRequest, match="inside 'a'"):
        await store.add_files("tree", {"a/b": b"2"})
    assert [v.version for v in await store.list_versions("tree")] == [1]


async def test_concurrent_syncs_get_consecutive_versions(store: DatasetStore) -> None:
    """Syncs racing on one dataset are serialised: 1..n, each keeping the files before it."""
    await store.create_dataset("race")
    n = 8
    results = await asyncio.gather(
        *(store.add_files("race", {f"part-{i}.csv": f"{i}\n".encode()}) for i in range(n))
    )
    assert sorted(v.version for v in results) == list(range(1, n + 1))
    for version in results:
        assert len(version.files) == version.version
    latest = await store.get_version("race")
    assert [f.path for f in latest.files] == sorted(f"part-{i}.csv" for i in range(n))


async def test_streams_limits_and_missing_blobs(store: DatasetStore, tmp_path: Path) -> None:
    """Async streams are stored in chunks and read back in chunks; limits leave nothing behind."""
    await store.create_dataset("big")
    block = bytes(range(256)) * 4096  # 1 MiB

    async def upload(blocks: int) -> AsyncIterator[bytes]:
        for _ in range(blocks):
            yield block

    # Pushed through a writer (as an upload or a job's output is), then committed by its blob.
    async with store.blobs.writer() as writer:
        async for chunk in upload(3):
            await writer.write(chunk)
        blob = await writer.commit()
    version = await store.add_files("big", {"big.bin": blob})
    assert version.file("big.bin").size == 3 * len(block)
    chunks = [c async for c in await store.open_file("big/big.bin", chunk_size=256 * 1024)]
    assert len(chunks) == 12
    assert b"".join(chunks) == block * 3

    with pytest.raises(PayloadTooLarge, match="larger than the limit"):
        await store.add_files("big", {"more.bin": upload(3)}, max_bytes=2 * len(block))
    large = tmp_path / "large.bin"
    large.write_bytes(block)
    with pytest.raises(PayloadTooLarge):
        await store.add_files("big", {"more.bin": large}, max_bytes=10)
    with pytest.raises(TypeError, match=r"pathlib\.Path"):
        await store.add_files("big", {"more.bin": "a string"})  # type: ignore[dict-item]
    assert [v.version for v in await store.list_versions("big")] == [1]
    assert await asyncio.to_thread(store.blobs._fs.ls, store.blobs._join("tmp")) == []

    streamed = await store.add_files("big", {"small.bin": upload(1)})
    assert streamed.file("small.bin").size == len(block)

    resolved = await store.resolve("big/big.bin")
    store.blobs._fs.rm(store.blobs.blob_path(resolved.sha256))
    with pytest.raises(BlobMissing, match="missing"):
        await store.open_file(resolved)
