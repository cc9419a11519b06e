"""The Deployer service's ASGI app: endpoints API, routing table, replica supervision."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from cormorant.common.bus import BatchedPublisher, close, connect, ensure_streams
from cormorant.common.db import create_engine, session_factory, upgrade, wait_for_database
from cormorant.common.events import LoadReported
from cormorant.common.internal import PLATFORM_SECRET_VARIABLES, internal_client
from cormorant.common.telemetry import new_registry, setup_tracing
from cormorant.common.web import create_service_app
from cormorant.deployer.api import install_validation_messages, router
from cormorant.deployer.api_batch import router as batch_router
from cormorant.deployer.api_batch import start_batch_jobs
from cormorant.deployer.api_flows import router as flows_router
from cormorant.deployer.api_rollout import router as rollout_router
from cormorant.deployer.autoscale import Autoscaler
from cormorant.deployer.endpoints import EndpointService
from cormorant.deployer.flows import FlowService
from cormorant.deployer.handshake import GatewayHandshake
from cormorant.deployer.policy import MetricsReader, ProgressiveRollouts
from cormorant.deployer.rollout import RolloutService
from cormorant.deployer.rollout_store import RolloutStore
from cormorant.deployer.runtime.local import LocalRuntime
from cormorant.deployer.runtime.template import WorkerTemplate
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.snapshot import SnapshotStore
from cormorant.deployer.store import Store
from cormorant.deployer.streams import install_streams, stream_router
from cormorant.deployer.supervisor import Supervisor

TITLE = "cormorant-deployer"
log = logging.getLogger(__name__)

# Subscribed with core NATS: load reports are live signals, never stored (see LoadReported).
LOAD_SUBJECT = f"{LoadReported.subject_prefix}.*"


def replica_environment(settings: DeployerSettings) -> dict[str, str]:
    """The environment of every replica: this process's, with the shared settings in force."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CORMORANT_DEPLOYER_") and k not in PLATFORM_SECRET_VARIABLES
    }
    env["CORMORANT_NATS_URL"] = settings.nats_url
    env["CORMORANT_LOG_LEVEL"] = settings.log_level
    env["CORMORANT_LOG_JSON"] = "true" if settings.log_json else "false"
    env["CORMORANT_DATA_DIR"] = str(settings.data_dir)
    if settings.otlp_endpoint:
        env["CORMORANT_OTLP_ENDPOINT"] = settings.otlp_endpoint
    return env


def create_app(settings: DeployerSettings) -> FastAPI:
    """Build the Deployer app; its lifespan migrates, connects and adopts running replicas."""
    registry = new_registry()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        data_dir = settings.data_dir.resolve()
        resolved = settings.model_copy(update={"data_dir": data_dir})
        async with AsyncExitStack() as stack:
            if resolved.otlp_endpoint:
                provider = setup_tracing(TITLE, resolved.otlp_endpoint)
                stack.callback(provider.shutdown)
            await wait_for_database(resolved.database_url, timeout=resolved.startup_timeout_s)
            engine = create_engine(resolved.database_url)
            stack.push_async_callback(engine.dispose)
            await upgrade(engine)
            store = Store(session_factory(engine))

            async with asyncio.timeout(resolved.startup_timeout_s):
                nc = await connect(resolved.nats_url, name=TITLE)
            stack.push_async_callback(close, nc)
            await ensure_streams(nc.jetstream())
            publisher = BatchedPublisher(nc, name="deployer", registry=registry)
            await publisher.start()
            stack.push_async_callback(publisher.stop)

            http = await stack.enter_async_context(httpx.AsyncClient())
            snapshots = SnapshotStore(data_dir)
            environment = replica_environment(resolved)
            template_command = resolved.template_command()
            runtime = LocalRuntime(
                command=resolved.resolved_worker_command(),
                data_dir=data_dir,
                host=resolved.replica_host,
                env=environment,
                check_timeout=resolved.check_timeout_s,
                bridge_command=resolved.resolved_bridge_command(),
                template=WorkerTemplate(
                    command=template_command, modules=resolved.preload_modules, env=environment
                )
                if template_command
                else None,
            )
            # Ended after the supervisor closed (callbacks run last-in first-out).
            runtime.open()
            stack.push_async_callback(runtime.close)
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            supervisor = Supervisor(
                settings=resolved,
                runtime=runtime,
                store=store,
                snapshots=snapshots,
                publisher=publisher,
                http=http,
                tasks=tasks,
            )
            # Runs before the task group exits: every task it waits for is cancelled first.
            stack.push_async_callback(supervisor.close)
            await supervisor.load()

            autoscaler = Autoscaler(
                supervisor,
                window=resolved.autoscale_window_s,
                interval=resolved.autoscale_interval_s,
                scale_down_delay=resolved.scale_down_delay_s,
            )
            subscription = await nc.subscribe(LOAD_SUBJECT, cb=autoscaler.on_message)
            stack.push_async_callback(_unsubscribe, subscription)
            supervisor.spawn(autoscaler.run(), name="autoscaler")
            supervisor.spawn(supervisor.reconcile_forever(), name="reconciler")
            install_streams(app, supervisor, resolved)

            app.state.service = EndpointService(
                settings=resolved,
                store=store,
                supervisor=supervisor,
                snapshots=snapshots,
                runtime=runtime,
                publisher=publisher,
            )
            app.state.supervisor = supervisor
            rollouts = RolloutService(
                endpoints=app.state.service,
                store=RolloutStore(store.sessions),
                handshake=GatewayHandshake(nc, timeout_s=resolved.handshake_timeout_s),
            )
            # Its own client: the shared one also calls replicas, which never see the credential.
            internal = await stack.enter_async_context(internal_client(resolved))
            reader = MetricsReader(internal, resolved.predictlog_url)
            rollouts.progressive = ProgressiveRollouts(rollouts, reader).start
            rollouts.kinds["stream"] = app.state.stream_rollout
            await rollouts.recover()
            app.state.rollouts = rollouts
            app.state.flows = FlowService(
                sessions=store.sessions, endpoints=app.state.service, rollouts=rollouts
            )
            app.state.batch = await start_batch_jobs(
                resolved, store.sessions, supervisor, http, app.state.service
            )
            started.set()
            log.info("deployer ready with %d endpoint(s)", len(supervisor.endpoints))
            try:
                yield
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, settings=settings, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    install_validation_messages(app)
    app.include_router(router)
    app.include_router(rollout_router)
    app.include_router(flows_router)
    app.include_router(stream_router)
    app.include_router(batch_router)
    app.state.settings = settings
    return app


async def _unsubscribe(subscription: Any) -> None:
    try:
        await subscription.unsubscribe()
    except Exception as exc:  # a closed connection has no subscription left to remove
        log.debug("load subscription already gone: %s", exc)
