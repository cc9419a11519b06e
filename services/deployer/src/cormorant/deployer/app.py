"""The Deployer's composition root: builds every component, starts them, yields them typed.

Nothing here decides anything: each component owns its tasks (started here, stopped in
reverse order), and the routes read the components from the lifespan state
(``api.deps.DeployerState``) through typed dependencies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
from fastapi import FastAPI

from cormorant.common.datasets import BlobStore
from cormorant.common.db import session_factory
from cormorant.common.endpoints.snapshot import SnapshotStore
from cormorant.common.internal import internal_client
from cormorant.common.lifespan import open_platform
from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.deployer.api import demand as demand_api
from cormorant.deployer.api import endpoints as endpoints_api
from cormorant.deployer.api import manifests as manifests_api
from cormorant.deployer.api import rollout as rollout_api
from cormorant.deployer.api import streams as streams_api
from cormorant.deployer.api import usage as usage_api
from cormorant.deployer.api.deps import DeployerState
from cormorant.deployer.endpoints.service import EndpointService
from cormorant.deployer.endpoints.store import Store
from cormorant.deployer.fleet import RemoteFleet
from cormorant.deployer.rollout.handshake import GatewayHandshake
from cormorant.deployer.rollout.progressive import MetricsReader, ProgressiveRollouts
from cormorant.deployer.rollout.service import RolloutService
from cormorant.deployer.rollout.store import RolloutStore
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.streams.status import StreamService
from cormorant.deployer.streams.swap import StreamRollout

TITLE = "cormorant-deployer"
log = logging.getLogger(__name__)


def create_app(
    settings: DeployerSettings, *, fleet_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the Deployer app; its lifespan migrates, connects and waits for the fleet service
    (at ``settings.fleet_url``, or through ``fleet_transport`` when given, as in tests)."""
    registry = new_registry()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[DeployerState]:
        data_dir = settings.data_dir.resolve()
        resolved = settings.model_copy(update={"data_dir": data_dir})
        async with AsyncExitStack() as stack:
            platform = await open_platform(
                stack, resolved, title=TITLE, publisher="deployer", registry=registry,
                timeout=resolved.startup_timeout_s,
            )  # fmt: skip
            nc, publisher = platform.nc, platform.publisher
            store = Store(session_factory(platform.engine))

            archives = BlobStore(
                resolved.resolved_archives_url(),
                storage_options=resolved.archives_storage_options,
            )
            await archives.prepare()
            snapshots = SnapshotStore(data_dir, archives)
            # Its own client for the fleet, with the credential: replicas never see it.
            fleet_http = await stack.enter_async_context(
                internal_client(resolved, base_url=resolved.fleet_url, transport=fleet_transport)
            )
            fleet = RemoteFleet(fleet_http, nc)
            kind = (await fleet.info()).kind

            endpoints = EndpointService(
                settings=resolved,
                store=store,
                fleet=fleet,
                snapshots=snapshots,
                publisher=publisher,
            )
            rollouts = RolloutService(
                endpoints=endpoints,
                store=RolloutStore(store.sessions),
                handshake=GatewayHandshake(nc, timeout_s=resolved.handshake_timeout_s),
            )
            stack.push_async_callback(rollouts.close)
            # Its own client: the shared one also calls replicas, which never see the credential.
            internal = await stack.enter_async_context(internal_client(resolved))
            reader = MetricsReader(internal, resolved.predictlog_url)
            rollouts.progressive = ProgressiveRollouts(rollouts, reader).start
            # Either fleet hands a stream's consumer group over (local processes, or one
            # bridge Deployment after the other on a cluster).
            rollouts.kinds["stream"] = StreamRollout()
            await rollouts.recover()
            state = DeployerState(
                endpoints=endpoints,
                rollouts=rollouts,
                streams=StreamService(store=store, fleet=fleet),
                fleet=fleet,
            )

            started.set()
            log.info("deployer ready; the %s fleet runs the replicas", kind)
            try:
                yield state
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, settings=settings, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    endpoints_api.install_validation_messages(app)
    app.include_router(endpoints_api.router)
    app.include_router(rollout_api.router)
    app.include_router(streams_api.router)
    app.include_router(demand_api.router)
    app.include_router(usage_api.router)
    app.include_router(manifests_api.router)
    return app
