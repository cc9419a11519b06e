"""The pieces every service's FastAPI app shares: errors, ``/healthz``, ``/metrics``, and the
internal credential on every other route."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse, Response
from starlette.types import Lifespan

from cormorant.common.errors import error_response, install_error_handlers
from cormorant.common.internal import OPEN_PATHS, RequireInternal
from cormorant.common.openapi import install_error_documentation
from cormorant.common.settings import CommonSettings, ServiceSettings
from cormorant.common.telemetry import metrics_response

S = TypeVar("S", bound=ServiceSettings)

REPLICA_ENV = "CORMORANT_REPLICA_ID"
"""The replica id a local deployer gives each replica it starts."""
REPLICA_HEADER = "Cormorant-Replica"
"""Header of a replica's ``/healthz`` answer naming it, so that a deployer probing a port some
other process took meanwhile does not take that process's 200 for its replica's."""


def replica_identity() -> dict[str, str]:
    """The ``/healthz`` header naming this replica; empty outside a replica."""
    replica = os.environ.get(REPLICA_ENV)
    return {REPLICA_HEADER: replica} if replica else {}


def create_service_app(
    *,
    title: str,
    settings: CommonSettings,
    registry: CollectorRegistry,
    ready: Callable[[], bool] = lambda: True,
    lifespan: Lifespan[Any] | None = None,
    version: str = "0.1.0",
) -> FastAPI:
    """A FastAPI app with the platform's error shape, a readiness probe and a metrics scrape;
    every other route (those added later included) needs ``settings.internal_secret``."""
    app = FastAPI(title=title, version=version, lifespan=lifespan)
    install_error_handlers(app)
    install_error_documentation(app)
    # Middleware, not a dependency: it also covers routes mounted or added without FastAPI's
    # decorators, and answers before any body is read.
    app.add_middleware(
        RequireInternal, secret=settings.internal_secret, service=title, open_paths=OPEN_PATHS
    )

    identity = replica_identity()

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        if ready():
            return JSONResponse({"status": "ok"}, headers=identity)
        return error_response(503, "not_ready", f"{title} is starting")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return metrics_response(registry)

    return app


def serve(app: FastAPI, *, host: str, port: int, log_level: str = "info") -> None:
    """Run ``app`` under uvicorn until SIGTERM/SIGINT, draining in-flight requests."""
    import uvicorn

    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=30,
        # Our own JSON logging is configured before; keep uvicorn from replacing it.
        log_config=None,
    )


def run_service(create_app: Callable[[S], FastAPI], settings: S) -> None:
    """The ``__main__`` of a service: JSON logs as configured, then serve until stopped."""
    import logging

    from cormorant.common.telemetry import configure_logging

    configure_logging(settings.log_level, json_lines=settings.log_json)
    # Readiness probes and inter-service calls would log a line per request.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    serve(
        create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level
    )
