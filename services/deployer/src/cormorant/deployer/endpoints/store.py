"""The deployer's reads and writes in PostgreSQL: endpoints, versions, traffic, replicas, tokens.

Every method is one transaction; callers publish their events after it returns, so nothing
is announced that the database does not hold.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.db.models import (
    PREFIX_LENGTH,
    Endpoint,
    EndpointKind,
    EndpointStatus,
    EndpointToken,
    ModelVersion,
    Replica,
    ReplicaState,
    Traffic,
    TrafficChange,
    VersionStatus,
)
from cormorant.deployer.endpoints.schemas import EndpointSpec, Route, RouteReplica

SLUG_MAX = 63
# Room for a "-NNNNN" suffix within the 63 characters of a DNS label.
_SLUG_BASE_MAX = SLUG_MAX - 6
_SLUG_ATTEMPTS = 8
LIVE_REPLICA_STATES = (
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.DRAINING,
    ReplicaState.FAILED,
)


def slugify(name: str) -> str:
    """``name`` as a slug: lowercase letters, digits and single dashes."""
    ascii_name = name.encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")[:_SLUG_BASE_MAX].strip("-")
    return slug or "endpoint"


def next_free_slug(base: str, taken: Iterable[str]) -> str:
    """``base``, else ``base-2``, ``base-3``… whichever is free first."""
    used = set(taken)
    if base not in used:
        return base
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """A model version as the deployer uses it."""

    id: uuid.UUID
    number: int
    source: str
    commit: str | None
    digest: str

    @property
    def label(self) -> str:
        """What the API, the routes and the traffic weights call this version."""
        return str(self.number)


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """An endpoint row with its parsed spec and current version."""

    id: uuid.UUID
    slug: str
    kind: str
    status: str
    reason: str | None
    spec: EndpointSpec
    desired: int
    created_at: datetime
    deleted: bool
    version: VersionRecord | None


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """A replica row."""

    id: uuid.UUID
    endpoint_id: uuid.UUID
    version_id: uuid.UUID
    url: str | None
    host: str | None
    pid: int | None
    state: str
    restarts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class EndpointStats:
    """Live counts of an endpoint's replicas."""

    ready: int = 0
    restarts: int = 0


@dataclass(frozen=True, slots=True)
class StatusChange:
    """A new status of an endpoint (and the outcome of its version)."""

    endpoint_id: uuid.UUID
    version_id: uuid.UUID | None
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class NewEndpoint:
    """What creating an endpoint writes."""

    spec: EndpointSpec
    digest: str
    commit: str | None
    token_hash: str
    token_prefix: str


