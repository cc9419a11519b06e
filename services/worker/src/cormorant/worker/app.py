"""The worker's app: ``/predict``, ``/healthz`` (ready once the model imported), ``/metrics``.

Every prediction is logged, and every metric logged by predict code published, through the
replica's event publisher (``publishing.py``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from cormorant.common.errors import error_response, install_error_handlers
from cormorant.common.internal import OPEN_PATHS, REPLICA_KEY_HEADER, ReplicaKeyCheck
from cormorant.common.predictor import (
    PredictContext,
    Predictor,
    set_metric_sink,
    set_predict_context,
)
from cormorant.common.predictor.rows import declares_batch
from cormorant.common.telemetry import metrics_response, new_registry, setup_tracing
from cormorant.common.web import replica_identity
from cormorant.worker.api import PREDICT_PATH, PredictEndpoint, PredictHandler, answer_predict
from cormorant.worker.batch import install_batch_route
from cormorant.worker.batching import AdaptiveBatcher, batching_config
from cormorant.worker.infer import direct_runner, install_infer_routes
from cormorant.worker.metrics import WorkerMetrics
from cormorant.worker.model import ModelState, PredictorFactory
from cormorant.worker.processes import register_replica_processes
from cormorant.worker.publishing import replica_events
from cormorant.worker.server import resolve_server_config
from cormorant.worker.settings import WorkerSettings
from cormorant.worker.watchdog import Watchdog

TITLE = "cormorant-worker"


class WorkerApp(FastAPI):
    """FastAPI, with ``/predict`` answered before any of FastAPI's own layers run, and every
    route but the probes closed to callers without the replica's key."""

    predict: PredictHandler | None = None
    """Set when ``/predict`` skips FastAPI's layers (when the replica traces nothing)."""
    replica_key: ReplicaKeyCheck | None = None
    """Set when callers must present the replica's key (as the deployer runs replicas)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse a call without the key; hand ``/predict`` to its raw handler; everything
        else to FastAPI."""
        if scope["type"] == "http":
            key = self.replica_key
            if key is not None and scope["path"] not in OPEN_PATHS:
                presented = None
                for name, value in scope["headers"]:
                    if name == _KEY_HEADER:
                        presented = value
                        break
                if not key.allowed(presented):
                    await _KEY_REQUIRED(scope, receive, send)
                    return
            if self.predict is not None and scope["path"] == PREDICT_PATH:
                await answer_predict(self.predict, scope, receive, send)
                return
        await super().__call__(scope, receive, send)


_KEY_HEADER = REPLICA_KEY_HEADER.encode("latin-1")
_KEY_REQUIRED = error_response(
    401,
    "replica_key_required",
    "this is a replica's own port: it answers only Cormorant's gateway and batch service, "
    "which carry the replica's key; call the gateway's /api/v1/endpoints/{slug}/predict with "
    "the endpoint's token instead",
)


def create_app(
    settings: WorkerSettings,
    predictor: Predictor | PredictorFactory | None = None,
    *,
    threads: int | None = None,
    registry: CollectorRegistry | None = None,
    replica_pid: int | None = None,
) -> FastAPI:
    """The app of one worker process; the model imports in the background once it starts.

    ``predictor`` is a loaded predictor, a factory run off the loop at start-up, or ``None``
    to load what ``settings`` names. ``threads`` (default: the ``threads`` server setting)
    bounds how many predictions run at once. ``replica_pid`` (the gunicorn master's) adds the
    figures of every process of the replica to ``/metrics`` (``processes.py``).
    """
    if threads is None:
        threads = resolve_server_config(settings.server, host=settings.host, port=0).threads
    metrics = WorkerMetrics(registry or new_registry())
    metrics.predict_threads.set(threads)
    if replica_pid is not None:
        register_replica_processes(metrics.registry, replica_pid)
    loaded = predictor if isinstance(predictor, Predictor) else None
    factory = predictor if callable(predictor) and loaded is None else None
    model = ModelState(metrics, loaded)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
    events = replica_events(settings, metrics)
    watchdog = Watchdog(settings.request_timeout_s)
    handler = PredictHandler(
        model,
        pool,
        metrics,
        max_body_bytes=settings.max_body_bytes,
        version=settings.version,
        events=events,
        log_max_bytes=settings.log_max_bytes,
        watchdog=watchdog,
    )

    def fresh_pool() -> None:
        # The stuck thread keeps the old pool; the process ends soon after anyway.
        handler.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
        if handler.batcher is not None:
            handler.batcher.pool = handler.pool

    watchdog.on_condemn = fresh_pool

    def load() -> Predictor:
        if factory is not None:
            return factory()
        return Predictor.load(settings.predictor_spec(), temp_dir=settings.temp_dir)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.callback(pool.shutdown, wait=False, cancel_futures=True)
            set_predict_context(PredictContext(settings.endpoint, settings.version))
            stack.callback(set_predict_context, None)
            if model.predictor is None:
                # Visible to the model's module-level code, which runs during the import.
                os.environ.update(settings.env)
                model.start(pool, load)
            await stack.enter_async_context(events)
            set_metric_sink(events.metric)
            stack.callback(set_metric_sink, None)
            if settings.otlp_endpoint:
                # FastAPI's own telemetry traces each request once a provider is installed.
                provider = setup_tracing(TITLE, settings.otlp_endpoint)
                stack.callback(provider.shutdown)
            watchdog.start()
            stack.push_async_callback(watchdog.stop)
            yield
        # A worker condemned by its watchdog ends here, its events published.
        watchdog.exit_if_ending()

    # Not create_service_app: this class answers predict first (as the gateway's does).
    app = WorkerApp(title=TITLE, version="0.1.0", lifespan=lifespan)
    if settings.replica_key is not None:
        app.replica_key = ReplicaKeyCheck(settings.replica_key)
    install_error_handlers(app)

    identity = replica_identity()

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        if model.ready():
            return JSONResponse({"status": "ok"}, headers=identity)
        return error_response(503, "not_ready", f"{TITLE} is starting")

    @app.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        return metrics_response(metrics.registry)

    install_batch_route(app, model, pool, settings, events)
    runner = direct_runner(
        lambda: handler.pool, batch=declares_batch(settings.env), watchdog=watchdog
    )
    batching = batching_config(settings.env)
    if batching is not None:
        batcher = AdaptiveBatcher(pool, batching, max_calls=threads, watchdog=watchdog)
        handler.batcher = batcher
        runner = batcher.run
    install_infer_routes(app, model, settings, runner, events, watchdog)
    app.state.model = model
    app.state.metrics = metrics
    app.state.events = events

    # Predict skips FastAPI's per-request machinery (its telemetry check, body-limit, error
    # and exception layers, the route walk, dependency solving): together they cost as much
    # as logging the prediction. With tracing on, it stays behind FastAPI's telemetry, which
    # opens the request's span, and answers just ahead of the routing.
    if settings.otlp_endpoint:
        app.add_middleware(PredictEndpoint, handler=handler)
    else:
        app.predict = handler
    return app
