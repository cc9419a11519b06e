"""The Feedback service's ASGI app: the datasets API and feedback loops, on PostgreSQL and
fsspec storage, with the loop scheduler running in the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from cormorant.common import bus
from cormorant.common.datasets import BlobStore, DatasetStore
from cormorant.common.db import session_factory
from cormorant.common.events import FeedbackRunFinished
from cormorant.common.lifespan import open_database, open_tracing
from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.feedback.api import LifespanState, router
from cormorant.feedback.api_loops import router as loops_router
from cormorant.feedback.export import ParquetEncoder
from cormorant.feedback.loops import Loops
from cormorant.feedback.runs import Clock, FeedbackMetrics, Publish, Runner, run_scheduler, utc_now
from cormorant.feedback.settings import FeedbackSettings
from cormorant.feedback.state import FeedbackState

TITLE = "cormorant-feedback"
log = logging.getLogger(__name__)


def create_app(settings: FeedbackSettings, *, clock: Clock = utc_now) -> FastAPI:
    """Build the Feedback app; its lifespan migrates the database, opens dataset storage and
    runs due feedback loops. ``clock`` is the scheduler's time (tests pass a fixed one)."""
    registry = new_registry()
    metrics = FeedbackMetrics(registry)
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[LifespanState]:
        async with AsyncExitStack() as stack:
            open_tracing(stack, TITLE, settings.otlp_endpoint)
            engine = await open_database(
                stack, settings.database_url, timeout=settings.startup_timeout_s
            )
            blobs = BlobStore(
                settings.resolved_datasets_url(),
                storage_options=settings.datasets_storage_options,
            )
            await blobs.prepare()
            datasets = DatasetStore(session_factory(engine), blobs)
            publish: Publish | None = None
            if settings.publish_events:
                async with asyncio.timeout(settings.startup_timeout_s):
                    nc = await bus.connect(settings.nats_url, name=TITLE)
                stack.push_async_callback(bus.close, nc)

                async def publish(event: FeedbackRunFinished) -> None:
                    await nc.publish(event.subject, event.encode(), headers=event.headers())

            # Arrow's one-time start is paid here, not inside the first Parquet export.
            encoder = ParquetEncoder()
            stack.callback(encoder.close)
            await encoder.start()
            runner = Runner(
                engine, datasets, metrics, clock=clock, publish=publish, encoder=encoder
            )
            state = FeedbackState(settings, datasets, Loops(engine, clock=clock), runner)
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            if settings.scheduler:
                scheduler = tasks.create_task(
                    run_scheduler(runner, poll_interval_s=settings.poll_interval_s, wake=state.wake)
                )
                stack.callback(scheduler.cancel)
            started.set()
            log.info("feedback ready; datasets stored at %s", blobs.url)
            try:
                yield {"datasets": datasets, "settings": settings, "feedback": state}
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, settings=settings, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    app.include_router(router)
    app.include_router(loops_router)
    return app
