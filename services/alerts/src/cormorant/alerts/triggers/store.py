"""Triggers in PostgreSQL: create, read, change and delete them with their state."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.alerts.triggers.schemas import (
    FiringOut,
    TriggerIn,
    TriggerOut,
    TriggerPatch,
    action_kind,
)
from cormorant.common.db.models import (
    ActionKind,
    Comparison,
    Endpoint,
    Metric,
    Severity,
    Trigger,
    TriggerFiring,
    TriggerState,
)
from cormorant.common.errors import BadRequest, NotFound

FlowCheck = Callable[[str], Awaitable[None]]
"""Raises ``BadRequest`` naming the ``flow`` field when no flow has that name."""

_COMPARISONS = {"gt": Comparison.GREATER, "lt": Comparison.LESS}
MAX_FIRINGS = 1000


def _trigger_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise NotFound(f"no trigger {value!r}: trigger ids are UUIDs") from None


@dataclass(slots=True)
class TriggerStore:
    """The triggers API's view of the database."""

    sessions: async_sessionmaker[AsyncSession]
    check_flow: FlowCheck

    async def _endpoint(self, session: AsyncSession, slug: str) -> Endpoint:
        endpoint = await session.scalar(
            select(Endpoint).where(Endpoint.slug == slug, Endpoint.deleted_at.is_(None))
        )
        if endpoint is None:
            raise NotFound(f"no endpoint {slug!r}; see GET /api/v1/endpoints")
        return endpoint

    async def _warnings(self, session: AsyncSession, trigger: Trigger, slug: str) -> list[str]:
        logged = await session.scalar(
            select(Metric.id)
            .where(Metric.endpoint_id == trigger.endpoint_id, Metric.key == trigger.metric)
            .limit(1)
        )
        if logged is not None:
            return []
        return [
            f"endpoint {slug!r} has never logged the tag {trigger.metric!r}: the trigger"
            " counts it once log_metric uses exactly this name"
        ]

    async def _check_action(self, action: dict[str, Any]) -> None:
        if action_kind(action) is ActionKind.FLOW:
            await self.check_flow(str(action["flow"]))

    async def create(self, slug: str, body: TriggerIn) -> TriggerOut:
        """Store a new trigger on ``slug``; its first evaluation is ``every`` from now."""
        await self._check_action(body.action)
        action = dict(body.action)
        secret = None
        if action_kind(action) is ActionKind.WEBHOOK:
            secret = action.pop("secret", None) or secrets.token_urlsafe(32)
        async with self.sessions() as session, session.begin():
            endpoint = await self._endpoint(session, slug)
            trigger = Trigger(
                name=body.title,
                endpoint_id=endpoint.id,
                metric=body.tag,
                op=_COMPARISONS[body.comparison],
                threshold=body.value,
                every_seconds=body.every_seconds,
                min_events=body.min_events,
                cooldown_seconds=None if body.cooldown is None else int(body.cooldown),
                action_kind=action_kind(action),
                action_config=action,
                severity=Severity(body.severity),
                enabled=body.enabled,
                secret=secret,
            )
            session.add(trigger)
            await session.flush()
            state = await self._arm(session, trigger)
            out = TriggerOut.of(trigger, slug, state)
            out.warnings = await self._warnings(session, trigger, slug)
        out.secret = secret
        return out

    async def _arm(self, session: AsyncSession, trigger: Trigger) -> TriggerState:
        """A fresh state: values logged from now on count, first evaluation ``every`` away."""
        newest = await session.scalar(select(func.coalesce(func.max(Metric.id), 0)))
        state = await session.get(TriggerState, trigger.id, with_for_update=True)
        if state is None:
            state = TriggerState(trigger_id=trigger.id)
            session.add(state)
        state.last_metric_id = int(newest or 0)
        state.streak = 0
        state.streak_values = []
        state.cooldown_until = None
        state.next_evaluation_at = func.now() + timedelta(seconds=trigger.every_seconds)
        await session.flush()
        await session.refresh(state)
        return state

    async def _load(
        self, session: AsyncSession, trigger_id: str, *, lock: bool = False
    ) -> tuple[Trigger, str]:
        query = (
            select(Trigger, Endpoint.slug)
            .join(Endpoint, Endpoint.id == Trigger.endpoint_id)
            .where(Trigger.id == _trigger_id(trigger_id))
        )
        if lock:
            query = query.with_for_update(of=Trigger)
        row = (await session.execute(query)).one_or_none()
        if row is None:
            raise NotFound(f"no trigger {trigger_id}; see GET /api/v1/triggers")
        return row[0], row[1]

    async def get(self, trigger_id: str) -> TriggerOut:
        """One trigger with its state."""
        async with self.sessions() as session:
            trigger, slug = await self._load(session, trigger_id)
            state = await session.get(TriggerState, trigger.id)
            return TriggerOut.of(trigger, slug, state)

    async def triggers(self, slug: str | None = None) -> list[TriggerOut]:
        """Every trigger, or the endpoint's, oldest first."""
        async with self.sessions() as session:
            query = (
                select(Trigger, Endpoint.slug, TriggerState)
                .join(Endpoint, Endpoint.id == Trigger.endpoint_id)
                .outerjoin(TriggerState, TriggerState.trigger_id == Trigger.id)
                .order_by(Trigger.created_at, Trigger.id)
            )
            if slug is not None:
                endpoint = await self._endpoint(session, slug)
                query = query.where(Trigger.endpoint_id == endpoint.id)
            rows = (await session.execute(query)).all()
            return [TriggerOut.of(trigger, s, state) for trigger, s, state in rows]

    async def update(self, trigger_id: str, body: TriggerPatch) -> TriggerOut:
        """Apply ``body``; enabling a trigger or changing its condition or interval re-arms
        it from now."""
        if body.action is not None:
            await self._check_action(body.action)
        async with self.sessions() as session, session.begin():
            trigger, slug = await self._load(session, trigger_id, lock=True)
            was_enabled = trigger.enabled
            changes = body.model_fields_set
            if "title" in changes and body.title is not None:
                trigger.name = body.title
            if body.severity is not None:
                trigger.severity = Severity(body.severity)
            if body.tag is not None:
                trigger.metric = body.tag
            if body.comparison is not None:
                trigger.op = _COMPARISONS[body.comparison]
            if body.value is not None:
                trigger.threshold = body.value
            if body.every is not None:
                trigger.every_seconds = int(body.every)
            if body.min_events is not None:
                trigger.min_events = body.min_events
            if "cooldown" in changes:
                trigger.cooldown_seconds = None if body.cooldown is None else int(body.cooldown)
            if body.action is not None:
                action = dict(body.action)
                kind = action_kind(action)
                if kind is ActionKind.WEBHOOK:
                    trigger.secret = action.pop("secret", None) or trigger.secret
                trigger.action_kind = kind
                trigger.action_config = action
            if body.enabled is not None:
                trigger.enabled = body.enabled
            await session.flush()
            state: TriggerState | None = None
            # A new condition or schedule starts afresh: values logged from now on, first
            # evaluation ``every`` away. So does enabling.
            rearm = changes & {"tag", "comparison", "value", "every"}
            if trigger.enabled and (rearm or not was_enabled):
                state = await self._arm(session, trigger)
            else:
                state = await session.get(TriggerState, trigger.id)
            await session.refresh(trigger)
            secret = None
            if trigger.action_kind is ActionKind.WEBHOOK and trigger.secret is None:
                trigger.secret = secret = secrets.token_urlsafe(32)
            out = TriggerOut.of(trigger, slug, state)
            out.warnings = await self._warnings(session, trigger, slug)
        out.secret = secret
        return out

    async def delete(self, trigger_id: str) -> None:
        """Remove the trigger, its state and its firings (undelivered ones are dropped)."""
        async with self.sessions() as session, session.begin():
            trigger, _ = await self._load(session, trigger_id, lock=True)
            await session.delete(trigger)

    async def firings(self, trigger_id: str, limit: int) -> list[FiringOut]:
        """The trigger's latest firings, newest first."""
        if not 1 <= limit <= MAX_FIRINGS:
            raise BadRequest(f"limit: give 1 to {MAX_FIRINGS}")
        async with self.sessions() as session:
            trigger, _ = await self._load(session, trigger_id)
            rows = await session.scalars(
                select(TriggerFiring)
                .where(TriggerFiring.trigger_id == trigger.id)
                .order_by(TriggerFiring.fired_at.desc(), TriggerFiring.id)
                .limit(limit)
            )
            return [FiringOut.of(firing) for firing in rows]
