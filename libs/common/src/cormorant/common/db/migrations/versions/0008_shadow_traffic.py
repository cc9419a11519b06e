"""Shadow traffic: an endpoint's shadow target, and the predictions it answered.

``traffic.shadow`` is ``{"version": "<number>", "percent": <0-100>}`` while a share of the
live requests is mirrored to that version, NULL otherwise. ``predictions.shadow`` marks the
rows of mirrored requests: the same request id as the live row, never seen by the caller.
A constant default adds the column without rewriting the partitioned table.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "predictions",
        sa.Column("shadow", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.add_column(
        "traffic", sa.Column("shadow", postgresql.JSONB(astext_type=sa.Text()), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("traffic", "shadow")
    op.drop_column("predictions", "shadow")
