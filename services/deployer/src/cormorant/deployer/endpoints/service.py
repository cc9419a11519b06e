"""Endpoint operations behind the API: create, rerun, read, delete, rotate the token, route."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from cormorant.common.auth import generate_token, hash_token
from cormorant.common.bus import BatchedPublisher
from cormorant.common.db.models import PREFIX_LENGTH
from cormorant.common.endpoints.fleet import Placement, placement_of
from cormorant.common.endpoints.schemas import (
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointOut,
    EndpointRerun,
    EndpointSpec,
    Route,
    RoutingTable,
    TokenOut,
)
from cormorant.common.endpoints.snapshot import Snapshot, SnapshotStore
from cormorant.common.endpoints.store import EndpointRecord, VersionRecord
from cormorant.common.endpoints.views import (
    EndpointNotFound,
    ReplicaEvent,
    endpoint_view,
    event_attributes,
    version_created,
)
from cormorant.common.errors import BadRequest
from cormorant.common.events import EndpointChanged, TrafficChanged
from cormorant.deployer.endpoints.sources import checkout
from cormorant.deployer.endpoints.store import NewEndpoint, Store
from cormorant.deployer.endpoints.validation import (
    changed_request,
    check_code,
    resolve_spec,
)
from cormorant.deployer.fleet import Fleet, FleetUnavailable
from cormorant.deployer.settings import DeployerSettings
from cormorant.deployer.streams.admin import prepare_stream_spec

log = logging.getLogger(__name__)


class EndpointService:
    """What the deployer's API does, independent of HTTP."""

    def __init__(
        self,
        *,
        settings: DeployerSettings,
        store: Store,
        fleet: Fleet,
        snapshots: SnapshotStore,
        publisher: BatchedPublisher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.fleet = fleet
        self.snapshots = snapshots
        self.publisher = publisher

    async def create(
        self, request: EndpointCreate, *, reuse: VersionRecord | None = None
    ) -> EndpointCreated:
        """Validate, snapshot the source, store the endpoint and start its replicas."""
        spec = resolve_spec(
            request,
            default_target=self.settings.default_target,
            default_timeout_s=self.settings.default_timeout_s,
        )
        if spec.kind == "stream":
            spec = await prepare_stream_spec(spec, request, self.settings)
        if reuse is not None:
            # A rerun serves the very code of the original version, not today's folder.
            snapshot = await self.snapshots.extracted(reuse.digest)
            check_code(snapshot.directory, spec, shown_source=spec.source)
            commit = reuse.commit
        else:
            snapshot, commit = await self._snapshot(spec)
        await self._check_worker(spec, snapshot)
        token = generate_token()
        record = await self.store.create_endpoint(
            NewEndpoint(
                spec=spec,
                digest=snapshot.digest,
                commit=commit,
                token_hash=hash_token(token),
                token_prefix=token[:PREFIX_LENGTH],
            )
        )
        log.info("created endpoint %s (%s) from %s", record.slug, spec.kind, spec.source)
        view = await self._view(record)
        self._announce_created(record, view)
        await self.fleet.apply(self.placement(record, record.spec, record.desired))
        return EndpointCreated(**(await self._view(record)).model_dump(), token=token)

    async def rerun(self, slug: str, overrides: EndpointRerun) -> EndpointCreated:
        """A new endpoint with the settings (and code) of ``slug``, changed by ``overrides``."""
        original = await self._find(slug)
        given = overrides.model_dump(exclude_unset=True)
        same_code = not ({"source", "commit"} & given.keys())
        if "source" in given and "commit" not in given:
            # The original's commit means nothing in another repository.
            given["commit"] = None
        request = changed_request(original.spec, given)
        return await self.create(request, reuse=original.version if same_code else None)

    async def list(self) -> EndpointList:
        """Every live endpoint, newest first."""
        views = []
        for record, stats in await self.store.overview():
            views.append(endpoint_view(record, stats, await self._events(record)))
        return EndpointList(endpoints=views)

    async def get(self, slug: str) -> EndpointOut:
        """The endpoint ``slug``."""
        return await self._view(await self._find(slug))

    async def delete(self, slug: str) -> EndpointOut:
        """Revoke the tokens, stop routing, drain and stop the replicas; the final JSON."""
        record = await self._find(slug)
        await self.store.mark_deleted(record.id)
        self.publisher.publish(EndpointChanged(endpoint=record.slug, change="deleted"))
        events = await self.fleet.remove(record.id)
        log.info("deleted endpoint %s", record.slug)
        [(deleted, stats)] = await self.store.overview(record.id)
        return endpoint_view(deleted, stats, events)

    async def rotate_token(self, slug: str) -> TokenOut:
        """A new token for ``slug``; every earlier one stops working at once."""
        record = await self._find(slug)
        token = generate_token()
        await self.store.rotate_token(record.id, hash_token(token), token[:PREFIX_LENGTH])
        attributes = {**event_attributes(await self._view(record)), "token_rotated": True}
        self.publisher.publish(
            EndpointChanged(endpoint=record.slug, change="updated", attributes=attributes)
        )
        return TokenOut(slug=record.slug, token=token)

    async def routes(self) -> RoutingTable:
        """The routing table of every live endpoint."""
        return RoutingTable(endpoints=await self.store.routes())

    async def route(self, slug: str) -> Route:
        """The route of ``slug``."""
        routes = await self.store.routes(slug)
        if not routes:
            raise EndpointNotFound(slug)
        return routes[0]

    def placement(
        self,
        record: EndpointRecord,
        spec: EndpointSpec,
        replicas: int,
        version: VersionRecord | None = None,
    ) -> Placement:
        """What the fleet runs for ``version`` (see ``fleet.placement_of``)."""
        current = version or record.version
        assert current is not None, "a stored endpoint has a version"
        archive = self.snapshots.archive_url(current.digest)
        return placement_of(record, spec, replicas, archive_url=archive, version=version)

    async def _find(self, slug: str) -> EndpointRecord:
        record = await self.store.find(slug)
        if record is None:
            raise EndpointNotFound(slug)
        return record

    async def _view(self, record: EndpointRecord) -> EndpointOut:
        found = await self.store.overview(record.id)
        if not found:
            raise EndpointNotFound(record.slug)
        [(current, stats)] = found
        return endpoint_view(current, stats, await self._events(record))

    async def _events(self, record: EndpointRecord) -> Sequence[ReplicaEvent]:
        # The database holds the endpoint and its replicas: only the recent events are the
        # fleet's, and an endpoint still reads (without them) while the fleet restarts.
        try:
            return await self.fleet.events(record.id)
        except FleetUnavailable as exc:
            log.warning("%s: no replica events: %s", record.slug, exc.message)
            return []

    async def _snapshot(self, spec: EndpointSpec) -> tuple[Snapshot, str | None]:
        limit = self.settings.git_timeout_s
        async with checkout(spec.source, spec.commit, time_limit=limit) as src:
            check_code(src.directory, spec, shown_source=spec.source)
            snapshot = await self.snapshots.snapshot(src.directory)
        return snapshot, src.commit

    async def _check_worker(self, spec: EndpointSpec, snapshot: Snapshot) -> None:
        refused = await self.fleet.check(spec, snapshot.digest)
        if refused is not None:
            raise BadRequest(
                f"the worker refused this configuration: {refused}", details={"field": "server"}
            )

    def _announce_created(self, record: EndpointRecord, view: EndpointOut) -> None:
        version = record.version
        assert version is not None
        spec = record.spec
        self.publisher.publish(
            EndpointChanged(
                endpoint=record.slug, change="created", attributes=event_attributes(view)
            )
        )
        self.publisher.publish(version_created(record.slug, version, spec))
        self.publisher.publish(
            TrafficChanged(endpoint=record.slug, generation=1, weights={version.label: 100})
        )
