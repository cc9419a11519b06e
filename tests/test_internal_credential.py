"""Every route of every internal service refuses a call without the internal credential.

The services are found by walking ``services/*/src/cormorant/*/app.py``, so a new service is
checked the day it lands; each one's route table is walked, so a new route is too. The apps'
lifespans are not run: the check answers before any route, and that is what is tested.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_type_hints

import httpx
import pytest
from fastapi import FastAPI
from starlette.routing import BaseRoute, Mount

from cormorant.common.internal import OPEN_PATHS, InternalAuth, generate_internal_secret
from cormorant.common.settings import ServiceSettings

ROOT = Path(__file__).resolve().parent.parent
SECRET = generate_internal_secret()

NOT_INTERNAL = {
    # The public front door: admin keys and endpoint tokens, checked below on their own.
    "gateway": "public",
    # Replicas run user code and never hold the credential; the gateway calls them directly.
    "worker": "replica",
}
# The Open Inference Protocol's server metadata and health, as KServe and Triton serve them.
GATEWAY_PUBLIC = {
    "/healthz",
    "/metrics",
    "/openapi.json",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    # The console's shell: a login form and static files; its data come from /api/v1 (above).
    "/",
    "/console",
    "/console/login",
    "/console/logout",
    "/console/static/x1",
}
"""The gateway's routes that answer anyone: probes, metrics, the API document."""


def _packages() -> list[str]:
    return sorted(p.parent.name for p in ROOT.glob("services/*/src/cormorant/*/app.py"))


def _build(package: str, **values: Any) -> FastAPI:
    module = importlib.import_module(f"cormorant.{package}.app")
    create_app: Callable[..., FastAPI] = module.create_app
    first = next(iter(inspect.signature(create_app).parameters))
    settings_class = get_type_hints(create_app)[first]
    assert issubclass(settings_class, ServiceSettings), package
    return create_app(settings_class(**values))


def _calls(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, concrete path) for every route, path parameters filled in."""
    for route in routes:
        if isinstance(route, Mount):
            yield from _calls(list(route.routes), prefix + route.path)
            continue
        # FastAPI >= 0.165 keeps an included router as one entry of app.routes.
        included = getattr(route, "effective_route_contexts", None)
        if included is not None:
            yield from _calls(list(included()), prefix)
            continue
        path = prefix + getattr(route, "path", "")
        concrete = re.sub(r"\{[^}:]+(:path)?\}", "x1", path)
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            yield method, concrete


async def _status(app: FastAPI, method: str, path: str, **kw: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://svc") as http:
        return await http.request(method, path, **kw)


@pytest.mark.parametrize("package", [p for p in _packages() if p not in NOT_INTERNAL])
async def test_every_internal_route_needs_the_credential(package: str, tmp_path: Path) -> None:
    """Without the credential, or with a wrong one, every route but /healthz and /metrics is
    a 401 naming the internal credential; the open ones answer."""
    app = _build(package, internal_secret=SECRET, data_dir=tmp_path)
    calls = list(_calls(app.routes))
    closed = [(m, p) for m, p in calls if p not in OPEN_PATHS]
    assert closed, f"{package} has no routes beyond its probes?"
    if package == "deployer":
        assert ("GET", "/internal/routing") in closed
        assert ("POST", "/api/v1/endpoints") in closed
    for method, path in closed:
        for headers in ({}, {"Authorization": "Bearer cmi_wrong"}, {"Authorization": SECRET}):
            answer = await _status(app, method, path, headers=headers)
            assert answer.status_code == 401, (package, method, path, headers)
            if method != "HEAD":
                assert answer.json()["error"]["code"] == "internal_credential_required"
    # An unknown path says nothing about what exists without the credential either.
    assert (await _status(app, "GET", "/no/such/route")).status_code == 401
    assert (await _status(app, "GET", "/metrics")).status_code == 200
    # With it, the check lets the call through (the route itself then answers).
    method, path = closed[0]
    passed = await _status(app, method, path, auth=InternalAuth(SECRET))
    assert passed.status_code != 401


def test_kafka_bridge_and_batch_style_services_are_found() -> None:
    """The walk above covers every service but the gateway and the worker."""
    found = set(_packages())
    assert {"deployer", "predictlog", "feedback", "alerts", "kafka_bridge"} <= found
    assert set(NOT_INTERNAL) <= found


async def test_a_service_without_a_secret_refuses_everything(tmp_path: Path) -> None:
    """No secret configured: the service never falls open, and says what to set."""
    app = _build("alerts", data_dir=tmp_path)
    answer = await _status(app, "GET", "/anything", headers={"Authorization": "Bearer "})
    assert answer.status_code == 401
    assert "CORMORANT_INTERNAL_SECRET" in answer.json()["error"]["message"]
    # Open without the credential (alerts answers 503 until its lifespan has started).
    assert (await _status(app, "GET", "/healthz")).status_code != 401


async def test_every_gateway_route_needs_a_key_or_token_but_the_public_ones(
    tmp_path: Path,
) -> None:
    """The gateway has no route open to anyone beyond probes, metrics and the API document."""
    app = _build(
        "gateway",
        internal_secret=SECRET,
        data_dir=tmp_path,
        deployer_url="http://127.0.0.1:9",
        database_url="postgresql+asyncpg://nobody@127.0.0.1:9/none",
    )
    calls = list(_calls(app.routes))
    assert ("POST", "/api/v1/keys") in calls
    for method, path in calls:
        if path in GATEWAY_PUBLIC or method in ("HEAD", "OPTIONS"):
            continue
        answer = await _status(app, method, path)
        assert answer.status_code == 401, (method, path, answer.text)
