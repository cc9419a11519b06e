"""The Open Inference Protocol as real clients speak it: tritonclient (HTTP, gRPC) and KServe.

A real worker serves an iris-like model with named parameters; the gateway routes endpoint
``other`` to it (``demo`` keeps the toolbox workers) and checks ``other``'s token.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_grpc
import tritonclient.http.aio as triton_http
from gateway_testkit import Gateway, Worker, demo_route, free_port
from tritonclient.utils import InferenceServerException

IRIS = """\
def predict(sepal_length: float, sepal_width: float, petal_length: float,
            petal_width: float = 0.0, scale: float = 1.0):
    if sepal_length < 0:
        raise ValueError("a length cannot be negative")
    total = (sepal_length + sepal_width + petal_length + petal_width) * scale
    return {"label": "big" if total > 10 else "small", "total": total, "wide": sepal_width > 3}
"""


def _start_worker(tmp: Path, name: str, source: str, *extra: str) -> Worker:
    model = tmp / name
    model.mkdir()
    (model / "model.py").write_text(source)
    env = dict(os.environ)
    env["CORMORANT_WORKER_PUBLISH_METRICS"] = "false"
    env["CORMORANT_WORKER_LOG_PREDICTIONS"] = "false"
    env["CORMORANT_LOG_JSON"] = "false"
    port = free_port()
    log = tmp / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "cormorant.worker", "--source", str(model),
                "--file", "model.py", "--endpoint", "other", "--version", "1",
                "--port", str(port), "--server", "workers=1", "--server", "threads=4", *extra,
            ],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    return Worker(name, "1", proc, f"http://127.0.0.1:{port}", log)


@pytest.fixture(scope="module")
def iris_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A real worker serving the iris-like model."""
    worker = _start_worker(tmp_path_factory.mktemp("iris"), "iris", IRIS)
    try:
        worker.wait()
        yield worker
    finally:
        worker.stop()


def other_route(worker: Worker) -> dict[str, Any]:
    """``other`` routed to ``worker``."""
    route = demo_route({"w": worker}, "w", slug="other", weights={"1": 100})
    route["replicas"][0]["id"] = "iris-1"
    return route


@pytest.fixture
async def gateway(
    workers: dict[str, Worker], iris_worker: Worker, start_gateway: Any
) -> AsyncIterator[Gateway]:
    """A gateway routing ``demo`` to the toolbox and ``other`` to the iris model."""
    routes = [demo_route(workers), other_route(iris_worker)]
    async with start_gateway(routes, grpc_port=free_port()) as gw:
        yield gw


def _host(gateway: Gateway) -> str:
    return gateway.url.removeprefix("http://")


