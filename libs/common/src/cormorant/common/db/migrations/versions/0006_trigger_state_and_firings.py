"""Triggers get a severity, a cool-down and a webhook secret; their evaluation state and their
firings (an outbox: recorded with the evaluation, delivered after) get tables of their own.

Metrics get an index by (endpoint, key, id) for the triggers' reads.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEVERITIES = ("info", "warning", "critical")
FIRING_STATES = ("pending", "delivered", "failed")


def _listed(values: Sequence[str]) -> str:
    return ", ".join(f"'{value}'" for value in values)


def _now(name: str) -> sa.Column[sa.DateTime]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    # Triggers read each endpoint's values of a tag past the last id they evaluated.
    op.create_index(op.f("ix_metrics_endpoint_id_key_id"), "metrics", ["endpoint_id", "key", "id"])
    op.add_column(
        "triggers",
        sa.Column("severity", sa.String(32), server_default="warning", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_triggers_severity"), "triggers", f"severity IN ({_listed(SEVERITIES)})"
    )
    op.add_column("triggers", sa.Column("cooldown_seconds", sa.Integer(), nullable=True))
    op.create_check_constraint(
        op.f("ck_triggers_cooldown_seconds_not_negative"), "triggers", "cooldown_seconds >= 0"
    )
    op.add_column("triggers", sa.Column("secret", sa.Text(), nullable=True))
    op.add_column("triggers", _now("updated_at"))

    op.create_table(
        "trigger_states",
        sa.Column("trigger_id", sa.UUID(), nullable=False),
        _now("next_evaluation_at"),
        sa.Column("last_evaluated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_metric_id", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("streak", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "streak_values",
            postgresql.JSONB(),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("cooldown_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evaluations", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "last_evaluation",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["triggers.id"],
            name=op.f("fk_trigger_states_trigger_id_triggers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trigger_id", name=op.f("pk_trigger_states")),
    )
    op.create_index(
        op.f("ix_trigger_states_next_evaluation_at"), "trigger_states", ["next_evaluation_at"]
    )

    op.create_table(
        "trigger_firings",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("trigger_id", sa.UUID(), nullable=False),
        _now("fired_at"),
        sa.Column("status", sa.String(32), server_default="pending", nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column(
            "values", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        _now("next_attempt_at"),
        sa.Column("announced", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "result", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.CheckConstraint(
            f"status IN ({_listed(FIRING_STATES)})", name=op.f("ck_trigger_firings_firingstatus")
        ),
        sa.ForeignKeyConstraint(
            ["trigger_id"],
            ["triggers.id"],
            name=op.f("fk_trigger_firings_trigger_id_triggers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trigger_firings")),
    )
    op.create_index(
        op.f("ix_trigger_firings_trigger_id_fired_at"),
        "trigger_firings",
        ["trigger_id", "fired_at"],
    )
    # The outbox's work list: only undelivered firings are in this index.
    op.create_index(
        op.f("ix_trigger_firings_next_attempt_at"),
        "trigger_firings",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending' OR NOT announced"),
    )


def downgrade() -> None:
    op.drop_table("trigger_firings")
    op.drop_table("trigger_states")
    op.drop_column("triggers", "updated_at")
    op.drop_column("triggers", "secret")
    op.drop_constraint(op.f("ck_triggers_cooldown_seconds_not_negative"), "triggers", "check")
    op.drop_column("triggers", "cooldown_seconds")
    op.drop_constraint(op.f("ck_triggers_severity"), "triggers", "check")
    op.drop_column("triggers", "severity")
    op.drop_index(op.f("ix_metrics_endpoint_id_key_id"), table_name="metrics")
