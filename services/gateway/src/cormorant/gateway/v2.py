"""The Open Inference Protocol (KServe V2) over the same predict path as ``/api/v1``.

``POST /v2/models/{slug}/infer`` turns the request's tensors into ``input_params`` (one
input: its data in its shape, as nested lists; several: the list of them, spread as positional
arguments) and the prediction back into one output tensor named ``prediction``, whose
datatype is read from the values (BOOL, INT64, FP64, else BYTES).
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cormorant.common.errors import BadRequest, CormorantError
from cormorant.common.openapi import error_responses
from cormorant.gateway.errors import BodyTooLarge
from cormorant.gateway.prediction_log import is_unanswered
from cormorant.gateway.proxy import Answer, PredictPath
from cormorant.gateway.routing import RoutingTable

PLATFORM = "cormorant"
OUTPUT_NAME = "prediction"


class Tensor(BaseModel):
    """A named tensor: its shape, datatype and values (flat or nested, row-major)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    shape: list[Annotated[int, Field(ge=0)]]
    datatype: str
    data: Any = Field(description="The values, flat (row-major) or nested.")


class InferRequest(BaseModel):
    """An inference request: one tensor per predict argument."""

    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    inputs: list[Tensor] = Field(min_length=1)


class InferResponse(BaseModel):
    """An inference answer: the prediction as one output tensor."""

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
    """What a model is: its versions and, loosely typed, its inputs and outputs."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    """Whether a model has a replica ready to answer."""

    name: str
    ready: bool


def _path(request: Request) -> PredictPath:
    path: PredictPath = request.app.state.predict_path
    return path


async def require_endpoint_token(slug: str, request: Request) -> str:
    """Dependency: the caller holds ``slug``'s endpoint token; 401/403 otherwise."""
    await _path(request).credentials.check_predict(request.headers.get("authorization"), slug)
    return slug


Slug = Annotated[str, Depends(require_endpoint_token)]

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])


@router.get("/health/live")
async def live() -> dict[str, bool]:
    """The gateway process is up."""
    return {"live": True}


@router.get("/health/ready", responses={503: {"description": "Routing not loaded yet."}})
async def ready(request: Request) -> JSONResponse:
    """The gateway has its routing table and can serve."""
    table: RoutingTable = request.app.state.routing
    return JSONResponse({"ready": table.loaded}, status_code=200 if table.loaded else 503)


_MODEL_ERRORS = error_responses(401, 403)


@router.get("/models/{slug}", responses=_MODEL_ERRORS)
async def model_metadata(slug: Slug, request: Request) -> ModelMetadata:
    """The model's versions and loosely typed inputs and outputs."""
    route = _path(request).route(slug)
    return ModelMetadata(
        name=slug,
        versions=route.versions(),
        platform=PLATFORM,
        inputs=[TensorMetadata(name="input", datatype="BYTES", shape=[-1])],
        outputs=[TensorMetadata(name=OUTPUT_NAME, datatype="BYTES", shape=[-1])],
    )


@router.get("/models/{slug}/ready", responses={**_MODEL_ERRORS, 503: {"model": ModelReady}})
async def model_ready(slug: Slug, request: Request) -> JSONResponse:
    """200 when a replica is ready to answer, 503 otherwise."""
    route = _path(request).route(slug)
    ok = bool(route.replicas)
    return JSONResponse({"name": slug, "ready": ok}, status_code=200 if ok else 503)


async def infer(slug: Slug, body: InferRequest, request: Request) -> Response:
    """Run the model on the request's tensors; the answer is the prediction as a tensor."""
    path = _path(request)
    route = path.route(slug)
    params = to_input_params(body.inputs)
    request_id = uuid.uuid4().hex
    started = time.perf_counter()
    status, version = 500, ""
    answer: Answer | None = None
    trace_headers = _trace_headers(request)
    path.metrics.in_flight_now += 1
    try:
        answer = await path.open(
            route,
            orjson.dumps({"input_params": params}),
            request_id.encode(),
            accept=b"application/json",
            trace_headers=trace_headers,
        )
        version = answer.version
        status = answer.status
        content = await _read_all(path, answer)
        headers = {"x-request-id": request_id, "x-cormorant-version": version}
        if status >= 400:
            # The worker's own error, as it said it.
            return Response(content, status, headers, media_type="application/json")
        prediction = _prediction(content, answer)
        output = InferResponse(
            model_name=slug,
            model_version=version,
            id=body.id or request_id,
            outputs=[to_tensor(prediction)],
        )
        return Response(
            output.__pydantic_serializer__.to_json(output), 200, headers, "application/json"
        )
    except CormorantError as exc:
        status = exc.status_code
        if answer is None and is_unanswered(status):
            path.prediction_log.unanswered(
                route,
                request_id=request_id,
                status=status,
                error=exc,
                started=started,
                input_value=params,
                trace_headers=trace_headers,
            )
        raise
    finally:
        path.metrics.in_flight_now -= 1
        path.metrics.observe(slug, version, status, time.perf_counter() - started)


