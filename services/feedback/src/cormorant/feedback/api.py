"""HTTP routes of the datasets API (behind the gateway, which checks the admin key).

Handlers only translate HTTP to ``DatasetStore`` calls; errors are ``CormorantError``s
rendered by the platform's one handler.
"""

from __future__ import annotations

import mimetypes
from typing import Annotated, Any, TypedDict
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from cormorant.common.datasets import DatasetStore
from cormorant.common.lifespan import from_state
from cormorant.common.openapi import error_responses
from cormorant.feedback.schemas import (
    DatasetCreate,
    DatasetList,
    DatasetOut,
    VersionList,
    VersionOut,
)
from cormorant.feedback.settings import FeedbackSettings
from cormorant.feedback.state import FeedbackState
from cormorant.feedback.uploads import FILE_FIELD, PATH_FIELD, receive_upload

router = APIRouter(
    prefix="/api/v1/datasets", tags=["datasets"], responses=error_responses(409, 413)
)


class LifespanState(TypedDict):
    """What the app's lifespan yields for the routes."""

    datasets: DatasetStore
    settings: FeedbackSettings
    feedback: FeedbackState


StoreDep = Annotated[DatasetStore, Depends(from_state("datasets", DatasetStore))]
SettingsDep = Annotated[FeedbackSettings, Depends(from_state("settings", FeedbackSettings))]

# The body is parsed by hand (streamed into storage), so FastAPI cannot describe it itself.
_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary"},
                        PATH_FIELD: {
                            "type": "string",
                            "description": "Path in the dataset (default: the file's name).",
                        },
                    },
                }
            }
        },
    }
}


@router.post("", status_code=201)
async def create_dataset(body: DatasetCreate, store: StoreDep) -> DatasetOut:
    """Create an empty dataset; 409 if the name is taken."""
    return DatasetOut.of(await store.create_dataset(body.name))


@router.get("")
async def list_datasets(store: StoreDep) -> DatasetList:
    """Every dataset, by name, with its latest version number."""
    return DatasetList(datasets=[DatasetOut.of(d) for d in await store.list_datasets()])


@router.get("/{name}")
async def get_dataset(name: str, store: StoreDep) -> DatasetOut:
    """One dataset."""
    return DatasetOut.of(await store.get_dataset(name))


@router.get("/{name}/versions")
async def list_versions(name: str, store: StoreDep) -> VersionList:
    """Every version of the dataset, oldest first, each with its files."""
    return VersionList(versions=[VersionOut.of(v) for v in await store.list_versions(name)])


@router.get("/{name}/versions/{version}")
async def get_version(name: str, version: int, store: StoreDep) -> VersionOut:
    """One version of the dataset with its files."""
    return VersionOut.of(await store.get_version(name, version))


@router.get(
    "/{name}/versions/{version}/files/{path:path}",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_file(name: str, version: int, path: str, store: StoreDep) -> StreamingResponse:
    """The file's content, streamed."""
    resolved = (await store.get_version(name, version)).file(path)
    chunks = await store.open_file(resolved)
    media_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
    filename = path.rsplit("/", 1)[-1]
    fallback = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    headers = {
        "content-length": str(resolved.size),
        "content-disposition": (
            f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"
        ),
        # A version never changes: its content digest is a perfect entity tag.
        "etag": f'"{resolved.sha256}"',
    }
    return StreamingResponse(chunks, media_type=media_type, headers=headers)


@router.post("/{name}/files", status_code=201, openapi_extra=_UPLOAD_BODY)
async def upload_file(
    name: str, request: Request, store: StoreDep, settings: SettingsDep
) -> VersionOut:
    """Add the uploaded ``file`` (at ``path``, default its name) as a new version."""
    # An unknown dataset is refused before a byte of the upload is stored.
    await store.get_dataset(name)
    upload = await receive_upload(request, store.blobs, max_bytes=settings.max_upload_bytes)
    return VersionOut.of(await store.add_files(name, {upload.path: upload.blob}))
