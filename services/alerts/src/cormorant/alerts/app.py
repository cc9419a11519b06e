"""The Alerts service's ASGI app: flows and continual-learning triggers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI

from cormorant.alerts import triggers
from cormorant.alerts.flows.api import router as flows_router
from cormorant.alerts.flows.exec import ExecLimits, contained_identity
from cormorant.alerts.flows.service import FlowService
from cormorant.alerts.settings import AlertsSettings
from cormorant.common.db import session_factory
from cormorant.common.lifespan import open_platform
from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.sdk import Client

TITLE = "cormorant-alerts"
log = logging.getLogger(__name__)


class State(TypedDict):
    """What the lifespan hands every request (``request.state``)."""

    flows: FlowService
    triggers: triggers.Triggers


def create_app(settings: AlertsSettings) -> FastAPI:
    """Build the Alerts app; its lifespan migrates, connects to NATS, starts flows and triggers."""
    registry = new_registry()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        async with AsyncExitStack() as stack:
            platform = await open_platform(
                stack, settings, title=TITLE, publisher="alerts", registry=registry,
                timeout=settings.startup_timeout_s,
            )  # fmt: skip
            nc, publisher = platform.nc, platform.publisher
            sessions = session_factory(platform.engine)
            js = nc.jetstream()

            # Flows: runs call the public API with the platform's key; exec tasks are contained.
            key = settings.api_key.get_secret_value() if settings.api_key else None
            api_url = settings.gateway_url or "http://127.0.0.1:8080"
            flows = FlowService(
                sessions=sessions,
                publisher=publisher,
                client=lambda: Client(api_url, key),
                limits=ExecLimits(
                    memory_bytes=settings.flows_exec_memory_mb << 20,
                    open_files=settings.flows_exec_open_files,
                    identity=await asyncio.to_thread(contained_identity),
                ),
                workspace_max_bytes=settings.flows_workspace_max_mb << 20,
            )
            await flows.recover()
            stack.push_async_callback(flows.close)

            # Triggers: evaluator and outbox run until shutdown.
            running = await stack.enter_async_context(
                triggers.run_triggers(settings, sessions, js, registry)
            )

            started.set()
            log.info("alerts ready")
            try:
                yield {"flows": flows, "triggers": running}
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, settings=settings, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    app.include_router(flows_router)
    app.include_router(triggers.router)
    return app
