"""The Feedback service's ASGI app: the datasets API on PostgreSQL and fsspec storage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from cormorant.common.datasets import BlobStore, DatasetStore
from cormorant.common.db import create_engine, session_factory, upgrade, wait_for_database
from cormorant.common.telemetry import new_registry, setup_tracing
from cormorant.common.web import create_service_app
from cormorant.feedback.api import router
from cormorant.feedback.settings import FeedbackSettings

TITLE = "cormorant-feedback"
log = logging.getLogger(__name__)


def create_app(settings: FeedbackSettings) -> FastAPI:
    """Build the Feedback app; its lifespan migrates the database and opens dataset storage."""
    registry = new_registry()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if settings.otlp_endpoint:
                provider = setup_tracing(TITLE, settings.otlp_endpoint)
                stack.callback(provider.shutdown)
            await wait_for_database(settings.database_url, timeout=settings.startup_timeout_s)
            engine = create_engine(settings.database_url)
            stack.push_async_callback(engine.dispose)
            await upgrade(engine)
            blobs = BlobStore(
                settings.resolved_datasets_url(),
                storage_options=settings.datasets_storage_options,
            )
            await blobs.prepare()
            app.state.datasets = DatasetStore(session_factory(engine), blobs)
            started.set()
            log.info("feedback ready; datasets stored at %s", blobs.url)
            try:
                yield
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, settings=settings, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    app.include_router(router)
    app.state.settings = settings
    return app
