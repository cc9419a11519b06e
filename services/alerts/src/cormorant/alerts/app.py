"""The Alerts service's ASGI app: continual-learning triggers on PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from cormorant.alerts import triggers
from cormorant.alerts.settings import AlertsSettings
from cormorant.common.bus import close, connect, ensure_streams
from cormorant.common.db import create_engine, session_factory, upgrade, wait_for_database
from cormorant.common.telemetry import new_registry, setup_tracing
from cormorant.common.web import create_service_app

TITLE = "cormorant-alerts"
log = logging.getLogger(__name__)


def create_app(settings: AlertsSettings) -> FastAPI:
    """Build the Alerts app; its lifespan migrates, connects to NATS and starts the triggers."""
    registry = new_registry()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, object]]:
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
            js = nc.jetstream()
            await ensure_streams(js)

            # Triggers: evaluator and outbox run until shutdown; the API reaches them
            # through the lifespan state.
            running = await stack.enter_async_context(
                triggers.run_triggers(settings, sessions, js, registry)
            )

            started.set()
            log.info("alerts ready")
            try:
                yield {"triggers": running}
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    app.include_router(triggers.router)
    return app
