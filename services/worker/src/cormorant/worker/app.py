"""The worker's app: ``/predict``, ``/healthz`` (ready once the model imported), ``/metrics``."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from cormorant.common.predictor import (
    PredictContext,
    Predictor,
    set_metric_sink,
    set_predict_context,
)
from cormorant.common.telemetry import new_registry, setup_tracing
from cormorant.common.web import create_service_app
from cormorant.worker.api import PredictEndpoint, PredictHandler
from cormorant.worker.metrics import WorkerMetrics
from cormorant.worker.model import ModelState, PredictorFactory
from cormorant.worker.publishing import metric_sink
from cormorant.worker.server import resolve_server_config
from cormorant.worker.settings import WorkerSettings

TITLE = "cormorant-worker"


def create_app(
    settings: WorkerSettings,
    predictor: Predictor | PredictorFactory | None = None,
    *,
    threads: int | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """The app of one worker process; the model imports in the background once it starts.

    ``predictor`` is a loaded predictor, a factory run off the loop at start-up, or ``None``
    to load what ``settings`` names. ``threads`` (default: the ``threads`` server setting)
    bounds how many predictions run at once.
    """
    if threads is None:
        threads = resolve_server_config(settings.server, host=settings.host, port=0).threads
    metrics = WorkerMetrics(registry or new_registry())
    metrics.predict_threads.set(threads)
    loaded = predictor if isinstance(predictor, Predictor) else None
    factory = predictor if callable(predictor) and loaded is None else None
    model = ModelState(metrics, loaded)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="predict")
    handler = PredictHandler(
        model, pool, metrics, max_body_bytes=settings.max_body_bytes, version=settings.version
    )

    def load() -> Predictor:
        if factory is not None:
            return factory()
        return Predictor.load(settings.predictor_spec(), temp_dir=settings.temp_dir)

    @asynccontextmanager
    async def lifespan(served: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            stack.callback(pool.shutdown, wait=False, cancel_futures=True)
            set_predict_context(PredictContext(settings.endpoint, settings.version))
            stack.callback(set_predict_context, None)
            if model.predictor is None:
                # Visible to the model's module-level code, which runs during the import.
                os.environ.update(settings.env)
                model.start(pool, load)
            sink = await stack.enter_async_context(metric_sink(settings, metrics))
            served.state.metric_sink = sink
            set_metric_sink(sink)
            stack.callback(set_metric_sink, None)
            if settings.otlp_endpoint:
                # FastAPI's own telemetry traces each request once a provider is installed.
                provider = setup_tracing(TITLE, settings.otlp_endpoint)
                stack.callback(provider.shutdown)
            yield

    app = create_service_app(
        title=TITLE, registry=metrics.registry, ready=model.ready, lifespan=lifespan
    )
    app.state.model = model
    app.state.metrics = metrics

    # Served ahead of FastAPI's routing: its per-request machinery (dependency solving,
    # exception and exit-stack middleware, the route walk) cost a fifth of a no-op prediction.
    app.add_middleware(PredictEndpoint, handler=handler)
    return app
