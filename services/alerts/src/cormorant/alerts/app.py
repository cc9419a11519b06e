"""The Alerts service's ASGI app: flows (and, to come, metric triggers)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI

from cormorant.alerts.flows.api import router as flows_router
from cormorant.alerts.flows.exec import ExecLimits
from cormorant.alerts.flows.service import FlowService
from cormorant.alerts.settings import AlertsSettings
from cormorant.common.bus import BatchedPublisher, close, connect, ensure_streams
from cormorant.common.db import create_engine, session_factory, upgrade, wait_for_database
from cormorant.common.telemetry import new_registry, setup_tracing
from cormorant.common.web import create_service_app
from cormorant.sdk import Client

TITLE = "cormorant-alerts"
log = logging.getLogger(__name__)


class State(TypedDict):
    """What the lifespan hands every request (``request.state``)."""

    flows: FlowService


def create_app(settings: AlertsSettings) -> FastAPI:
    """Build the Alerts app; its lifespan opens the database and NATS and starts the flows."""
    registry = new_registry()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            if settings.otlp_endpoint:
                provider = setup_tracing(TITLE, settings.otlp_endpoint)
                stack.callback(provider.shutdown)
            await wait_for_database(settings.database_url, timeout=settings.startup_timeout_s)
            engine = create_engine(settings.database_url)
            stack.push_async_callback(engine.dispose)
            await upgrade(engine)
            sessions = session_factory(engine)
            async with asyncio.timeout(settings.startup_timeout_s):
                nc = await connect(settings.nats_url, name=TITLE)
            stack.push_async_callback(close, nc)
            await ensure_streams(nc.jetstream())
            publisher = BatchedPublisher(nc, name="alerts", registry=registry)
            await publisher.start()
            stack.push_async_callback(publisher.stop)

            # Flows: runs call the public API with the flows' key; exec tasks are contained.
            key = settings.flows_api_key.get_secret_value() if settings.flows_api_key else None
            flows = FlowService(
                sessions=sessions,
                publisher=publisher,
                client=lambda: Client(settings.flows_api_url, key),
                limits=ExecLimits(
                    memory_bytes=settings.flows_exec_memory_mb << 20,
                    open_files=settings.flows_exec_open_files,
                ),
                workspace_max_bytes=settings.flows_workspace_max_mb << 20,
            )
            await flows.recover()
            stack.push_async_callback(flows.close)

            started.set()
            log.info("alerts ready")
            try:
                yield {"flows": flows}
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    app.include_router(flows_router)
    return app
