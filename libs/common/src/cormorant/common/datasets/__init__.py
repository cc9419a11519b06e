"""Datasets: named, versioned collections of files, stored through fsspec.

blobs = BlobStore(settings.datasets_url)
await blobs.prepare()
store = DatasetStore(session_factory(engine), blobs)
await store.create_dataset("scores")
version = await store.add_files("scores", {"out/predictions.csv": Path("/tmp/p.csv")})
async for chunk in await store.open_file("scores@1/out/predictions.csv"): ...
"""

from cormorant.common.datasets.blobs import (
    CHUNK_SIZE,
    Blob,
    BlobMissing,
    BlobStore,
    BlobWriter,
    FileSource,
)
from cormorant.common.datasets.refs import (
    MAX_NAME_LENGTH,
    MAX_PATH_LENGTH,
    DatasetRef,
    parse_reference,
    validate_name,
    validate_path,
)
from cormorant.common.datasets.store import (
    DatasetInfo,
    DatasetStore,
    FileEntry,
    ResolvedFile,
    VersionInfo,
)
from cormorant.common.settings import default_datasets_url

__all__ = [
    "CHUNK_SIZE",
    "MAX_NAME_LENGTH",
    "MAX_PATH_LENGTH",
    "Blob",
    "BlobMissing",
    "BlobStore",
    "BlobWriter",
    "DatasetInfo",
    "DatasetRef",
    "DatasetStore",
    "FileEntry",
    "FileSource",
    "ResolvedFile",
    "VersionInfo",
    "default_datasets_url",
    "parse_reference",
    "validate_name",
    "validate_path",
]
