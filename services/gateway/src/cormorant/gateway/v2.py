"""The Open Inference Protocol (KServe V2) over REST: ``/v2/...`` translated to ``inference.py``.

Bodies are JSON, or JSON followed by raw tensor bytes (the binary tensor data extension:
``Inference-Header-Content-Length`` names the JSON's length, an input with
``parameters.binary_data_size`` has its data in the bytes that follow, in input order; an output
is answered that way when its ``parameters.binary_data`` or the request's
``parameters.binary_data_output`` is true). Errors take the protocol's form,
``{"error": "<message>"}``, with the status of the underlying error.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cormorant.common.errors import CormorantError
from cormorant.gateway import raw_tensors
from cormorant.gateway.errors import BodyTooLarge
from cormorant.gateway.inference import (
    InferenceRequest,
    InferenceResponse,
    InferenceService,
    InputTensor,
    InvalidTensor,
    RequestedOutput,
    flatten,
    parameter_flag,
)

HEADER_LENGTH = "inference-header-content-length"
JSON = "application/json"
OCTETS = "application/octet-stream"


class Tensor(BaseModel):
    """A named tensor: its shape, datatype and values (flat or nested, row-major)."""

    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    data: Any = Field(
        default=None,
        description="The values, flat (row-major) or nested; absent when "
        "parameters.binary_data_size says they follow the JSON as raw bytes.",
    )
    parameters: dict[str, Any] | None = None


class RequestedOutputModel(BaseModel):
    """An output the caller wants, e.g. ``{"name": "prediction"}``."""

    name: str
    parameters: dict[str, Any] | None = None


class InferRequestModel(BaseModel):
    """An inference request: named tensors whose first dimension is the batch."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[Tensor] = Field(min_length=1)
    outputs: list[RequestedOutputModel] | None = None


class InferResponseModel(BaseModel):
    """An inference answer: one output per prediction (per key of object predictions)."""

    model_name: str
    model_version: str
    id: str
    outputs: list[Tensor]


class TensorMetadata(BaseModel):
    """Name, datatype and shape of a model's input or output (-1: any size)."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    """A model's versions, and its inputs and outputs as predict's signature describes them."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ProtocolError(BaseModel):
    """An error in the protocol's form."""

    error: str


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ProtocolError}
    for status in (400, 401, 403, 404, 409, 413, 500, 502, 503, 504)
}

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])


def _service(request: Request) -> InferenceService:
    service: InferenceService = request.app.state.inference
    return service


def protocol_error(exc: CormorantError, headers: dict[str, str] | None = None) -> JSONResponse:
    """``exc`` in the protocol's form."""
    return JSONResponse({"error": exc.message}, exc.status_code, headers)


async def _authorized(request: Request, slug: str) -> InferenceService:
    service = _service(request)
    await service.authorize(request.headers.get("authorization"), slug)
    return service


def _pinned(request: Request, version: str | None) -> str | None:
    return version or request.headers.get("x-cormorant-version", "").strip() or None


def _trace_headers(request: Request) -> list[tuple[bytes, bytes]] | None:
    pairs = [(k, v) for k, v in request.headers.raw if k in (b"traceparent", b"tracestate")]
    return pairs or None


@router.get("")
async def server_metadata(request: Request) -> dict[str, Any]:
    """The server's name, version and protocol extensions."""
    return _service(request).server_metadata()


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """The gateway process is up."""
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "Routing not loaded yet."}})
async def ready(request: Request) -> JSONResponse:
    """The gateway has its routing table and can serve."""
    ok = _service(request).server_ready()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


async def model_metadata(slug: str, request: Request, version: str | None = None) -> Response:
    """The model's versions, and its inputs and outputs from predict's signature."""
    try:
        service = await _authorized(request, slug)
        metadata = await service.model_metadata(
            slug, _pinned(request, version), trace_headers=_trace_headers(request)
        )
    except CormorantError as exc:
        return protocol_error(exc)
    return JSONResponse(metadata)


async def model_ready(slug: str, request: Request, version: str | None = None) -> Response:
    """200 when a replica (of the version, if named) is ready to answer, 503 otherwise."""
    try:
        service = await _authorized(request, slug)
        ok = service.model_ready(slug, _pinned(request, version))
    except CormorantError as exc:
        return protocol_error(exc)
    return JSONResponse({"name": slug, "ready": ok}, status_code=200 if ok else 503)


async def infer(slug: str, request: Request, version: str | None = None) -> Response:
    """Predict each row of the inputs (first dimension: the batch); outputs stacked ``[N, ...]``."""
    try:
        service = await _authorized(request, slug)
        inference = parse_request(await request.body(), request.headers.get(HEADER_LENGTH))
        answer = await service.infer(
            slug,
            inference,
            version=_pinned(request, version),
            user=request.headers.get("x-cormorant-user", "").strip() or None,
            trace_headers=_trace_headers(request),
        )
    except CormorantError as exc:
        return protocol_error(exc)
    content, header_length = render_response(answer, inference.parameters)
    headers = {"x-request-id": answer.request_id, "x-cormorant-version": answer.model_version}
    if header_length is None:
        return Response(content, 200, headers, JSON)
    headers["inference-header-content-length"] = str(header_length)
    return Response(content, 200, headers, OCTETS)