def _features(rows: list[list[float]], datatype: str, *, binary: bool) -> triton_http.InferInput:
    array = np.array(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
    tensor = triton_http.InferInput("features", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


@pytest.mark.parametrize(("datatype", "binary"), [("FP32", True), ("FP64", False)])
async def test_tritonclient_http_infers_rows(gateway: Gateway, datatype: str, binary: bool) -> None:
    """Shape [N, 3]: each row is predict(a, b, c); outputs typed and stacked to [N].

    Each call gets a fresh headers dict: tritonclient writes Inference-Header-Content-Length
    into the one it is given.
    """
    client = triton_http.InferenceServerClient(_host(gateway))
    try:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("other", headers=gateway.auth("other"))
        rows = [[5.1, 3.5, 1.4], [4.9, 3.0, 1.4], [7.0, 3.2, 4.7]]
        outputs = [
            triton_http.InferRequestedOutput("total", binary_data=binary),
            triton_http.InferRequestedOutput("label", binary_data=binary),
            triton_http.InferRequestedOutput("wide", binary_data=binary),
        ]
        result = await client.infer(
            "other",
            [_features(rows, datatype, binary=binary)],
            outputs=outputs,
            request_id="req-7",
            headers=gateway.auth("other"),
        )
        totals = result.as_numpy("total")
        assert totals is not None
        assert totals.dtype == np.float64
        assert totals.shape == (3,)
        assert totals == pytest.approx([sum(r) for r in rows], rel=1e-6)
        labels = result.as_numpy("label")
        assert labels is not None
        assert [label.decode() if isinstance(label, bytes) else label for label in labels] == [
            "small", "small", "big",
        ]  # fmt: skip
        wide = result.as_numpy("wide")
        assert wide is not None
        assert wide.tolist() == [True, False, True]
        response = result.get_response()
        assert response["id"] == "req-7"
        assert response["model_name"] == "other"
        assert response["model_version"] == "1"
        # No outputs named: tritonclient asks for every output in binary.
        everything = await client.infer(
            "other", [_features(rows[:1], datatype, binary=binary)], headers=gateway.auth("other")
        )
        names = [o["name"] for o in everything.get_response()["outputs"]]
        assert names == ["label", "total", "wide"]
        assert everything.as_numpy("total") == pytest.approx([sum(rows[0])], rel=1e-6)
    finally:
        await client.close()


async def test_tritonclient_http_metadata_and_errors(gateway: Gateway) -> None:
    """Metadata comes from predict's signature; errors are the protocol's, with their status."""
    client = triton_http.InferenceServerClient(_host(gateway))
    try:
        metadata = await client.get_model_metadata("other", headers=gateway.auth("other"))
        assert metadata["name"] == "other"
        assert metadata["versions"] == ["1"]
        assert [i["name"] for i in metadata["inputs"]] == [
            "sepal_length", "sepal_width", "petal_length", "petal_width", "scale",
        ]  # fmt: skip
        assert metadata["inputs"][0] == {"name": "sepal_length", "datatype": "FP64", "shape": [-1]}
        with pytest.raises(InferenceServerException) as unauthorized:
            await client.get_model_metadata("other")
        assert unauthorized.value.status() == "401"
        with pytest.raises(InferenceServerException) as wrong_token:
            await client.get_model_metadata("other", headers=gateway.auth("demo"))
        assert wrong_token.value.status() == "403"
        # Two features where predict needs three: the caller's mistake, a 400 that says so.
        with pytest.raises(InferenceServerException) as short:
            await client.infer(
                "other",
                [_features([[1.0, 2.0]], "FP64", binary=True)],
                headers=gateway.auth("other"),
            )
        assert short.value.status() == "400"
        assert "missing a required argument" in str(short.value.message())
        assert "(sepal_length, sepal_width, petal_length" in str(short.value.message())
        # The model raising is the model's failure: 500 with its message, naming the row.
        with pytest.raises(InferenceServerException) as raised:
            await client.infer(
                "other",
                [_features([[1.0, 2.0, 3.0], [-1.0, 2.0, 3.0]], "FP64", binary=False)],
                headers=gateway.auth("other"),
            )
        assert raised.value.status() == "500", raised.value.message()
        assert raised.value.message() == "row 1: ValueError: a length cannot be negative"
        with pytest.raises(InferenceServerException) as unknown:
            await client.infer(
                "other",
                [_features([[1.0, 2.0, 3.0]], "FP64", binary=False)],
                outputs=[triton_http.InferRequestedOutput("nope")],
                headers=gateway.auth("other"),
            )
        assert unknown.value.status() == "400"
        assert "no output 'nope'" in str(unknown.value.message())
    finally:
        await client.close()


async def test_named_inputs_and_parameters(gateway: Gateway) -> None:
    """Inputs named like predict's parameters are passed by name; parameters by keyword."""
    headers = gateway.auth("other")
    response = await gateway.http.post(
        "/v2/models/other/infer",
        json={
            "parameters": {"scale": 10, "unrelated": True},
            "inputs": [
                {"name": "petal_length", "shape": [2], "datatype": "FP64", "data": [1, 2]},
                {"name": "sepal_width", "shape": [2], "datatype": "FP64", "data": [3, 4]},
                {"name": "sepal_length", "shape": [2], "datatype": "FP64", "data": [0.5, 0]},
            ],
            "outputs": [{"name": "total"}],
        },
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outputs"] == [
        {"name": "total", "datatype": "FP64", "shape": [2], "data": [45.0, 60.0]}
    ]
    assert body["id"] == response.headers["x-request-id"]
    mismatch = await gateway.http.post(
        "/v2/models/other/infer",
        json={
            "inputs": [
                {"name": "a", "shape": [2], "datatype": "FP64", "data": [1, 2]},
                {"name": "b", "shape": [3], "datatype": "FP64", "data": [1, 2, 3]},
            ]
        },
        headers=headers,
    )
    assert mismatch.status_code == 400
    assert "first dimension is the batch" in mismatch.json()["error"]


# KServe's client in a process of its own: kserve and tritonclient.grpc both register the
# protocol's messages under the package ``inference``, which protobuf refuses in one process.
KSERVE_CLIENT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def main(url, token):
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    features = InferInput("features", [2, 3], "FP32")
    features.set_data_from_numpy(
        np.array([[5.1, 3.5, 1.4], [7.0, 3.2, 4.7]], dtype=np.float32), binary_data=True
    )
    request = InferRequest(model_name="other", infer_inputs=[features], request_id="k-1")
    response = await client.infer(
        url, request, model_name="other", headers={"Authorization": "Bearer " + token}
    )
    outputs = {
        o.name: {"datatype": o.datatype, "shape": o.shape, "data": o.as_numpy().tolist()}
        for o in response.outputs
    }
    ready = await client.is_server_ready(url)
    print(json.dumps({"id": response.id, "outputs": outputs, "ready": ready}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_kserve_rest_client(gateway: Gateway) -> None:
    """KServe's InferenceRESTClient infers with a token and reads the typed outputs."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KSERVE_CLIENT, gateway.url, gateway.credentials.tokens["other"],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-3000:]
    answer = json.loads(out.decode().strip().splitlines()[-1])
    assert answer["id"] == "k-1"
    assert answer["ready"] is True
    total = answer["outputs"]["total"]
    assert (total["datatype"], total["shape"]) == ("FP64", [2])
    assert total["data"] == pytest.approx([10.0, 14.9], rel=1e-6)
    assert answer["outputs"]["wide"]["data"] == [True, True]
    assert answer["outputs"]["label"]["data"] == ["small", "big"]


def _grpc_target(gateway: Gateway) -> str:
    return f"127.0.0.1:{gateway.app.state.settings.grpc_port}"


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
async def test_tritonclient_grpc(gateway: Gateway, datatype: str) -> None:
    """gRPC on the sibling port: the same token, rows, typed outputs, metadata and errors."""
    client = triton_grpc.InferenceServerClient(_grpc_target(gateway))
    auth = gateway.auth("other")
    metadata = {"authorization": auth["Authorization"]}
    try:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("other", headers=metadata)
        described = await client.get_model_metadata("other", headers=metadata, as_json=True)
        assert described["name"] == "other"
        assert described["inputs"][0] == {
            "name": "sepal_length", "datatype": "FP64", "shape": ["-1"],
        }  # fmt: skip
        rows = [[5.1, 3.5, 1.4], [7.0, 3.2, 4.7]]
        array = np.array(rows, dtype=np.float32 if datatype == "FP32" else np.float64)
        tensor = triton_grpc.InferInput("features", list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        result = await client.infer(
            "other",
            [tensor],
            outputs=[triton_grpc.InferRequestedOutput("total"),
                     triton_grpc.InferRequestedOutput("label")],
            request_id="g-1",
            headers=metadata,
        )  # fmt: skip
        totals = result.as_numpy("total")
        assert totals is not None
        assert totals.dtype == np.float64
        assert totals == pytest.approx([sum(r) for r in rows], rel=1e-6)
        labels = result.as_numpy("label")
        assert labels is not None
        assert [label.decode() for label in labels] == ["small", "big"]
        response = result.get_response()
        assert (response.id, response.model_version) == ("g-1", "1")
        with pytest.raises(InferenceServerException) as unauthenticated:
            await client.infer("other", [tensor])
        assert unauthenticated.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException) as denied:
            await client.infer("other", [tensor], headers={"authorization": "Bearer nope"})
        assert denied.value.status() in ("StatusCode.UNAUTHENTICATED",
                                         "StatusCode.PERMISSION_DENIED")  # fmt: skip
        short = triton_grpc.InferInput("features", [1, 2], datatype)
        short.set_data_from_numpy(array[:1, :2].copy())
        with pytest.raises(InferenceServerException) as invalid:
            await client.infer("other", [short], headers=metadata)
        assert invalid.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert "missing a required argument" in str(invalid.value.message())
    finally:
        await client.close()
