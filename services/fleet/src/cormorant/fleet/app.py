"""The Fleet service's composition root: the fleet that runs replicas, started and yielded typed.

It adopts the replicas a previous fleet process left running (``LocalFleet.start``), so a
restart of this service, like one of the deployer, leaves every endpoint serving.
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
from cormorant.common.endpoints.store import ReplicaStore
from cormorant.common.lifespan import open_platform
from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.fleet import api
from cormorant.fleet.api import FleetState
from cormorant.fleet.demand import Demands
from cormorant.fleet.kubernetes.manifests import ClusterConfig
from cormorant.fleet.local import LocalFleet, local_runtime
from cormorant.fleet.runtime.local import prepare_sandbox
from cormorant.fleet.settings import FleetSettings

TITLE = "cormorant-fleet"
log = logging.getLogger(__name__)


def create_app(settings: FleetSettings) -> FastAPI:
    """Build the Fleet app; its lifespan connects and adopts the running replicas."""
    registry = new_registry()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[FleetState]:
        data_dir = settings.data_dir.resolve()
        resolved = settings.model_copy(update={"data_dir": data_dir})
        async with AsyncExitStack() as stack:
            platform = await open_platform(
                stack, resolved, title=TITLE, publisher="fleet", registry=registry,
                timeout=resolved.startup_timeout_s,
            )  # fmt: skip
            nc, publisher = platform.nc, platform.publisher
            store = ReplicaStore(session_factory(platform.engine))

            # Replicas never see the internal credential: a plain client probes them.
            http = await stack.enter_async_context(httpx.AsyncClient())
            contained = None
            if resolved.sandbox:
                contained = await prepare_sandbox(
                    resolved.resolved_sandbox_dir(),
                    data_dir,
                    uid_base=resolved.sandbox_uid_base,
                    uid_count=resolved.sandbox_uid_count,
                    # Shared by every stack on this machine: one uid, one stack.
                    uid_claims=resolved.sandbox_root / ".uids",
                )
            archives = BlobStore(
                resolved.resolved_archives_url(),
                storage_options=resolved.archives_storage_options,
            )
            await archives.prepare()
            snapshots = SnapshotStore(data_dir, archives)
            runtime = local_runtime(resolved, contained, spool_sink=publisher)
            fleet: LocalFleet
            if resolved.kind == "kubernetes":
                # Imported here: the Kubernetes client takes a second to import.
                from cormorant.fleet.kubernetes.client import Cluster, connect
                from cormorant.fleet.kubernetes.fleet import KubernetesFleet

                cluster = Cluster(await connect(resolved), ClusterConfig.of(resolved))
                fleet = KubernetesFleet(
                    settings=resolved,
                    store=store,
                    snapshots=snapshots,
                    publisher=publisher,
                    http=http,
                    cluster=cluster,
                    runtime=runtime,
                    registry=registry,
                )
            else:
                fleet = LocalFleet(
                    settings=resolved,
                    store=store,
                    snapshots=snapshots,
                    publisher=publisher,
                    http=http,
                    runtime=runtime,
                    registry=registry,
                )
            # Closed before the HTTP client, the bus and the database (last in, first out).
            stack.push_async_callback(fleet.close)
            await fleet.start(nc)
            demands = Demands(fleet.supervisor, idle_timeout_s=resolved.batch_idle_timeout_s)
            demands.recover()

            started.set()
            log.info("fleet ready with %d endpoint(s)", len(fleet.supervisor.endpoints))
            try:
                yield FleetState(fleet=fleet, demands=demands)
            finally:
                started.clear()

    app = create_service_app(
        title=TITLE, settings=settings, registry=registry, ready=started.is_set, lifespan=lifespan
    )
    app.include_router(api.router)
    return app
