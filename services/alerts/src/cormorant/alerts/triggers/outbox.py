"""Delivery of recorded firings: the outbox the evaluator writes into.

A deliverer claims one undelivered firing with ``FOR UPDATE SKIP LOCKED`` and keeps the row
locked while it announces the firing (``AlertFired`` on NATS, the firing's id as the message
id, so JetStream drops a repeat) and runs its action, then records the outcome in the same
transaction. Another replica never takes a firing in hand; a replica killed mid-delivery
loses its connection, PostgreSQL releases the lock, and the firing is delivered again by
whoever comes next, with the same id (the e-mail's ``Message-ID``, the webhook's
``X-Cormorant-Firing``) for receivers to recognise it. A failed attempt is retried after a
backoff that doubles, up to ``delivery_attempts``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from nats.js import JetStreamContext
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.alerts.triggers.alert import Alert, DeliveryError
from cormorant.alerts.triggers.metrics import TriggerMetrics
from cormorant.common.db.models import (
    ActionKind,
    Endpoint,
    FiringStatus,
    Trigger,
    TriggerFiring,
)
from cormorant.common.events import AlertFired
from cormorant.common.retry import Backoff

log = logging.getLogger(__name__)

ANNOUNCE_TIMEOUT_S = 5.0
ANNOUNCE_RETRY_S = 2.0


class Action(Protocol):
    """Carries out one kind of action for a firing."""

    async def deliver(self, alert: Alert) -> dict[str, Any]:
        """Do it; the outcome to record, or ``DeliveryError``."""
        ...


@dataclass(slots=True)
class Outbox:
    """Announces and delivers firings until stopped."""

    sessions: async_sessionmaker[AsyncSession]
    actions: dict[ActionKind, Action]
    js: JetStreamContext
    metrics: TriggerMetrics
    attempts: int
    backoff: float
    backoff_max: float
    tick: float
    link_base: str | None

    async def run(self, stopping: asyncio.Event, wake: asyncio.Event) -> None:
        """Deliver what is due; between rounds wait for a firing or ``tick``."""
        while not stopping.is_set():
            try:
                while await self.deliver_one():
                    if stopping.is_set():
                        return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("firing delivery failed; retrying in %.1fs", self.tick)
            if not wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), self.tick)
            wake.clear()

    async def deliver_one(self) -> bool:
        """Take one due firing in hand and settle it; False when none is due."""
        async with self.sessions() as session, session.begin():
            row = (
                await session.execute(
                    select(TriggerFiring, Trigger, Endpoint.slug)
                    .join(Trigger, Trigger.id == TriggerFiring.trigger_id)
                    .join(Endpoint, Endpoint.id == Trigger.endpoint_id)
                    .where(
                        or_(
                            TriggerFiring.status == FiringStatus.PENDING,
                            TriggerFiring.announced.is_(False),
                        ),
                        TriggerFiring.next_attempt_at <= func.now(),
                    )
                    .order_by(TriggerFiring.next_attempt_at)
                    .limit(1)
                    .with_for_update(of=TriggerFiring, skip_locked=True)
                )
            ).one_or_none()
            if row is None:
                return False
            firing, trigger, slug = row
            alert = self._alert(firing, trigger, slug)
            if not firing.announced:
                firing.announced = await self._announce(alert)
            if firing.status is FiringStatus.PENDING:
                await self._attempt(firing, alert)
            now = await session.scalar(select(func.now()))
            assert now is not None
            if firing.status is not FiringStatus.PENDING and not firing.announced:
                firing.next_attempt_at = now + timedelta(seconds=ANNOUNCE_RETRY_S)
            elif firing.status is FiringStatus.PENDING:
                backoff = Backoff(self.backoff, self.backoff_max)
                delay = backoff.delay(max(1, firing.attempts))
                firing.next_attempt_at = now + timedelta(seconds=delay)
            if firing.status is FiringStatus.DELIVERED:
                firing.delivered_at = now
                self.metrics.delivery_seconds.labels(firing.action).observe(
                    _seconds(firing.fired_at, now)
                )
        return True

    def _alert(self, firing: TriggerFiring, trigger: Trigger, slug: str) -> Alert:
        link = None
        if self.link_base:
            link = f"{self.link_base.rstrip('/')}/api/v1/triggers/{trigger.id}/firings"
        return Alert(
            firing_id=firing.id,
            trigger_id=trigger.id,
            title=trigger.name,
            severity=trigger.severity.value,
            endpoint=slug,
            tag=trigger.metric,
            comparison="gt" if trigger.op.value == ">" else "lt",
            threshold=trigger.threshold,
            count=firing.count,
            values=[float(v) for v in firing.values],
            fired_at=firing.fired_at,
            action=trigger.action_config,
            secret=trigger.secret,
            link=link,
        )

    async def _announce(self, alert: Alert) -> bool:
        event = AlertFired(
            event_id=alert.firing_id.hex,
            occurred_at=alert.fired_at,
            trigger_id=str(alert.trigger_id),
            endpoint=alert.endpoint,
            metric=alert.tag,
            value=alert.values[-1] if alert.values else alert.threshold,
            threshold=alert.threshold,
            action=_action_name(alert.action),
            severity=alert.severity,
            title=alert.title,
            count=alert.count,
            values=alert.values,
        )
        try:
            await self.js.publish(
                event.subject, event.encode(), headers=event.headers(), timeout=ANNOUNCE_TIMEOUT_S
            )
        except Exception as exc:
            log.warning("AlertFired of firing %s not published yet: %s", alert.firing_id, exc)
            return False
        return True

    async def _attempt(self, firing: TriggerFiring, alert: Alert) -> None:
        firing.attempts += 1
        action = self.actions[ActionKind(firing.action)]
        try:
            firing.result = await action.deliver(alert)
        except Exception as caught:
            # An action's unexpected error is a failed attempt too, not a stuck firing.
            exc = (
                caught
                if isinstance(caught, DeliveryError)
                else DeliveryError(f"{type(caught).__name__}: {caught}")
            )
            firing.error = str(exc)[:2000]
            final = not exc.retry or firing.attempts >= self.attempts
            outcome = "failed" if final else "retry"
            self.metrics.deliveries.labels(firing.action, outcome).inc()
            log.warning(
                "firing %s: attempt %d at %s failed (%s): %s",
                firing.id, firing.attempts, firing.action, outcome, exc,
            )  # fmt: skip
            if final:
                firing.status = FiringStatus.FAILED
            return
        firing.status = FiringStatus.DELIVERED
        firing.error = None
        self.metrics.deliveries.labels(firing.action, "delivered").inc()
        log.info("firing %s delivered by %s", firing.id, firing.action)


def _action_name(action: dict[str, Any]) -> Any:
    return next(kind.value for kind in ActionKind if kind.value in action)


def _seconds(start: datetime, end: datetime) -> float:
    return max(0.0, (end - start).total_seconds())
