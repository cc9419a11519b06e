"""The Feedback service's ASGI app: the datasets API on PostgreSQL and fsspec storage."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from cormorant.common.datasets import BlobStore, DatasetStore
from cormorant.common.db import session_factory
from cormorant.common.lifespan import open_database, open_tracing
from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.feedback.api import FeedbackState, router
from cormorant.feedback.settings import FeedbackSettings

TITLE = "cormorant-feedback"
log = logging.getLogger(__name__)


def create_app(settings: FeedbackSettings) -> FastAPI:
    """Build the Feedback app; its lifespan migrates the database and opens dataset storage."""
    registry = new_registry()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[FeedbackState]:
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
            started.set()
            log.info("feedback ready; datasets stored at %s", blobs.url)
            try:
                yield FeedbackState(datasets=datasets, settings=settings)
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    app.include_router(router)
    return app
