"""The PredictLog service's ASGI app: ingest in the background, the log's API in front.

Routes are the public ``/api/v1`` paths: the gateway checks the admin key and forwards
them unchanged, so the service listens on loopback and trusts what reaches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from sqlalchemy.pool import NullPool

from cormorant.common.bus import configured_streams
from cormorant.common.lifespan import open_bus, open_database, open_tracing
from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.predictlog import charts, database, export, logs, metrics_api
from cormorant.predictlog.database import EndpointDirectory, Store
from cormorant.predictlog.ingest import Ingest
from cormorant.predictlog.monitoring import IngestMetrics, sample_lag
from cormorant.predictlog.retention import keep_partitions, maintain
from cormorant.predictlog.settings import PredictLogSettings

TITLE = "cormorant-predictlog"


def create_app(
    settings: PredictLogSettings, *, registry: CollectorRegistry | None = None
) -> FastAPI:
    """Build the PredictLog app; its lifespan connects, then runs the ingest until shutdown."""
    metrics = IngestMetrics(registry or new_registry())
    ready = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            open_tracing(stack, TITLE, settings.otlp_endpoint)
            timeout = settings.startup_timeout_s
            engine = await open_database(
                stack, settings.database_url, timeout=timeout, migrate=False, poolclass=NullPool
            )
            pool = await database.create_pool(settings.database_url, size=settings.db_pool_size)
            stack.push_async_callback(pool.close)
            # Before the first batch, so that today's rows never land in the default partition.
            await maintain(
                engine,
                retention_days=settings.retention_days,
                ahead_days=settings.partitions_ahead_days,
            )
            directory = EndpointDirectory(pool, ttl=settings.endpoint_cache_s)
            app.state.store = Store(pool, directory, settings)

            streams = configured_streams(settings.bus_stream)
            nc = await open_bus(
                stack, settings.nats_url, name=TITLE, timeout=timeout, streams=streams
            )
            js = nc.jetstream()
            ingest = Ingest(settings, nc, js, directory, metrics)

            stopping = asyncio.Event()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(ingest.serve(stopping), name="predictlog-ingest")
                tasks.create_task(
                    keep_partitions(
                        engine,
                        retention_days=settings.retention_days,
                        ahead_days=settings.partitions_ahead_days,
                        interval=settings.maintenance_interval_s,
                        stopping=stopping,
                    ),
                    name="predictlog-partitions",
                )
                tasks.create_task(
                    sample_lag(
                        js,
                        metrics,
                        ingest.durables,
                        interval=settings.lag_sample_interval_s,
                        stopping=stopping,
                    ),
                    name="predictlog-lag",
                )
                ready.set()
                try:
                    yield
                finally:
                    ready.clear()
                    stopping.set()

    app = create_service_app(
        title=TITLE,
        settings=settings,
        registry=metrics.registry,
        ready=ready.is_set,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    for module in (logs, export, charts, metrics_api):
        app.include_router(module.router)
    return app
