"""What the alerts service keeps about each trigger: its evaluation state and its firings."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, text
from sqlalchemy.orm import Mapped, mapped_column

from cormorant.common.db.base import Base, EmptyArray, EmptyObject, UUIDPk


class FiringStatus(StrEnum):
    """Where a firing's action stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def _trigger_fk() -> ForeignKey:
    return ForeignKey("triggers.id", ondelete="CASCADE")


class TriggerState(Base):
    """A trigger's evaluation state: one row, locked by the one replica evaluating it.

    Kept apart from ``triggers`` so that editing a trigger never waits on an evaluation.
    """

    __tablename__ = "trigger_states"

    trigger_id: Mapped[uuid.UUID] = mapped_column(_trigger_fk(), primary_key=True)
    next_evaluation_at: Mapped[datetime] = mapped_column(server_default=text("now()"), index=True)
    last_evaluated_at: Mapped[datetime | None]
    last_metric_id: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    """The newest ``metrics.id`` already evaluated: the next evaluation reads past it."""
    streak: Mapped[int] = mapped_column(server_default=text("0"))
    """Values that met the condition in consecutive evaluations since the last reset."""
    streak_values: Mapped[EmptyArray]
    """The latest of those values (a bounded sample), for the firing's message."""
    cooldown_until: Mapped[datetime | None]
    evaluations: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    last_evaluation: Mapped[EmptyObject]
    """``{"at", "new_values", "matching", "streak", "outcome"}`` of the latest evaluation."""


class TriggerFiring(Base):
    """One firing of a trigger: written with the evaluation that fired it, delivered after
    (an outbox), so that a restart neither loses nor repeats it."""

    __tablename__ = "trigger_firings"
    __table_args__ = (
        Index(None, "trigger_id", "fired_at"),
        Index(
            None,
            "next_attempt_at",
            postgresql_where=text("status = 'pending' OR NOT announced"),
        ),
    )

    id: Mapped[UUIDPk]
    trigger_id: Mapped[uuid.UUID] = mapped_column(_trigger_fk())
    fired_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    status: Mapped[FiringStatus] = mapped_column(server_default=FiringStatus.PENDING.value)
    action: Mapped[str]
    count: Mapped[int]
    """How many values met the condition when it fired."""
    values: Mapped[EmptyArray]
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    announced: Mapped[bool] = mapped_column(server_default=text("false"))
    """Whether its ``AlertFired`` event is on NATS."""
    delivered_at: Mapped[datetime | None]
    error: Mapped[str | None]
    result: Mapped[EmptyObject]
    """What the action answered: the webhook's status, the flow run's id…"""