def _inlined(schema: Any, definitions: dict[str, Any]) -> Any:
    """``schema`` with its local ``$defs`` references replaced by what they name."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inlined(definitions[ref.removeprefix("#/$defs/")], definitions)
        return {k: _inlined(v, definitions) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inlined(item, definitions) for item in schema]
    return schema


# The body is read by hand (it may carry raw tensor bytes after the JSON), so FastAPI does not
# see a body model: the document gets the JSON part's schema written out here.
_REQUEST_SCHEMA = InferRequestModel.model_json_schema()
_INFER_DOC: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {"schema": _inlined(_REQUEST_SCHEMA, _REQUEST_SCHEMA.get("$defs", {}))},
            OCTETS: {
                "schema": {"type": "string", "format": "binary"},
                "description": "The JSON (Inference-Header-Content-Length bytes), then the "
                "inputs' raw tensor data.",
            },
        },
    }
}

for prefix in ("/models/{slug}", "/models/{slug}/versions/{version}"):
    router.add_api_route(prefix, model_metadata, methods=["GET"], response_model=ModelMetadata,
                         responses=_ERRORS)  # fmt: skip
    router.add_api_route(prefix + "/ready", model_ready, methods=["GET"], responses=_ERRORS)
    router.add_api_route(prefix + "/infer", infer, methods=["POST"],
                         response_model=InferResponseModel, responses=_ERRORS,
                         openapi_extra=_INFER_DOC)  # fmt: skip


def parse_request(body: bytes, header_length: str | None) -> InferenceRequest:
    """A REST body (JSON, or JSON then raw tensor bytes) as an inference request."""
    binary = b""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise InvalidTensor(
                f"Inference-Header-Content-Length must be the JSON's length in bytes (at most "
                f"{len(body)}), not {header_length!r}"
            )
        split = int(header_length)
        body, binary = body[:split], body[split:]
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidTensor(f"the request is not valid JSON ({exc})") from exc
    try:
        parsed = InferRequestModel.model_validate(document)
    except ValueError as exc:
        raise InvalidTensor(f"the request is not an inference request: {exc}") from exc
    inputs = []
    offset = 0
    for tensor in parsed.inputs:
        parameters = tensor.parameters or {}
        size = parameters.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidTensor(
                    f"input {tensor.name!r}: binary_data_size {size!r} runs past the "
                    f"{len(binary)} byte(s) of binary data"
                )
            data = raw_tensors.decode(tensor.name, tensor.datatype, binary[offset : offset + size])
            offset += size
        elif tensor.data is None:
            raise InvalidTensor(f"input {tensor.name!r} has no data")
        else:
            data = flatten(tensor.data)
        inputs.append(InputTensor(tensor.name, tensor.datatype, tensor.shape, data, parameters))
    outputs = None
    if parsed.outputs is not None:
        outputs = [RequestedOutput(o.name, o.parameters or {}) for o in parsed.outputs]
    return InferenceRequest(inputs, parsed.id, parsed.parameters or {}, outputs)


def render_response(
    answer: InferenceResponse, parameters: dict[str, Any]
) -> tuple[bytes, int | None]:
    """The answer's body, and the JSON's length when raw output bytes follow it."""
    binary_default = parameter_flag(parameters, "binary_data_output") or False
    outputs = []
    raw = []
    for output in answer.outputs:
        requested = output.requested.parameters if output.requested is not None else None
        binary = parameter_flag(requested, "binary_data")
        item: dict[str, Any] = {
            "name": output.name, "datatype": output.datatype, "shape": output.shape,
        }  # fmt: skip
        if binary_default if binary is None else binary:
            data = raw_tensors.encode(output.datatype, output.data)
            item["parameters"] = {"binary_data_size": len(data)}
            raw.append(data)
        else:
            item["data"] = output.data
        outputs.append(item)
    head = {"model_name": answer.model_name, "model_version": answer.model_version}
    document = orjson.dumps({**head, "id": answer.id, "outputs": outputs})
    if not raw:
        return document, None
    return document + b"".join(raw), len(document)


class BodyLimit:
    """ASGI middleware: refuses ``/v2/`` request bodies larger than the predict limit (413)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Buffer and count a ``/v2/`` body before the app reads it; others pass untouched."""
        if scope["type"] != "http" or not scope["path"].startswith("/v2/"):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        try:
            for name, value in scope["headers"]:
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    raise BodyTooLarge(self.limit)
            while True:
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request":
                    break
                size += len(message.get("body", b""))
                if size > self.limit:
                    raise BodyTooLarge(self.limit)
                if not message.get("more_body", False):
                    break
        except BodyTooLarge as exc:
            response = protocol_error(exc)
            await response(scope, receive, send)
            return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)