# Bodies without a Content-Type are JSON too: FastAPI's strict default guards cookie-carried
# requests from cross-site forms, and this route takes a bearer token, never a cookie.
router.add_api_route(
    "/models/{slug}/infer",
    infer,
    methods=["POST"],
    strict_content_type=False,
    # As predict: the replica's own errors pass through, the gateway's are its proxy's.
    responses=error_responses(401, 403, 409, 413, 422, 500, 502, 503, 504),
)


async def _read_all(path: PredictPath, answer: Answer) -> bytes:
    parts = []
    error: BaseException | None = None
    try:
        while (data := await path.read(answer)) is not None:
            parts.append(data)
    except BaseException as exc:
        error = exc
        raise
    finally:
        path.finish(answer, error)
    return b"".join(parts)


def _prediction(content: bytes, answer: Answer) -> Any:
    if answer.streaming:
        # A generator's chunks, gathered: V2 has no streaming answer.
        chunks = []
        for line in content.splitlines():
            if line.startswith(b"data: "):
                line = line[6:]
            if not line.strip() or line.startswith(b"event: "):
                continue
            item = orjson.loads(line)
            if "error" in item:
                message = item["error"].get("message", "the prediction failed")
                raise CormorantError(f"the model's stream failed: {message}")
            chunks.append(item.get("prediction"))
        return chunks
    return orjson.loads(content).get("prediction")


def _trace_headers(request: Request) -> list[tuple[bytes, bytes]] | None:
    pairs = [(k, v) for k, v in request.headers.raw if k in (b"traceparent", b"tracestate")]
    return pairs or None


def to_input_params(inputs: list[Tensor]) -> Any:
    """``input_params`` for the inputs: one input's values in its shape, or a list of them."""
    shaped = [_reshape(tensor) for tensor in inputs]
    return shaped[0] if len(shaped) == 1 else shaped


def _reshape(tensor: Tensor) -> Any:
    flat = list(_flatten(tensor.data))
    size = math.prod(tensor.shape)
    if size != len(flat):
        raise BadRequest(
            f"input {tensor.name!r}: shape {tensor.shape} holds {size} value(s), "
            f"but data has {len(flat)}"
        )
    if not tensor.shape:
        return flat[0]
    return _nest(flat, tensor.shape)


def _flatten(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return flat
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def to_tensor(value: Any) -> Tensor:
    """The prediction as the output tensor, its datatype read from its values."""
    shaped = _shape_of(value)
    if shaped is not None:
        shape, flat = shaped
        datatype = _datatype(flat)
        if datatype is not None:
            if datatype == "FP64":
                flat = [float(v) for v in flat]
            return Tensor(name=OUTPUT_NAME, shape=shape or [1], datatype=datatype, data=flat)
    # Ragged, mixed or structured (a dict): one JSON document, as BYTES.
    text = orjson.dumps(value).decode()
    return Tensor(name=OUTPUT_NAME, shape=[1], datatype="BYTES", data=[text])


def _shape_of(value: Any) -> tuple[list[int], list[Any]] | None:
    if not isinstance(value, list):
        return [], [value]
    if not value:
        return [0], []
    parts = [_shape_of(item) for item in value]
    first = parts[0]
    if first is None or any(p is None or p[0] != first[0] for p in parts):
        return None
    return [len(value), *first[0]], [v for p in parts if p is not None for v in p[1]]


def _datatype(flat: list[Any]) -> str | None:
    if all(isinstance(v, bool) for v in flat):
        return "BOOL"
    if any(isinstance(v, bool) for v in flat):
        return None
    if all(isinstance(v, int) for v in flat):
        return "INT64"
    if all(isinstance(v, int | float) for v in flat):
        return "FP64"
    if all(isinstance(v, str) for v in flat):
        return "BYTES"
    return None


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
            response = JSONResponse(exc.to_body(), status_code=exc.status_code)
            await response(scope, receive, send)
            return

        async def replay() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replay, send)
