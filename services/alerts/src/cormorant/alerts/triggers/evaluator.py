"""Evaluation: every ``every``, the values logged since the last evaluation are compared.

Each trigger's state row is claimed with ``FOR UPDATE SKIP LOCKED``: with several replicas,
exactly one evaluates a trigger at a time and the others pass it by. The new state, the
watermark (the newest metric id read) and a firing, if the trigger fires, are written in the
transaction that read the values: a replica killed mid-evaluation leaves nothing half done,
and the next evaluation reads the same values again.

Counting: the values meeting the condition add to a streak across consecutive evaluations;
an evaluation that reads new values none of which meets it resets the streak (the metric
recovered), one that reads nothing leaves it. At ``min_events`` the trigger fires, the
streak restarts from zero, and values read during the cool-down are not counted, so one
incident fires once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.alerts.triggers.metrics import TriggerMetrics
from cormorant.alerts.triggers.schemas import cooldown_seconds
from cormorant.common.db.models import Comparison, Metric, Trigger, TriggerFiring, TriggerState

log = logging.getLogger(__name__)

SAMPLE = 20
"""Values kept with a streak (and a firing) for its message."""


@dataclass(slots=True)
class Evaluator:
    """Evaluates due triggers until stopped; any number of replicas may run one."""

    sessions: async_sessionmaker[AsyncSession]
    metrics: TriggerMetrics
    tick: float
    batch: int
    max_values: int
    on_fired: asyncio.Event
    """Set when a firing was recorded, so that the outbox looks at once."""

    async def run(self, stopping: asyncio.Event, wake: asyncio.Event) -> None:
        """Evaluate what is due, then sleep until the next trigger is (at most ``tick``)."""
        while not stopping.is_set():
            wait = self.tick
            try:
                due = await self.evaluate_due()
                wait = 0.0 if due >= self.batch else min(self.tick, await self._until_next())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("trigger evaluation failed; retrying in %.1fs", self.tick)
            if wait > 0 and not wake.is_set():
                # Woken early by a new or changed trigger, or by stopping.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), wait)
            wake.clear()

    async def _until_next(self) -> float:
        async with self.sessions() as session:
            seconds = await session.scalar(
                select(
                    func.extract("epoch", func.min(TriggerState.next_evaluation_at) - func.now())
                )
                .join(Trigger, Trigger.id == TriggerState.trigger_id)
                .where(Trigger.enabled)
            )
        # Due already, after this replica evaluated what it could: another replica holds it.
        if seconds is None or seconds <= 0:
            return self.tick
        return float(seconds)

    async def evaluate_due(self) -> int:
        """Evaluate the due triggers no other replica holds; how many were evaluated."""
        async with self.sessions() as session, session.begin():
            rows = (
                await session.execute(
                    select(TriggerState, Trigger)
                    .join(Trigger, Trigger.id == TriggerState.trigger_id)
                    .where(Trigger.enabled, TriggerState.next_evaluation_at <= func.now())
                    .order_by(TriggerState.next_evaluation_at)
                    .limit(self.batch)
                    .with_for_update(of=TriggerState, skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            now = await session.scalar(select(func.now()))
            assert now is not None
            fired = False
            for state, trigger in rows:
                fired |= await self._evaluate(session, state, trigger, now)
        if fired:
            self.on_fired.set()
        return len(rows)

    async def _evaluate(
        self, session: AsyncSession, state: TriggerState, trigger: Trigger, now: datetime
    ) -> bool:
        rows = (
            await session.execute(
                select(Metric.id, Metric.value)
                .where(
                    Metric.endpoint_id == trigger.endpoint_id,
                    Metric.key == trigger.metric,
                    Metric.id > state.last_metric_id,
                )
                .order_by(Metric.id)
                .limit(self.max_values)
            )
        ).all()
        values = [float(value) for _, value in rows]
        if trigger.op is Comparison.GREATER:
            matching = [v for v in values if v > trigger.threshold]
        else:
            matching = [v for v in values if v < trigger.threshold]
        fired = False
        if state.cooldown_until is not None and now < state.cooldown_until:
            outcome = "cooling_down"
        elif not values:
            outcome = "idle"
        elif not matching:
            outcome = "recovered"
            state.streak, state.streak_values = 0, []
        else:
            state.streak += len(matching)
            state.streak_values = [*state.streak_values, *matching][-SAMPLE:]
            outcome = "counting"
            if state.streak >= trigger.min_events:
                outcome, fired = "fired", True
                await self._fire(session, state, trigger, now)
        if rows:
            state.last_metric_id = int(rows[-1][0])
        state.last_evaluated_at = now
        state.next_evaluation_at = now + timedelta(seconds=trigger.every_seconds)
        state.evaluations += 1
        state.last_evaluation = {
            "at": now.isoformat(),
            "new_values": len(values),
            "matching": len(matching),
            "streak": state.streak,
            "outcome": outcome,
        }
        self.metrics.evaluations.labels(outcome).inc()
        return fired

    async def _fire(
        self, session: AsyncSession, state: TriggerState, trigger: Trigger, now: datetime
    ) -> None:
        session.add(
            TriggerFiring(
                trigger_id=trigger.id,
                fired_at=now,
                action=trigger.action_kind.value,
                count=state.streak,
                values=list(state.streak_values),
                next_attempt_at=now,
            )
        )
        # A Core update: the ORM's would also move ``updated_at``, which tracks edits.
        await session.execute(
            update(Trigger)
            .where(Trigger.id == trigger.id)
            .values(last_fired_at=now, updated_at=Trigger.updated_at)
            .execution_options(synchronize_session=False)
        )
        state.streak, state.streak_values = 0, []
        state.cooldown_until = now + timedelta(seconds=cooldown_seconds(trigger))
        self.metrics.firings.labels(trigger.action_kind.value, trigger.severity.value).inc()
        log.info("trigger %s (%s) fired", trigger.id, trigger.name)