class Store:
    """Transactions of the deployer."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def create_endpoint(self, new: NewEndpoint) -> EndpointRecord:
        """Insert the endpoint, its version 1, its traffic and its token under a free slug."""
        base = slugify(new.spec.name)
        for attempt in range(_SLUG_ATTEMPTS):
            try:
                return await self._insert_endpoint(new, base)
            except IntegrityError as exc:
                # Another create took the same slug between our read and our insert.
                if "slug" not in str(exc.orig) or attempt == _SLUG_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _insert_endpoint(self, new: NewEndpoint, base: str) -> EndpointRecord:
        spec = new.spec
        batch = spec.kind == "batch"
        async with self.sessions() as session, session.begin():
            taken = await session.scalars(
                select(Endpoint.slug).where(
                    or_(Endpoint.slug == base, Endpoint.slug.like(f"{base}-%"))
                )
            )
            endpoint = Endpoint(
                id=uuid.uuid4(),
                slug=next_free_slug(base, taken),
                name=spec.name,
                kind=EndpointKind(spec.kind),
                status=EndpointStatus.IDLE if batch else EndpointStatus.DEPLOYING,
                spec=spec.model_dump(mode="json"),
                desired_replicas=0 if batch else spec.replicas.min,
            )
            version = new_version_row(endpoint.id, 1, spec, new.digest, new.commit)
            weights = {"1": 100}
            session.add(endpoint)
            await session.flush()
            session.add_all(
                [
                    version,
                    Traffic(endpoint_id=endpoint.id, generation=1, weights=weights),
                    TrafficChange(
                        endpoint_id=endpoint.id, generation=1, weights=weights, action="deploy"
                    ),
                    EndpointToken(
                        endpoint_id=endpoint.id,
                        token_hash=new.token_hash,
                        prefix=new.token_prefix[:PREFIX_LENGTH],
                    ),
                ]
            )
            await session.flush()
            return _endpoint_record(endpoint, version_record(version))

    async def find(self, slug: str) -> EndpointRecord | None:
        """The endpoint named ``slug`` unless it was deleted."""
        async with self.sessions() as session:
            endpoint = await session.scalar(
                select(Endpoint).where(Endpoint.slug == slug, Endpoint.deleted_at.is_(None))
            )
            if endpoint is None:
                return None
            return _endpoint_record(endpoint, await _current_version(session, endpoint.id))

    async def get(self, endpoint_id: uuid.UUID) -> EndpointRecord | None:
        """The endpoint ``endpoint_id``, deleted or not."""
        async with self.sessions() as session:
            endpoint = await session.get(Endpoint, endpoint_id)
            if endpoint is None:
                return None
            return _endpoint_record(endpoint, await _current_version(session, endpoint.id))

    async def endpoints(self) -> list[EndpointRecord]:
        """Every endpoint that is not deleted, newest first."""
        return [record for record, _ in await self.overview()]

    async def overview(
        self, endpoint_id: uuid.UUID | None = None
    ) -> list[tuple[EndpointRecord, EndpointStats]]:
        """Endpoints with their replica counts, all read from one snapshot of the database.

        ``endpoint_id`` selects that endpoint (deleted or not); by default every live one,
        newest first.
        """
        async with self.sessions() as session:
            # One snapshot: a replica turning ready and the endpoint's new status are
            # committed together, so a reader must not see one without the other.
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            query = select(Endpoint)
            if endpoint_id is not None:
                query = query.where(Endpoint.id == endpoint_id)
            else:
                query = query.where(Endpoint.deleted_at.is_(None)).order_by(
                    Endpoint.created_at.desc(), Endpoint.slug
                )
            rows = (await session.scalars(query)).all()
            stats = await _stats(session, [endpoint.id for endpoint in rows])
            return [
                (
                    _endpoint_record(endpoint, await _current_version(session, endpoint.id)),
                    stats.get(endpoint.id, EndpointStats()),
                )
                for endpoint in rows
            ]

    async def live_replicas(self) -> list[ReplicaRecord]:
        """Every replica the database says is running or should be (any endpoint)."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Replica).where(Replica.state.in_(LIVE_REPLICA_STATES))
            )
            return [_replica_record(row) for row in rows]

    async def mark_deleted(self, endpoint_id: uuid.UUID) -> None:
        """Soft-delete the endpoint: no replicas wanted, every token revoked."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Endpoint)
                .where(Endpoint.id == endpoint_id)
                .values(
                    deleted_at=func.now(),
                    status=EndpointStatus.STOPPED,
                    reason=None,
                    desired_replicas=0,
                )
            )
            await _revoke_tokens(session, endpoint_id)

    async def rotate_token(self, endpoint_id: uuid.UUID, token_hash: str, prefix: str) -> None:
        """Revoke every token of the endpoint and store the new one's hash."""
        async with self.sessions() as session, session.begin():
            await _revoke_tokens(session, endpoint_id)
            session.add(
                EndpointToken(
                    endpoint_id=endpoint_id, token_hash=token_hash, prefix=prefix[:PREFIX_LENGTH]
                )
            )

    async def set_status(self, change: StatusChange) -> None:
        """Record the endpoint's status, and its version's outcome when it is known."""
        async with self.sessions() as session, session.begin():
            await _set_status(session, change)

    async def set_desired(self, endpoint_id: uuid.UUID, desired: int) -> None:
        """Record how many replicas the endpoint should have."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Endpoint)
                .where(Endpoint.id == endpoint_id, Endpoint.deleted_at.is_(None))
                .values(desired_replicas=desired)
            )

    async def add_replica(self, endpoint_id: uuid.UUID, version_id: uuid.UUID) -> uuid.UUID:
        """A new replica row in state ``starting``; its id."""
        replica_id = uuid.uuid4()
        async with self.sessions() as session, session.begin():
            session.add(
                Replica(
                    id=replica_id,
                    endpoint_id=endpoint_id,
                    version_id=version_id,
                    state=ReplicaState.STARTING,
                )
            )
        return replica_id

    async def update_replica(
        self, replica_id: uuid.UUID, status: StatusChange | None = None, **values: Any
    ) -> None:
        """Change columns of one replica row (``state`` as a ``ReplicaState`` value), and the
        endpoint status that follows from it in the same transaction."""
        if "state" in values:
            values["state"] = ReplicaState(values["state"])
        async with self.sessions() as session, session.begin():
            await session.execute(update(Replica).where(Replica.id == replica_id).values(**values))
            if status is not None:
                await _set_status(session, status)

    async def routes(self, slug: str | None = None) -> list[Route]:
        """The routing documents of every live endpoint, or of ``slug`` only."""
        async with self.sessions() as session:
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            query = (
                select(Endpoint, Traffic)
                .join(Traffic, Traffic.endpoint_id == Endpoint.id, isouter=True)
                .where(Endpoint.deleted_at.is_(None))
                .order_by(Endpoint.slug)
            )
            if slug is not None:
                query = query.where(Endpoint.slug == slug)
            pairs = (await session.execute(query)).all()
            ids = [endpoint.id for endpoint, _ in pairs]
            ready: dict[uuid.UUID, list[RouteReplica]] = {endpoint_id: [] for endpoint_id in ids}
            if ids:
                rows = await session.execute(
                    select(Replica.endpoint_id, Replica.id, Replica.url, ModelVersion.number)
                    .join(ModelVersion, ModelVersion.id == Replica.version_id)
                    .where(
                        Replica.endpoint_id.in_(ids),
                        Replica.state == ReplicaState.READY,
                        Replica.url.is_not(None),
                    )
                    .order_by(Replica.created_at)
                )
                for endpoint_id, replica_id, url, number in rows:
                    ready[endpoint_id].append(
                        RouteReplica(
                            id=str(replica_id), version=str(number), url=url, state="ready"
                        )
                    )
            return [
                Route(
                    slug=endpoint.slug,
                    endpoint_id=str(endpoint.id),
                    kind=endpoint.kind.value,
                    status=endpoint.status.value,
                    timeout_s=float(endpoint.spec.get("timeout_s", 60.0)),
                    generation=traffic.generation if traffic is not None else 0,
                    weights={
                        str(k): int(v) for k, v in (traffic.weights if traffic else {}).items()
                    },
                    replicas=ready[endpoint.id],
                    shadow=traffic.shadow if traffic is not None and traffic.shadow else None,
                )
                for endpoint, traffic in pairs
            ]


async def _stats(
    session: AsyncSession, endpoint_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, EndpointStats]:
    if not endpoint_ids:
        return {}
    ready = func.count().filter(Replica.state == ReplicaState.READY)
    rows = await session.execute(
        select(Replica.endpoint_id, ready, func.coalesce(func.sum(Replica.restarts), 0))
        .where(Replica.endpoint_id.in_(endpoint_ids))
        .group_by(Replica.endpoint_id)
    )
    return {row[0]: EndpointStats(int(row[1]), int(row[2])) for row in rows}


async def _set_status(session: AsyncSession, change: StatusChange) -> None:
    await session.execute(
        update(Endpoint)
        .where(Endpoint.id == change.endpoint_id, Endpoint.deleted_at.is_(None))
        .values(status=EndpointStatus(change.status), reason=change.reason)
    )
    outcome = {"running": VersionStatus.READY, "failed": VersionStatus.FAILED}.get(change.status)
    if change.version_id is not None and outcome is not None:
        await session.execute(
            update(ModelVersion)
            .where(ModelVersion.id == change.version_id)
            .values(status=outcome, reason=change.reason)
        )


async def _revoke_tokens(session: AsyncSession, endpoint_id: uuid.UUID) -> None:
    await session.execute(
        update(EndpointToken)
        .where(EndpointToken.endpoint_id == endpoint_id, EndpointToken.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )


async def _current_version(session: AsyncSession, endpoint_id: uuid.UUID) -> VersionRecord | None:
    # The version with the most traffic serves the endpoint; with no traffic row, the newest.
    traffic = await session.get(Traffic, endpoint_id)
    number: int | None = None
    if traffic is not None and traffic.weights:
        label = max(traffic.weights.items(), key=lambda item: (int(item[1]), str(item[0])))[0]
        if str(label).isdigit():
            number = int(label)
    query = select(ModelVersion).where(ModelVersion.endpoint_id == endpoint_id)
    if number is not None:
        query = query.where(ModelVersion.number == number)
    version = await session.scalar(query.order_by(ModelVersion.number.desc()).limit(1))
    return version_record(version) if version is not None else None


def new_version_row(
    endpoint_id: uuid.UUID, number: int, spec: EndpointSpec, digest: str, commit: str | None
) -> ModelVersion:
    """A pending version ``number`` of the endpoint, holding the code fields of ``spec``."""
    return ModelVersion(
        id=uuid.uuid4(),
        endpoint_id=endpoint_id,
        number=number,
        source=spec.source,
        commit=commit,
        source_digest=digest,
        file=spec.file,
        function=spec.function,
        preprocess_file=spec.preprocess_file,
        preprocess_function=spec.preprocess_function,
        accepts_file=spec.accepts_file,
        env=dict(spec.env),
        server=dict(spec.server),
        status=VersionStatus.PENDING,
    )


def version_record(version: ModelVersion) -> VersionRecord:
    """The record callers get of ``version``."""
    return VersionRecord(
        id=version.id,
        number=version.number,
        source=version.source,
        commit=version.commit,
        digest=version.source_digest,
    )


def _endpoint_record(endpoint: Endpoint, version: VersionRecord | None) -> EndpointRecord:
    return EndpointRecord(
        id=endpoint.id,
        slug=endpoint.slug,
        kind=endpoint.kind.value,
        status=endpoint.status.value,
        reason=endpoint.reason,
        spec=EndpointSpec.model_validate(endpoint.spec),
        desired=endpoint.desired_replicas,
        created_at=endpoint.created_at,
        deleted=endpoint.deleted_at is not None,
        version=version,
    )


def _replica_record(row: Replica) -> ReplicaRecord:
    return ReplicaRecord(
        id=row.id,
        endpoint_id=row.endpoint_id,
        version_id=row.version_id,
        url=row.url,
        host=row.host,
        pid=row.pid,
        state=row.state.value,
        restarts=row.restarts,
        last_error=row.last_error,
    )
