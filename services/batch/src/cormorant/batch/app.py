"""The Batch service's ASGI app: batch jobs on PostgreSQL, datasets storage and NATS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypedDict

import httpx
from fastapi import FastAPI

from cormorant.batch.api import router
from cormorant.batch.capacity import Capacity, DeployerApi
from cormorant.batch.jobs import BatchService
from cormorant.batch.settings import BatchSettings
from cormorant.common.datasets import BlobStore, DatasetStore
from cormorant.common.db import session_factory
from cormorant.common.internal import internal_client
from cormorant.common.lifespan import open_platform
from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app

TITLE = "cormorant-batch"
log = logging.getLogger(__name__)


class State(TypedDict):
    """What the lifespan hands every request (``request.state``)."""

    jobs: BatchService


def create_app(settings: BatchSettings) -> FastAPI:
    """Build the Batch app; its lifespan connects, fails jobs a previous run left, and serves."""
    registry = new_registry()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            platform = await open_platform(
                stack, settings, title=TITLE, publisher="batch", registry=registry,
                timeout=settings.startup_timeout_s,
            )  # fmt: skip
            nc, publisher = platform.nc, platform.publisher
            sessions = session_factory(platform.engine)
            blobs = BlobStore(
                settings.resolved_datasets_url(),
                storage_options=settings.datasets_storage_options,
            )
            await blobs.prepare()
            # Replicas never see the internal credential: the deployer gets a client of its own.
            http = await stack.enter_async_context(httpx.AsyncClient())
            internal = await stack.enter_async_context(internal_client(settings))
            capacity = Capacity(
                DeployerApi(internal, settings.deployer_url),
                nc,
                idle_timeout_s=settings.idle_timeout_s,
            )
            stack.push_async_callback(capacity.close)
            jobs = BatchService(
                settings=settings,
                sessions=sessions,
                capacity=capacity,
                datasets=DatasetStore(sessions, blobs),
                http=http,
                publisher=publisher,
            )
            # Runs first at shutdown: jobs end (marked failed) before what they use closes.
            stack.push_async_callback(jobs.close)
            await jobs.recover()
            started.set()
            log.info("batch ready; deployer at %s", settings.deployer_url)
            try:
                yield {"jobs": jobs}
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, settings=settings, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    app.include_router(router)
    return app
