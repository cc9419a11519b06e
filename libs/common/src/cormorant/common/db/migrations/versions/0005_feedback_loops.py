"""Feedback loops: each prediction names the transaction that stored it; loops keep a
watermark, their format and columns, and a history of runs.

``predictions.ingest_xid`` (``pg_current_xact_id()`` at insert) is the ingest order a feedback
loop's watermark is keyed on. A loop remembers the snapshot (``pg_snapshot``) its last export
read; the next export takes exactly the rows whose transaction that snapshot did not see. A
row received before the watermark but committed after it is still new to that snapshot, so it
is exported once; a sequence or timestamp assigned at insert could not tell it apart.

Existing rows keep NULL (no table rewrite): a loop's first run exports them.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


class _Xid8(sa.types.UserDefinedType[str]):
    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        return "xid8"


def upgrade() -> None:
    # Added without a default, then given one: existing rows stay NULL instead of the whole
    # partitioned table being rewritten under the migration's lock.
    op.add_column("predictions", sa.Column("ingest_xid", _Xid8(), nullable=True))
    op.alter_column("predictions", "ingest_xid", server_default=sa.text("pg_current_xact_id()"))
    op.create_index(
        op.f("ix_predictions_endpoint_id_ingest_xid"), "predictions", ["endpoint_id", "ingest_xid"]
    )
    # A loop exporting custom metrics looks them up by request.
    op.create_index(
        op.f("ix_metrics_endpoint_id_request_id"), "metrics", ["endpoint_id", "request_id"]
    )

    op.add_column(
        "feedback_loops",
        sa.Column("format", sa.String(32), server_default="csv", nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_feedback_loops_exportformat"), "feedback_loops", "format IN ('csv', 'parquet')"
    )
    op.add_column(
        "feedback_loops",
        sa.Column(
            "include",
            postgresql.JSONB(),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column("feedback_loops", sa.Column("watermark", sa.Text(), nullable=True))
    op.add_column(
        "feedback_loops", sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True)
    )

    op.create_table(
        "feedback_runs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("loop_id", sa.UUID(), nullable=False),
        sa.Column("trigger", sa.String(32), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("rows", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("dataset_version", sa.Integer(), nullable=True),
        sa.Column("duration_s", sa.Double(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "finished_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "trigger IN ('schedule', 'manual')", name=op.f("ck_feedback_runs_runtrigger")
        ),
        sa.CheckConstraint(
            "status IN ('succeeded', 'failed')", name=op.f("ck_feedback_runs_runstatus")
        ),
        sa.ForeignKeyConstraint(
            ["loop_id"],
            ["feedback_loops.id"],
            name=op.f("fk_feedback_runs_loop_id_feedback_loops"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback_runs")),
    )
    op.create_index(
        op.f("ix_feedback_runs_loop_id_started_at"), "feedback_runs", ["loop_id", "started_at"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_feedback_runs_loop_id_started_at"), table_name="feedback_runs")
    op.drop_table("feedback_runs")
    op.drop_column("feedback_loops", "stopped_at")
    op.drop_column("feedback_loops", "watermark")
    op.drop_column("feedback_loops", "include")
    op.drop_constraint(op.f("ck_feedback_loops_exportformat"), "feedback_loops", type_="check")
    op.drop_column("feedback_loops", "format")
    op.drop_index(op.f("ix_metrics_endpoint_id_request_id"), table_name="metrics")
    op.drop_index(op.f("ix_predictions_endpoint_id_ingest_xid"), table_name="predictions")
    op.drop_column("predictions", "ingest_xid")
