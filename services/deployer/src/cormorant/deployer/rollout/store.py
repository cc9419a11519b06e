"""The rollout's reads and writes in PostgreSQL: versions, traffic generations, rollouts.

Every method is one transaction; the caller publishes events after it returns.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.db.models import (
    Endpoint,
    ModelVersion,
    Replica,
    Rollout,
    RolloutStatus,
    Traffic,
    TrafficChange,
    VersionStatus,
)
from cormorant.common.endpoints.schemas import EndpointSpec
from cormorant.common.endpoints.store import LIVE_REPLICA_STATES, VersionRecord, version_record
from cormorant.common.events import ShadowTarget
from cormorant.deployer.endpoints.store import new_version_row


@dataclass(frozen=True, slots=True)
class VersionRow:
    """A version as ``GET .../versions`` lists it."""

    id: uuid.UUID
    label: str
    status: str
    reason: str | None
    source: str
    commit: str | None
    digest: str
    file: str
    function: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class TrafficState:
    """The endpoint's current split, and the shadow version live requests are mirrored to."""

    generation: int
    weights: dict[str, int]
    shadow: ShadowTarget | None = None


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    """A live replica of some version."""

    id: uuid.UUID
    version: str
    state: str
    url: str | None


class RolloutStore:
    """Transactions of the rollout service."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def add_version(
        self, endpoint_id: uuid.UUID, spec: EndpointSpec, digest: str, commit: str | None
    ) -> VersionRecord:
        """A new version numbered after the endpoint's last one."""
        async with self.sessions() as session, session.begin():
            # Locks the endpoint row: two creates in a race get distinct numbers.
            await session.execute(
                select(Endpoint.id).where(Endpoint.id == endpoint_id).with_for_update()
            )
            last = await session.scalar(
                select(func.max(ModelVersion.number)).where(ModelVersion.endpoint_id == endpoint_id)
            )
            version = new_version_row(endpoint_id, (last or 0) + 1, spec, digest, commit)
            session.add(version)
            await session.flush()
            return version_record(version)

    async def versions(self, endpoint_id: uuid.UUID) -> list[VersionRow]:
        """Every version of the endpoint, newest first."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(ModelVersion)
                .where(ModelVersion.endpoint_id == endpoint_id)
                .order_by(ModelVersion.number.desc())
            )
            return [
                VersionRow(
                    id=row.id,
                    label=str(row.number),
                    status=row.status.value,
                    reason=row.reason,
                    source=row.source,
                    commit=row.commit,
                    digest=row.source_digest,
                    file=row.file,
                    function=row.function,
                    created_at=row.created_at,
                )
                for row in rows
            ]

    async def version_spec(self, version_id: uuid.UUID, base: EndpointSpec) -> EndpointSpec:
        """``base`` with the code fields of version ``version_id``."""
        async with self.sessions() as session:
            row = await session.get(ModelVersion, version_id)
            assert row is not None
            return base.model_copy(
                update={
                    "source": row.source,
                    "commit": row.commit,
                    "file": row.file,
                    "function": row.function,
                    "preprocess_file": row.preprocess_file,
                    "preprocess_function": row.preprocess_function,
                    "accepts_file": row.accepts_file,
                    "env": dict(row.env),
                    "server": dict(row.server),
                }
            )

    async def traffic(self, endpoint_id: uuid.UUID) -> TrafficState:
        """The endpoint's generation and weights."""
        async with self.sessions() as session:
            row = await session.get(Traffic, endpoint_id)
            if row is None:
                return TrafficState(0, {})
            return _state(row)

    async def set_traffic(
        self,
        endpoint_id: uuid.UUID,
        weights: dict[str, int],
        *,
        action: str,
        reason: str | None = None,
        spec: EndpointSpec | None = None,
    ) -> TrafficState:
        """Store a new split under the next generation (and, on a promote, the new spec)."""
        async with self.sessions() as session, session.begin():
            row = await session.get(Traffic, endpoint_id, with_for_update=True)
            generation = (row.generation if row is not None else 0) + 1
            if row is None:
                row = Traffic(endpoint_id=endpoint_id, generation=generation, weights=weights)
                session.add(row)
            else:
                row.generation = generation
                row.weights = dict(weights)
            session.add(
                TrafficChange(
                    endpoint_id=endpoint_id,
                    generation=generation,
                    weights=dict(weights),
                    action=action,
                    reason=reason,
                )
            )
            if spec is not None:
                await session.execute(
                    update(Endpoint)
                    .where(Endpoint.id == endpoint_id)
                    .values(spec=spec.model_dump(mode="json"))
                )
            return TrafficState(generation, dict(weights), _shadow(row.shadow))

    async def set_shadow(
        self, endpoint_id: uuid.UUID, shadow: ShadowTarget | None, *, action: str
    ) -> TrafficState:
        """Store the shadow target (None: no mirroring) under the next generation."""
        async with self.sessions() as session, session.begin():
            row = await session.get(Traffic, endpoint_id, with_for_update=True)
            if row is None:
                row = Traffic(endpoint_id=endpoint_id, generation=0, weights={})
                session.add(row)
            row.generation = (row.generation or 0) + 1
            row.shadow = None if shadow is None else shadow.model_dump()
            session.add(
                TrafficChange(
                    endpoint_id=endpoint_id,
                    generation=row.generation,
                    weights=dict(row.weights),
                    action=action,
                    reason=None
                    if shadow is None
                    else f"mirror {shadow.percent:g}% to version {shadow.version}",
                )
            )
            return _state(row)

    async def history(self, endpoint_id: uuid.UUID, limit: int = 50) -> list[dict[str, Any]]:
        """The latest traffic changes, newest first."""
        async with self.sessions() as session:
            rows = await session.scalars(
                select(TrafficChange)
                .where(TrafficChange.endpoint_id == endpoint_id)
                .order_by(TrafficChange.generation.desc())
                .limit(limit)
            )
            return [
                {
                    "generation": row.generation,
                    "weights": dict(row.weights),
                    "action": row.action,
                    "reason": row.reason,
                    "time": row.created_at.isoformat(),
                }
                for row in rows
            ]

    async def set_version_status(
        self, version_id: uuid.UUID, status: VersionStatus, reason: str | None = None
    ) -> None:
        """Record a version's outcome (ready, failed, retired)."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(ModelVersion)
                .where(ModelVersion.id == version_id)
                .values(status=status, reason=reason)
            )

    async def replicas(self, endpoint_id: uuid.UUID) -> list[ReplicaRow]:
        """The endpoint's live replicas of every version, oldest first."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(Replica.id, ModelVersion.number, Replica.state, Replica.url)
                .join(ModelVersion, ModelVersion.id == Replica.version_id)
                .where(Replica.endpoint_id == endpoint_id, Replica.state.in_(LIVE_REPLICA_STATES))
                .order_by(Replica.created_at)
            )
            return [
                ReplicaRow(replica_id, str(number), state.value, url)
                for replica_id, number, state, url in rows
            ]

    async def start_rollout(
        self,
        endpoint_id: uuid.UUID,
        version_id: uuid.UUID,
        policy: dict[str, Any],
        *,
        status: RolloutStatus = RolloutStatus.RUNNING,
        reason: str | None = None,
    ) -> uuid.UUID | None:
        """A rollout record; None when another one is running for the endpoint."""
        rollout_id = uuid.uuid4()
        async with self.sessions() as session, session.begin():
            if status == RolloutStatus.RUNNING:
                running = await session.scalar(
                    select(Rollout.id).where(
                        Rollout.endpoint_id == endpoint_id,
                        Rollout.status == RolloutStatus.RUNNING,
                    )
                )
                if running is not None:
                    return None
            session.add(
                Rollout(
                    id=rollout_id,
                    endpoint_id=endpoint_id,
                    version_id=version_id,
                    policy=policy,
                    status=status,
                    reason=reason,
                    finished_at=None if status == RolloutStatus.RUNNING else func.now(),
                )
            )
        return rollout_id

    async def update_rollout(
        self,
        rollout_id: uuid.UUID,
        *,
        step: int | None = None,
        checks: list[dict[str, Any]] | None = None,
        status: RolloutStatus | None = None,
        reason: str | None = None,
    ) -> None:
        """Advance a rollout's step, append its checks, or end it."""
        values: dict[str, Any] = {}
        if step is not None:
            values["step"] = step
        if checks is not None:
            values["checks"] = checks
        if status is not None:
            values["status"] = status
            values["reason"] = reason
            if status != RolloutStatus.RUNNING:
                values["finished_at"] = func.now()
        async with self.sessions() as session, session.begin():
            await session.execute(update(Rollout).where(Rollout.id == rollout_id).values(**values))

    async def fail_running_rollouts(self, reason: str) -> None:
        """Mark every running rollout failed with ``reason``."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Rollout)
                .where(Rollout.status == RolloutStatus.RUNNING)
                .values(status=RolloutStatus.FAILED, reason=reason, finished_at=func.now())
            )

    async def rollouts(self, endpoint_id: uuid.UUID, limit: int = 20) -> list[dict[str, Any]]:
        """The endpoint's latest rollouts, newest first."""
        async with self.sessions() as session:
            rows = await session.execute(
                select(Rollout, ModelVersion.number)
                .join(ModelVersion, ModelVersion.id == Rollout.version_id)
                .where(Rollout.endpoint_id == endpoint_id)
                .order_by(Rollout.started_at.desc())
                .limit(limit)
            )
            return [
                {
                    "id": str(rollout.id),
                    "version": str(number),
                    "policy": dict(rollout.policy),
                    "step": rollout.step,
                    "status": rollout.status.value,
                    "checks": list(rollout.checks),
                    "reason": rollout.reason,
                    "started_at": rollout.started_at.isoformat(),
                    "finished_at": rollout.finished_at.isoformat() if rollout.finished_at else None,
                }
                for rollout, number in rows
            ]


def _state(row: Traffic) -> TrafficState:
    weights = {str(k): int(v) for k, v in row.weights.items()}
    return TrafficState(row.generation, weights, _shadow(row.shadow))


def _shadow(stored: dict[str, Any] | None) -> ShadowTarget | None:
    return None if not stored else ShadowTarget.model_validate(stored)
