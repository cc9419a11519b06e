"""Metrics carry their event id, unique, so a redelivered ``MetricLogged`` is stored once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: rows stored before this revision, and metrics not from an event, have none
    # (PostgreSQL lets any number of NULLs share a unique column).
    op.add_column("metrics", sa.Column("event_id", sa.Text(), nullable=True))
    op.create_unique_constraint(op.f("uq_metrics_event_id"), "metrics", ["event_id"])


def downgrade() -> None:
    op.drop_constraint(op.f("uq_metrics_event_id"), "metrics", type_="unique")
    op.drop_column("metrics", "event_id")
