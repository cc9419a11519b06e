"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on its own port.

Every method translates its messages to and from ``inference.py`` and nothing more: the same
token auth (the ``authorization`` metadata, ``Bearer <endpoint token>``), routing, canary split,
version pin (``model_version``, or the ``x-cormorant-version`` metadata), metrics and
prediction log as the REST routes. Tensors arrive as ``raw_input_contents`` (what tritonclient
sends) or typed ``contents``; outputs are answered as ``raw_output_contents``, which every V2
client reads. Errors are gRPC statuses: 400 → INVALID_ARGUMENT, 401 → UNAUTHENTICATED, 403 →
PERMISSION_DENIED, 404 → NOT_FOUND, 503 → UNAVAILABLE, 504 → DEADLINE_EXCEEDED, others
INTERNAL, with the same message as REST.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from google.protobuf.message import Message

from cormorant.common.errors import CormorantError
from cormorant.gateway import raw_tensors
from cormorant.gateway.grpc_v2 import open_inference_v2_pb2 as pb
from cormorant.gateway.inference import (
    InferenceRequest,
    InferenceService,
    InputTensor,
    InvalidTensor,
    RequestedOutput,
)

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Which typed ``contents`` field holds a datatype's values.
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip

Handler = Callable[[Any, Any], Awaitable[Message]]


class InferenceServicer:
    """The six methods of ``GRPCInferenceService`` over an :class:`InferenceService`."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def handler(self) -> Any:
        """The generic handler that serves the methods under the protocol's service name."""
        methods: dict[str, tuple[Handler, type[Message]]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    _translated(method),
                    request_deserializer=kind.FromString,
                    response_serializer=lambda message: message.SerializeToString(),
                )
                for name, (method, kind) in methods.items()
            },
        )

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> Message:
        """The gateway process is up."""
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> Message:
        """The gateway has its routing table."""
        return pb.ServerReadyResponse(ready=self.service.server_ready())

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> Message:
        """Name, version and extensions."""
        return pb.ServerMetadataResponse(**self.service.server_metadata())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> Message:
        """Whether a replica (of the version, if named) is ready; needs the endpoint's token."""
        await self.service.authorize(_metadata(context).get("authorization"), request.name)
        version = _pinned(request.version, context)
        return pb.ModelReadyResponse(ready=self.service.model_ready(request.name, version))

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> Message:
        """Versions, and inputs and outputs from predict's signature."""
        await self.service.authorize(_metadata(context).get("authorization"), request.name)
        metadata = await self.service.model_metadata(
            request.name, _pinned(request.version, context), trace_headers=_trace(context)
        )
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**t) for t in metadata["outputs"]],
        )

    async def model_infer(self, request: pb.ModelInferRequest, context: Any) -> Message:
        """Predict each row of the inputs; outputs stacked ``[N, ...]`` as raw contents."""
        await self.service.authorize(_metadata(context).get("authorization"), request.model_name)
        answer = await self.service.infer(
            request.model_name,
            infer_request(request),
            version=_pinned(request.model_version, context),
            user=_metadata(context).get("x-cormorant-user", "").strip() or None,
            trace_headers=_trace(context),
        )
        response = pb.ModelInferResponse(
            model_name=answer.model_name, model_version=answer.model_version, id=answer.id
        )
        for output in answer.outputs:
            response.outputs.add(name=output.name, datatype=output.datatype, shape=output.shape)
            response.raw_output_contents.append(raw_tensors.encode(output.datatype, output.data))
        context.set_trailing_metadata((("x-request-id", answer.request_id),))
        return response


def infer_request(request: pb.ModelInferRequest) -> InferenceRequest:
    """A ``ModelInferRequest`` as the protocol's inference request."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidTensor(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} input(s); "
            "send one per input, in input order"
        )
    inputs = []
    for index, tensor in enumerate(request.inputs):
        if raw:
            data = raw_tensors.decode(tensor.name, tensor.datatype, raw[index])
        else:
            field = _CONTENTS.get(tensor.datatype)
            if field is None:
                raise InvalidTensor(
                    f"input {tensor.name!r}: {tensor.datatype} data must come as raw_input_contents"
                )
            data = list(getattr(tensor.contents, field))
            if tensor.datatype == "BYTES":
                data = [raw_tensors.text(item) for item in data]
        inputs.append(
            InputTensor(
                tensor.name,
                tensor.datatype,
                list(tensor.shape),
                data,
                _parameters(tensor.parameters),
            )
        )
    outputs = [RequestedOutput(o.name, _parameters(o.parameters)) for o in request.outputs]
    return InferenceRequest(
        inputs, request.id or None, _parameters(request.parameters), outputs or None
    )


def _parameters(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def _metadata(context: Any) -> dict[str, str]:
    return {
        key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)
    }


def _pinned(version: str, context: Any) -> str | None:
    return version or _metadata(context).get("x-cormorant-version", "").strip() or None


def _trace(context: Any) -> list[tuple[bytes, bytes]] | None:
    pairs = [
        (key.encode("latin-1"), value.encode("latin-1"))
        for key, value in _metadata(context).items()
        if key in ("traceparent", "tracestate")
    ]
    return pairs or None


def _translated(method: Handler) -> Handler:
    async def call(request: Any, context: Any) -> Message:
        try:
            return await method(request, context)
        except CormorantError as exc:
            await context.abort(_STATUS.get(exc.status_code, grpc.StatusCode.INTERNAL), exc.message)
            raise  # abort raises; this line is never reached
        except Exception:
            log.exception("gRPC %s failed unexpectedly", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "the gateway failed; see its logs")
            raise

    return call


async def start_server(
    servicer: InferenceServicer, host: str, port: int, *, max_message_bytes: int
) -> Any:
    """A started ``grpc.aio`` server for the servicer on ``host:port``."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", -1),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((servicer.handler(),))
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"the gateway's gRPC port {host}:{port} could not be bound")
    await server.start()
    return server
