"""The endpoint rows the fleet reads and the replica rows (and the status) it writes.

The records are what both the deployer and the fleet pass around; ``ReplicaStore`` holds the
transactions of the fleet, and the deployer's ``Store`` adds its own (create, tokens, routes).
Every method is one transaction; callers publish their events after it returns, so nothing
is announced that the database does not hold.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.db.models import (
    Endpoint,
    EndpointStatus,
    ModelVersion,
    Replica,
    ReplicaState,
    Traffic,
    VersionStatus,
)
from cormorant.common.endpoints.schemas import EndpointSpec

SLUG_MAX = 63
# Room for a "-NNNNN" suffix within the 63 characters of a DNS label.
_SLUG_BASE_MAX = SLUG_MAX - 6
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


class ReplicaStore:
    """Transactions of the fleet: endpoints read, replica rows and endpoint status written."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def get(self, endpoint_id: uuid.UUID) -> EndpointRecord | None:
        """The endpoint ``endpoint_id``, deleted or not."""
        async with self.sessions() as session:
            endpoint = await session.get(Endpoint, endpoint_id)
            if endpoint is None:
                return None
            return endpoint_record(endpoint, await current_version(session, endpoint.id))

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
                    endpoint_record(endpoint, await current_version(session, endpoint.id)),
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


async def current_version(session: AsyncSession, endpoint_id: uuid.UUID) -> VersionRecord | None:
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


def version_record(version: ModelVersion) -> VersionRecord:
    """The record callers get of ``version``."""
    return VersionRecord(
        id=version.id,
        number=version.number,
        source=version.source,
        commit=version.commit,
        digest=version.source_digest,
    )


def endpoint_record(endpoint: Endpoint, version: VersionRecord | None) -> EndpointRecord:
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
