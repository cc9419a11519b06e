"""The Open Inference Protocol (KServe V2) itself, for every transport that speaks it.

The REST routes (``v2.py``) and the gRPC service (``v2_grpc.py``) only translate their wire
format into an :class:`InferenceRequest` and an :class:`InferenceResponse` back; the meaning
lives here:

- a tensor's first dimension is the batch: each input is cut into rows (``[N, k]`` → N rows of
  k values) and the replica predicts each row (``POST /predict/rows``: one call per row, or one
  call for the request when predict is batch-capable); every input must have N rows;
- the predictions are stacked back into tensors of shape ``[N, ...]``, typed from their values
  (``BOOL``, ``INT64``, ``FP64``, else ``BYTES``: a string as it is, a structure as JSON); when
  every row's prediction is an object with the same keys, each key is an output of its own;
- ``id`` is echoed (a request id is made up otherwise), ``outputs`` selects and orders the
  outputs, request ``parameters`` reach predict's keyword parameters of the same names;
- auth, routing, the canary split, the version pin, metrics and the log of unanswered requests
  are the predict path's (``PredictPath``), as for ``/api/v1/.../predict``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from cormorant.common.errors import BadRequest, CormorantError
from cormorant.gateway.prediction_log import is_unanswered
from cormorant.gateway.proxy import Answer, PredictPath
from cormorant.gateway.routing import Route, RoutingTable

PLATFORM = "cormorant"
SERVER_NAME = "cormorant"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["binary_tensor_data"]
OUTPUT_NAME = "prediction"
DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
     "FP16", "FP32", "FP64", "BYTES"}
)  # fmt: skip
# Parameters of the protocol itself (how tensors travel), never handed to predict.
TRANSPORT_PARAMETERS = frozenset({"binary_data_output", "binary_data", "binary_data_size"})
_ROWS_SUFFIX = b"/rows"
_SIGNATURE_SUFFIX = b"/signature"
_LOOSE_INPUTS = [{"name": "input", "datatype": "BYTES", "shape": [-1, -1]}]
_LOOSE_OUTPUTS = [{"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [-1]}]


@dataclass(slots=True)
class InputTensor:
    """A named input: datatype, shape and its values flat in row-major order."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the caller asks for, with its parameters (e.g. ``binary_data``)."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    """An inference request as every transport reads it."""

    inputs: list[InputTensor]
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[RequestedOutput] | None = None


@dataclass(slots=True)
class OutputTensor:
    """A named output: datatype, shape ``[N, ...]`` and its values flat in row-major order."""

    name: str
    datatype: str
    shape: list[int]
    data: list[Any]
    requested: RequestedOutput | None = None
    """The caller's request for this output, when it named the outputs it wants."""


@dataclass(slots=True)
class InferenceResponse:
    """The answer: which model and version answered, the request's id, the outputs."""

    model_name: str
    model_version: str
    id: str
    outputs: list[OutputTensor]
    request_id: str
    """The gateway's own request id (the prediction log's), which ``id`` may differ from."""


class InvalidTensor(BadRequest):
    """A tensor whose shape, datatype or data do not agree."""

    code = "invalid_tensor"


class UnknownOutput(BadRequest):
    """The request asks for an output the model does not produce."""

    code = "unknown_output"

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(
            f"the model has no output {name!r}; its outputs for this request: "
            f"{', '.join(available) or 'none'}",
            details={"output": name, "outputs": available},
        )


