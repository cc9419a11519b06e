"""Multipart uploads streamed straight into dataset storage.

Starlette's form parser spools each file to a local temporary file first and cannot bound
its size; here the ``file`` part goes chunk by chunk into a ``BlobWriter`` (hashed on the
way), so an upload never sits whole in memory or on local disk, and the size limit answers
413 as soon as it is crossed, with the partial blob removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from cormorant.common.datasets import Blob, BlobStore, BlobWriter, validate_path
from cormorant.common.errors import BadRequest, PayloadTooLarge

if TYPE_CHECKING:
    # Declared for type checkers only: the module defines it under TYPE_CHECKING.
    from python_multipart.multipart import MultipartCallbacks

FILE_FIELD = "file"
PATH_FIELD = "path"
MAX_FIELD_BYTES = 4096
"""Largest ``path`` field accepted: a path is at most 1024 characters of up to 4 bytes."""

FORM_OVERHEAD = 64 * 1024
"""Bytes of the body beyond the file allowed for boundaries, part headers and the path."""

_HOW = "send the file as multipart/form-data in the field 'file' (e.g. curl -F file=@data.csv)"


@dataclass(slots=True)
class Upload:
    """A received upload: the stored content and where in the dataset it goes."""

    blob: Blob
    path: str


@dataclass(slots=True)
class _Part:
    name: str
    filename: str | None
    data: bytearray = field(default_factory=bytearray)


class _Receiver:
    """Turns the parser's callbacks into fields and pending file bytes."""

    def __init__(self, blobs: BlobStore, max_bytes: int) -> None:
        self.blobs = blobs
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.writer: BlobWriter | None = None
        self.pending: list[bytes] = []
        self.file_done = False
        self.ended = False
        self._part: _Part | None = None
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._part = None
        self._disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name.clear()
        self._header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition.decode("latin-1"))
        if b"name" not in options:
            raise BadRequest(f"a multipart part has no name; {_HOW}")
        name = _text(options[b"name"], "field name")
        filename = _text(options[b"filename"], "filename") if b"filename" in options else None
        if name not in (FILE_FIELD, PATH_FIELD):
            raise BadRequest(
                f"unknown form field {name!r}; the accepted fields are 'file' (the content) "
                "and 'path' (where it goes in the dataset, default: the file's name)"
            )
        if name in self.fields or (name == FILE_FIELD and self.writer is not None):
            raise BadRequest(f"form field {name!r} was sent twice; send one file per upload")
        self._part = _Part(name, filename)
        if name == FILE_FIELD:
            if PATH_FIELD in self.fields:
                # Known before the content arrives: refuse a bad path before storing anything.
                validate_path(self.fields[PATH_FIELD])
            self.filename = filename
            self.writer = self.blobs.writer(max_bytes=self.max_bytes, label="the uploaded file")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:
            return
        if part.name == FILE_FIELD:
            self.pending.append(data[start:end])
            return
        part.data += data[start:end]
        if len(part.data) > MAX_FIELD_BYTES:
            raise BadRequest(f"form field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes")

    def on_part_end(self) -> None:
        part = self._part
        if part is None:
            return
        if part.name == FILE_FIELD:
            self.file_done = True
        else:
            self.fields[part.name] = _text(bytes(part.data), f"form field {part.name!r}")
        self._part = None

    def on_end(self) -> None:
        self.ended = True


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the {what} is not UTF-8 text; send it UTF-8 encoded") from exc


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise BadRequest(f"expected a multipart/form-data body; {_HOW}")
    return options[b"boundary"]


async def receive_upload(request: Request, blobs: BlobStore, *, max_bytes: int) -> Upload:
    """Store the request's ``file`` part (at most ``max_bytes``) and name its dataset path."""
    boundary = _boundary(request)
    limit = max_bytes + FORM_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(max_bytes)
    receiver = _Receiver(blobs, max_bytes)
    try:
        parser = MultipartParser(boundary, receiver.callbacks())
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise _too_large(max_bytes)
            parser.write(chunk)
            if receiver.pending:
                assert receiver.writer is not None
                for piece in receiver.pending:
                    await receiver.writer.write(piece)
                receiver.pending.clear()
        parser.finalize()
        if receiver.writer is None:
            raise BadRequest(f"the form has no field 'file'; {_HOW}")
        if not (receiver.ended and receiver.file_done):
            raise BadRequest("the upload ended before the multipart body was complete; resend it")
        path = receiver.fields.get(PATH_FIELD) or receiver.filename
        if not path:
            raise BadRequest(
                "the uploaded file has no name; send a filename or the form field 'path'"
            )
        validate_path(path)
        return Upload(await receiver.writer.commit(), path)
    except FormParserError as exc:
        raise BadRequest(f"the multipart body is malformed ({exc}); {_HOW}") from exc
    except PayloadTooLarge as exc:
        raise _too_large(max_bytes) from exc
    finally:
        # A no-op after commit; otherwise the partial blob is removed.
        if receiver.writer is not None:
            await receiver.writer.abort()


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the upload is larger than the limit of {max_bytes} bytes; send a smaller file "
        "(operators: CORMORANT_FEEDBACK_MAX_UPLOAD_BYTES)",
        details={"max_bytes": max_bytes},
    )
