"""The Deployer's composition root: builds every component, starts them, yields them typed.

Nothing here decides anything: each component owns its tasks (started here, stopped in
reverse order), and the routes read the components from the lifespan state
(``api.deps.DeployerState``) through typed dependencies.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI

from cormorant.common.bus import BatchedPublisher, close, connect, ensure_streams
from cormorant.common.db import create_engine, session_factory, upgrade, wait_for_database
from cormorant.common.telemetry import new_registry, setup_tracing
from cormorant.common.web import create_service_app
from cormorant.deployer.api import endpoints as endpoints_api
from cormorant.deployer.api import rollout as rollout_api
from cormorant.deployer.api import streams as streams_api
from cormorant.deployer.api.deps import DeployerState
from cormorant.deployer.api_batch import router as batch_router
from cormorant.deployer.api_batch import start_batch_jobs
from cormorant.deployer.api_flows import router as flows_router
from cormorant.deployer.batch import BatchService
from cormorant.deployer.endpoints.service import EndpointService
from cormorant.deployer.endpoints.snapshot import SnapshotStore
from cormorant.deployer.endpoints.store import Store
from cormorant.deployer.fleet.autoscale import Autoscaler
from cormorant.deployer.fleet.runtime.local import LocalRuntime
from cormorant.deployer.fleet.runtime.template import WorkerTemplate
from cormorant.deployer.fleet.supervisor import Supervisor
from cormorant.deployer.flows import FlowService
from cormorant.deployer.rollout.handshake import GatewayHandshake
from cormorant.deployer.rollout.progressive import MetricsReader, ProgressiveRollouts
from cormorant.deployer.rollout.service import RolloutService
from cormorant.deployer.rollout.store import RolloutStore
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.streams.lag import StreamAutoscaler
from cormorant.deployer.streams.status import StreamService
from cormorant.deployer.streams.swap import StreamRollout

TITLE = "cormorant-deployer"
log = logging.getLogger(__name__)


class _StateWithBatchAndFlows(DeployerState):
    """Batch jobs and flows beside the deployer's own components, until they move out."""

    batch: BatchService
    flows: FlowService


def replica_environment(settings: DeployerSettings) -> dict[str, str]:
    """The environment of every replica: this process's, with the shared settings in force."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORMORANT_DEPLOYER_")}
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
    async def lifespan(app: FastAPI) -> AsyncIterator[_StateWithBatchAndFlows]:
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
            supervisor = Supervisor(
                settings=resolved,
                runtime=runtime,
                store=store,
                snapshots=snapshots,
                publisher=publisher,
                http=http,
            )
            stack.push_async_callback(supervisor.close)
            await supervisor.load()
            supervisor.start()

            autoscaler = Autoscaler(
                supervisor,
                window=resolved.autoscale_window_s,
                interval=resolved.autoscale_interval_s,
                scale_down_delay=resolved.scale_down_delay_s,
            )
            await autoscaler.start(nc)
            stack.push_async_callback(autoscaler.stop)
            scaler = StreamAutoscaler(
                supervisor,
                interval=resolved.autoscale_interval_s,
                scale_down_delay=resolved.scale_down_delay_s,
            )
            scaler.start()
            stack.push_async_callback(scaler.stop)

            endpoints = EndpointService(
                settings=resolved,
                store=store,
                supervisor=supervisor,
                snapshots=snapshots,
                runtime=runtime,
                publisher=publisher,
            )
            rollouts = RolloutService(
                endpoints=endpoints,
                store=RolloutStore(store.sessions),
                handshake=GatewayHandshake(nc, timeout_s=resolved.handshake_timeout_s),
            )
            stack.push_async_callback(rollouts.close)
            reader = MetricsReader(http, resolved.predictlog_url)
            rollouts.progressive = ProgressiveRollouts(rollouts, reader).start
            rollouts.kinds["stream"] = StreamRollout(scaler)
            await rollouts.recover()
            state = DeployerState(
                endpoints=endpoints,
                rollouts=rollouts,
                streams=StreamService(store=store, supervisor=supervisor, scaler=scaler, http=http),
                supervisor=supervisor,
                runtime=runtime,
            )

            # Batch jobs and flows: removed from here when they move to their own services.
            batch = await start_batch_jobs(resolved, store.sessions, supervisor, http)
            flows = FlowService(
                sessions=store.sessions, endpoints=endpoints, rollouts=rollouts, batch=batch
            )

            started.set()
            log.info("deployer ready with %d endpoint(s)", len(supervisor.endpoints))
            try:
                yield _StateWithBatchAndFlows(**state, batch=batch, flows=flows)
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    endpoints_api.install_validation_messages(app)
    app.include_router(endpoints_api.router)
    app.include_router(rollout_api.router)
    app.include_router(flows_router)
    app.include_router(streams_api.router)
    app.include_router(batch_router)
    return app