class ModelAnswered(CormorantError):
    """The replica answered with an error: its status, code and message, passed on."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        # The replica's own status: a 400 for arguments that do not fit stays a 400.
        self.status_code = status  # type: ignore[misc]
        self.code = code  # type: ignore[misc]


class InferenceService:
    """The protocol's operations over the gateway's routing and predict path."""

    def __init__(self, path: PredictPath, table: RoutingTable) -> None:
        self.path = path
        self.table = table

    async def authorize(self, authorization: str | None, slug: str) -> None:
        """The caller holds ``slug``'s endpoint token; 401/403 otherwise."""
        await self.path.credentials.check_predict(authorization, slug)

    def server_ready(self) -> bool:
        """The gateway has its routing table and can serve."""
        return self.table.loaded

    def server_metadata(self) -> dict[str, Any]:
        """Name, version and the protocol extensions this server speaks."""
        return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}

    def model_ready(self, slug: str, version: str | None = None) -> bool:
        """True when a replica (of ``version``, if given) is ready to answer."""
        route = self.path.route(slug)
        if version is None:
            return bool(route.replicas)
        return any(replica.version == version for replica in route.replicas.values())

    async def model_metadata(
        self,
        slug: str,
        version: str | None = None,
        *,
        trace_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> dict[str, Any]:
        """Versions, and inputs and outputs read from predict's signature by a replica."""
        route = self.path.route(slug)
        inputs, outputs = _LOOSE_INPUTS, _LOOSE_OUTPUTS
        if route.replicas:
            answer = await self.path.open(
                route,
                b"",
                uuid.uuid4().hex.encode(),
                trace_headers=trace_headers,
                version=version,
                suffix=_SIGNATURE_SUFFIX,
                method=b"GET",
            )
            content = await read_all(self.path, answer)
            if answer.status == 200:
                described = orjson.loads(content)
                inputs, outputs = described["inputs"], described["outputs"]
        return {
            "name": slug,
            "versions": route.versions(),
            "platform": PLATFORM,
            "inputs": inputs,
            "outputs": outputs,
        }

    async def infer(
        self,
        slug: str,
        request: InferenceRequest,
        *,
        version: str | None = None,
        user: str | None = None,
        trace_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> InferenceResponse:
        """Predict every row of the request's inputs and stack the predictions as outputs."""
        path = self.path
        route = path.route(slug)
        request_id = uuid.uuid4().hex
        started = time.perf_counter()
        status, answered_version = 500, ""
        columns: list[dict[str, Any]] | None = None
        path.metrics.in_flight_now += 1
        try:
            columns = [{"name": t.name, "rows": rows_of(t)} for t in request.inputs]
            _check_batch(request.inputs)
            parameters = {
                k: v for k, v in request.parameters.items() if k not in TRANSPORT_PARAMETERS
            }
            body = orjson.dumps({"inputs": columns, "parameters": parameters})
            answer = await path.open(
                route,
                body,
                request_id.encode(),
                trace_headers=trace_headers,
                version=version,
                user=user.encode() if user else None,
                suffix=_ROWS_SUFFIX,
            )
            answered_version = answer.version
            status = answer.status
            content = await read_all(path, answer)
            if status >= 400:
                raise _replica_error(status, content)
            predictions = orjson.loads(content)["predictions"]
            mirror = path.mirror
            if mirror is not None and route.shadow_version is not None:
                mirror.offer(route, body, request_id.encode(), suffix=_ROWS_SUFFIX,
                             trace_headers=trace_headers)  # fmt: skip
            return InferenceResponse(
                model_name=slug,
                model_version=answered_version,
                id=request.id or request_id,
                outputs=select_outputs(stack_outputs(predictions), request.outputs),
                request_id=request_id,
            )
        except CormorantError as exc:
            if not answered_version:
                status = exc.status_code
                if is_unanswered(status):
                    self._log_unanswered(route, request_id, exc, started, columns, trace_headers)
            raise
        finally:
            path.metrics.in_flight_now -= 1
            path.metrics.observe(slug, answered_version, status, time.perf_counter() - started)

    def _log_unanswered(
        self,
        route: Route,
        request_id: str,
        error: CormorantError,
        started: float,
        columns: list[dict[str, Any]] | None,
        trace_headers: list[tuple[bytes, bytes]] | None,
    ) -> None:
        logged = {c["name"]: c["rows"] for c in columns} if columns is not None else None
        self.path.prediction_log.unanswered(
            route,
            request_id=request_id,
            status=error.status_code,
            error=error,
            started=started,
            input_value=logged,
            trace_headers=trace_headers,
        )


async def read_all(path: PredictPath, answer: Answer) -> bytes:
    """The whole body of a replica's answer; the connection goes back to its pool after."""
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


def _replica_error(status: int, content: bytes) -> CormorantError:
    try:
        error = orjson.loads(content)["error"]
        return ModelAnswered(status, str(error["code"]), str(error["message"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ModelAnswered(status, "replica_error", f"the replica answered {status}")


def rows_of(tensor: InputTensor) -> list[Any]:
    """The tensor cut along its first dimension: one value (a scalar or nested list) per row."""
    if tensor.datatype not in DATATYPES:
        raise InvalidTensor(
            f"input {tensor.name!r}: unknown datatype {tensor.datatype!r}; use one of "
            f"{', '.join(sorted(DATATYPES))}"
        )
    if any(d < 0 for d in tensor.shape):
        raise InvalidTensor(f"input {tensor.name!r}: shape {tensor.shape} has a negative size")
    size = math.prod(tensor.shape)
    if size != len(tensor.data):
        raise InvalidTensor(
            f"input {tensor.name!r}: shape {tensor.shape} holds {size} value(s), "
            f"but data has {len(tensor.data)}"
        )
    if not tensor.shape:
        # A scalar: one row.
        return list(tensor.data)
    return _nest(tensor.data, tensor.shape)


def _check_batch(inputs: list[InputTensor]) -> None:
    if not inputs:
        raise InvalidTensor("the request has no inputs; send at least one tensor")
    sizes = {t.name: (t.shape[0] if t.shape else 1) for t in inputs}
    if len(set(sizes.values())) > 1:
        raise InvalidTensor(
            f"every input's first dimension is the batch and must be the same, got {sizes}",
            details={"batch": sizes},
        )


def flatten(value: Any) -> list[Any]:
    """Nested lists as one flat list, row-major; a scalar as a list of one."""
    if not isinstance(value, list):
        return [value]
    return list(_walk(value))


def _walk(value: list[Any]) -> Iterator[Any]:
    for item in value:
        if isinstance(item, list):
            yield from _walk(item)
        else:
            yield item


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    if len(shape) == 1:
        return list(flat)
    step = math.prod(shape[1:])
    return [_nest(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def stack_outputs(predictions: list[Any]) -> list[OutputTensor]:
    """The rows' predictions as output tensors ``[N, ...]``: one per key of object predictions."""
    if predictions and all(isinstance(p, dict) and p for p in predictions):
        keys = list(predictions[0])
        if all(list(p) == keys for p in predictions):
            return [stack(str(key), [p[key] for p in predictions]) for key in keys]
    return [stack(OUTPUT_NAME, predictions)]


def stack(name: str, values: list[Any]) -> OutputTensor:
    """One value per row as a tensor ``[N, ...]``, typed by its values (else ``BYTES``)."""
    shaped = _shape_of(values)
    if shaped is not None and values:
        shape, flat = shaped
        datatype = _datatype(flat)
        if datatype is not None:
            if datatype == "FP64":
                flat = [float(v) for v in flat]
            return OutputTensor(name, datatype, shape, flat)
    # Ragged, mixed or structured rows: one BYTES element per row (a string, or its JSON).
    data = [v if isinstance(v, str) else _json_text(v) for v in values]
    return OutputTensor(name, "BYTES", [len(values)], data)


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits, which the json module still writes
        return json.dumps(value, separators=(",", ":"))


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
        return "INT64" if all(-(2**63) <= v < 2**63 for v in flat) else None
    if all(isinstance(v, int | float) for v in flat):
        return "FP64"
    if all(isinstance(v, str) for v in flat):
        return "BYTES"
    return None


def select_outputs(
    outputs: list[OutputTensor], requested: list[RequestedOutput] | None
) -> list[OutputTensor]:
    """The outputs the caller asked for, in its order (all when it named none)."""
    if not requested:
        return outputs
    by_name = {o.name: o for o in outputs}
    chosen = []
    for wanted in requested:
        output = by_name.get(wanted.name)
        if output is None:
            raise UnknownOutput(wanted.name, list(by_name))
        output.requested = wanted
        chosen.append(output)
    return chosen


def parameter_flag(parameters: Mapping[str, Any] | None, name: str) -> bool | None:
    """A boolean protocol parameter, or None when absent."""
    if not parameters or name not in parameters:
        return None
    value = parameters[name]
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
