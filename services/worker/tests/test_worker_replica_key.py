"""A replica's port answers only the platform: every route but the probes needs its key."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from cormorant.common.internal import REPLICA_KEY_HEADER, replica_key
from cormorant.common.predictor import Predictor
from cormorant.worker import WorkerSettings, create_app

KEY = replica_key("cmi_test-secret", "replica-1")


def double(x: Any) -> Any:
    return x * 2


@asynccontextmanager
async def serve(**overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    values: dict[str, Any] = {
        "publish_metrics": False,
        "log_predictions": False,
        "endpoint": "keyed",
        "replica_key": KEY,
    }
    app: FastAPI = create_app(WorkerSettings(**(values | overrides)), Predictor(double), threads=1)
    async with LifespanManager(app, startup_timeout=30) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://worker") as client:
            yield client


CALLS = [
    ("POST", "/predict", {"json": {"input_params": 2}}),
    ("POST", "/predict/rows", {"json": {"inputs": []}}),
    ("GET", "/predict/signature", {}),
    ("POST", "/predict/batch", {"json": {"rows": [[1]]}}),
    ("GET", "/openapi.json", {}),
    ("GET", "/no-such-route", {}),
]


@pytest.mark.parametrize("otlp", [None, "http://127.0.0.1:9/v1/traces"])
async def test_every_route_but_the_probes_refuses_a_call_without_the_key(
    otlp: str | None,
) -> None:
    """No key or another replica's key: 401 naming the gateway, on predict, the Open
    Inference routes, batch chunks and anything else; /healthz and /metrics stay open; the
    replica's own key predicts (with tracing on, predict takes another path: checked too)."""
    other = replica_key("cmi_test-secret", "replica-2")
    async with serve(otlp_endpoint=otlp) as client:
        for method, path, options in CALLS:
            for headers in ({}, {REPLICA_KEY_HEADER: other}, {REPLICA_KEY_HEADER: ""}):
                response = await client.request(method, path, headers=headers, **options)
                assert response.status_code == 401, (path, headers, response.text)
                error = response.json()["error"]
                assert error["code"] == "replica_key_required"
                assert "gateway" in error["message"]
        assert (await client.get("/metrics")).status_code == 200
        assert (await client.get("/healthz")).status_code in (200, 503)
        answer = await client.post(
            "/predict", json={"input_params": 2}, headers={REPLICA_KEY_HEADER: KEY}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["prediction"] == 4


async def test_a_worker_run_by_hand_takes_no_key() -> None:
    """Without ``replica_key`` (a worker started by hand) the port answers anyone."""
    async with serve(replica_key=None) as client:
        answer = await client.post("/predict", json={"input_params": 3})
    assert answer.status_code == 200
    assert answer.json()["prediction"] == 6
