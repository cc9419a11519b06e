"""The deployer's reads and writes in PostgreSQL: endpoints, versions, traffic, replicas, tokens.

Every method is one transaction; callers publish their events after it returns, so nothing
is announced that the database does not hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

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
from cormorant.common.endpoints.schemas import EndpointSpec, Route, RouteReplica
from cormorant.common.endpoints.store import (
    EndpointRecord,
    ReplicaStore,
    current_version,
    endpoint_record,
    slugify,
    version_record,
)

_SLUG_ATTEMPTS = 8


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
class NewEndpoint:
    """What creating an endpoint writes."""

    spec: EndpointSpec
    digest: str
    commit: str | None
    token_hash: str
    token_prefix: str


class Store(ReplicaStore):
    """Transactions of the deployer (and the fleet's, ``ReplicaStore``)."""

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
            return endpoint_record(endpoint, version_record(version))

    async def find(self, slug: str) -> EndpointRecord | None:
        """The endpoint named ``slug`` unless it was deleted."""
        async with self.sessions() as session:
            endpoint = await session.scalar(
                select(Endpoint).where(Endpoint.slug == slug, Endpoint.deleted_at.is_(None))
            )
            if endpoint is None:
                return None
            return endpoint_record(endpoint, await current_version(session, endpoint.id))

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


async def _revoke_tokens(session: AsyncSession, endpoint_id: uuid.UUID) -> None:
    await session.execute(
        update(EndpointToken)
        .where(EndpointToken.endpoint_id == endpoint_id, EndpointToken.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )


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
