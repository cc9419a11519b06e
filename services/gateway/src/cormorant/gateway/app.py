"""The Gateway service's ASGI app: predict, the Open Inference Protocol, the management API."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from cormorant.common import bus
from cormorant.common.db import create_engine, session_factory
from cormorant.common.errors import error_response, install_error_handlers
from cormorant.common.internal import ReplicaKeys, internal_client
from cormorant.common.openapi import install_error_documentation
from cormorant.common.retry import Backoff
from cormorant.common.telemetry import metrics_response, new_registry, setup_tracing
from cormorant.gateway import console, keys, v2
from cormorant.gateway.auth import Credentials
from cormorant.gateway.forward import Forwarder
from cormorant.gateway.inference import InferenceService
from cormorant.gateway.keys import Admin
from cormorant.gateway.load import LoadReporter
from cormorant.gateway.metrics import GatewayMetrics
from cormorant.gateway.openapi import OpenAPIDocument
from cormorant.gateway.predict import PredictHandler, predict_slug
from cormorant.gateway.prediction_log import PredictionLog
from cormorant.gateway.proxy import PredictPath
from cormorant.gateway.routing import RoutingTable
from cormorant.gateway.settings import GatewaySettings
from cormorant.gateway.shadow import ShadowMirror
from cormorant.gateway.sync import EventFollower, RoutingSync
from cormorant.gateway.upstream import Pool
from cormorant.gateway.v2_grpc import InferenceServicer, start_server

TITLE = "cormorant-gateway"
FORWARDED_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

log = logging.getLogger(__name__)


class GatewayApp(FastAPI):
    """FastAPI, with predict answered before any of FastAPI's own layers run."""

    predict: PredictHandler | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand predict to its raw handler; everything else to FastAPI."""
        if scope["type"] == "http" and self.predict is not None:
            slug = predict_slug(scope["path"])
            if slug is not None:
                await self.predict.handle(slug, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: GatewaySettings) -> GatewayApp:
    """Build the gateway; its lifespan loads routing and credentials and follows events."""
    metrics = GatewayMetrics(new_registry())
    gateway_id = settings.gateway_id()

    def pool(host: str, port: int, tls: bool) -> Pool:
        return Pool(
            host,
            port,
            tls=tls,
            idle_s=settings.upstream_idle_s,
            max_idle=settings.upstream_max_idle,
            connect_timeout=settings.connect_timeout_s,
        )

    table = RoutingTable(pool, default_timeout_s=settings.default_timeout_s)
    credentials = Credentials(negative_ttl_s=settings.auth_negative_ttl_s)
    prediction_log = PredictionLog(
        metrics,
        enabled=settings.log_predictions,
        max_bytes=settings.log_max_bytes,
        streams=bus.configured_streams(settings.bus_stream),
    )
    predict_path = PredictPath(
        table,
        credentials,
        metrics,
        connect_attempts=settings.connect_attempts,
        replica_cooldown_s=settings.replica_cooldown_s,
        prediction_log=prediction_log,
        replica_keys=ReplicaKeys(settings.internal_secret),
    )
    mirror = ShadowMirror(
        predict_path,
        prediction_log,
        max_queue=settings.shadow_queue,
        max_queue_bytes=settings.shadow_queue_bytes,
        senders=settings.shadow_senders,
    )
    predict_path.mirror = mirror
    inference = InferenceService(predict_path, table)
    services = {
        "deployer": settings.deployer_url,
        "predictlog": settings.predictlog_url,
        "feedback": settings.feedback_url,
        "alerts": settings.alerts_url,
        "batch": settings.batch_url,
    }

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if settings.otlp_endpoint:
                provider = setup_tracing(TITLE, settings.otlp_endpoint)
                stack.callback(provider.shutdown)
                predict_path.tracer = provider.get_tracer("cormorant.gateway")
            engine = create_engine(settings.database_url)
            stack.push_async_callback(engine.dispose)
            credentials.sessions = session_factory(engine)
            # The internal credential on every call: the services behind trust only it.
            deployer_http = internal_client(settings, base_url=settings.deployer_url, timeout=5.0)
            stack.push_async_callback(deployer_http.aclose)
            services_http = internal_client(
                settings,
                timeout=httpx.Timeout(settings.forward_timeout_s, connect=5.0),
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
            stack.push_async_callback(services_http.aclose)
            app.state.forwarder = Forwarder(services, services_http, metrics)
            openapi.http = services_http
            stack.callback(table.close)
            if settings.grpc_port:
                grpc_server = await start_server(
                    InferenceServicer(inference),
                    settings.host,
                    settings.grpc_port,
                    max_message_bytes=settings.max_body_bytes,
                )
                # In-flight calls get the drain grace HTTP requests get from uvicorn.
                stack.push_async_callback(grpc_server.stop, 5.0)
            sync = RoutingSync(table, deployer_http, metrics, refresh_s=settings.routing_refresh_s)
            follower = EventFollower(
                settings.nats_url,
                name=f"gateway {gateway_id}",
                table=table,
                sync=sync,
                credentials=credentials,
                attach=prediction_log.attached,
            )
            app.state.follower = follower
            reporter = LoadReporter(
                table,
                lambda: follower.nc,
                gateway_id=gateway_id,
                interval_s=settings.load_report_s,
            )
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            running = [
                tasks.create_task(_supervised("routing sync", sync.run)),
                tasks.create_task(_supervised("event follower", follower.run)),
                tasks.create_task(_supervised("load reporter", reporter.run)),
                tasks.create_task(_supervised("shadow mirror", mirror.run)),
                tasks.create_task(
                    _supervised(
                        "credential refresh", credentials.refresh_forever, settings.auth_refresh_s
                    )
                ),
            ]
            # Runs before the task group's exit, which would otherwise wait for them forever.
            stack.callback(lambda: [task.cancel() for task in running])
            # Everything built so far lives as long as the process: out of the collector's
            # sight, full collections stay short instead of pausing predictions for
            # milliseconds to walk every module, model and route object again.
            gc.collect()
            gc.freeze()
            stack.callback(gc.unfreeze)
            yield

    # Not create_service_app: the gateway's class answers predict first, and FastAPI's own
    # docs routes make way for the merged document (see openapi.py).
    app = GatewayApp(
        title=TITLE,
        version="0.1.0",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    install_error_documentation(app)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        if table.loaded:
            return JSONResponse({"status": "ok"})
        return error_response(503, "not_ready", "the gateway has not loaded its routing yet")

    @app.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        return metrics_response(metrics.registry)

    app.state.settings = settings
    app.state.metrics = metrics
    app.state.routing = table
    app.state.credentials = credentials
    app.state.predict_path = predict_path
    app.state.inference = inference
    app.state.prediction_log = prediction_log
    app.state.gateway_id = gateway_id
    openapi = OpenAPIDocument(app, services, cache_s=settings.openapi_cache_s)
    app.state.openapi = openapi

    app.include_router(keys.router)
    app.include_router(v2.router)
    console.mount(app, settings)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json() -> JSONResponse:
        return JSONResponse(await openapi.get())

    @app.api_route("/api/v1/{path:path}", methods=FORWARDED_METHODS, include_in_schema=False)
    async def forward(request: Request, _: Admin) -> Response:
        forwarder: Forwarder = request.app.state.forwarder
        return await forwarder.forward(request)

    app.add_middleware(v2.BodyLimit, max_body_bytes=settings.max_body_bytes)
    app.predict = PredictHandler(predict_path, max_body_bytes=settings.max_body_bytes)
    return app


_RESTART_BACKOFF = Backoff(initial=1.0, cap=30.0)
"""Between restarts of a background loop that failed: a loop failing at once backs off."""


async def _supervised(name: str, run: Callable[..., Awaitable[None]], *args: object) -> None:
    # A bug in one background loop must not take the gateway down through the task group:
    # log it and start the loop again.
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await run(*args)
            return
        except Exception:
            # A loop that ran a while before it failed starts its backoff afresh.
            ran_a_while = time.monotonic() - started > _RESTART_BACKOFF.cap
            failures = 1 if ran_a_while else failures + 1
            delay = _RESTART_BACKOFF.delay(failures)
            log.exception("%s failed; restarting it in %.1f s", name, delay)
            await asyncio.sleep(delay)
