"""Initial schema: every Cormorant table, with ``predictions`` partitioned by day.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Written out rather than imported from the models: a migration must keep describing the
# schema of its day when the models move on.

JOB_STATES = ("pending", "running", "succeeded", "failed", "cancelled")


def _id() -> sa.Column[Any]:
    return sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False)


def _now(name: str) -> sa.Column[Any]:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def _when(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def _text(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.Text(), nullable=nullable)


def _int(name: str, default: int | None = None, *, nullable: bool = False) -> sa.Column[Any]:
    server_default = None if default is None else sa.text(str(default))
    return sa.Column(name, sa.Integer(), server_default=server_default, nullable=nullable)


def _flag(name: str, default: bool) -> sa.Column[Any]:
    return sa.Column(
        name, sa.Boolean(), server_default=sa.text(str(default).lower()), nullable=False
    )


def _json(name: str, default: str | None = None, *, nullable: bool = False) -> sa.Column[Any]:
    server_default = None if default is None else sa.text(f"'{default}'::jsonb")
    return sa.Column(name, postgresql.JSONB(), server_default=server_default, nullable=nullable)


def _choice(
    table: str, column: str, check: str, values: Sequence[str], default: str | None = None
) -> tuple[sa.Column[Any], sa.CheckConstraint]:
    """A VARCHAR(32) column limited to ``values`` by a CHECK named like the models name it."""
    listed = ", ".join(f"'{value}'" for value in values)
    return (
        sa.Column(column, sa.String(32), server_default=default, nullable=False),
        sa.CheckConstraint(f"{column} IN ({listed})", name=op.f(f"ck_{table}_{check}")),
    )


def _sha256(table: str, column: str) -> tuple[sa.Column[Any], sa.CheckConstraint]:
    return (
        sa.Column(column, sa.String(64), nullable=False),
        sa.CheckConstraint(
            f"{column} ~ '^[0-9a-f]{{64}}$'", name=op.f(f"ck_{table}_{column}_sha256")
        ),
    )


def _fk(table: str, column: str, target: str, ondelete: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=op.f(f"fk_{table}_{column}_{target}"), ondelete=ondelete
    )


def _pk(table: str, *columns: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*(columns or ("id",)), name=op.f(f"pk_{table}"))


def _index(table: str, *columns: str, where: str | None = None) -> None:
    op.create_index(
        op.f(f"ix_{table}_{'_'.join(columns)}"),
        table,
        list(columns),
        postgresql_where=None if where is None else sa.text(where),
    )


def upgrade() -> None:
    _create_control_plane()
    _create_logs()
    _create_datasets_and_jobs()
    _create_automation()


def _create_control_plane() -> None:
    op.create_table(
        "endpoints",
        _id(),
        sa.Column("slug", sa.String(63), nullable=False),
        _text("name"),
        *_choice("endpoints", "kind", "endpointkind", ("web", "batch", "stream")),
        *_choice(
            "endpoints",
            "status",
            "endpointstatus",
            ("deploying", "running", "idle", "failed", "stopped"),
            default="deploying",
        ),
        _text("reason", nullable=True),
        _json("spec", "{}"),
        _int("desired_replicas", 0),
        _now("created_at"),
        _now("updated_at"),
        _when("deleted_at"),
        _pk("endpoints"),
        sa.UniqueConstraint("slug", name=op.f("uq_endpoints_slug")),
    )
    _index("endpoints", "created_at", where="deleted_at IS NULL")

    op.create_table(
        "model_versions",
        _id(),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        _int("number"),
        _text("source"),
        _text("commit", nullable=True),
        *_sha256("model_versions", "source_digest"),
        _text("file"),
        _text("function"),
        _text("preprocess_file", nullable=True),
        _text("preprocess_function", nullable=True),
        _flag("accepts_file", False),
        _json("env", "{}"),
        _json("server", "{}"),
        *_choice(
            "model_versions",
            "status",
            "versionstatus",
            ("pending", "ready", "failed", "retired"),
            default="pending",
        ),
        _text("reason", nullable=True),
        _now("created_at"),
        sa.CheckConstraint("number >= 1", name=op.f("ck_model_versions_number_positive")),
        _fk("model_versions", "endpoint_id", "endpoints", "CASCADE"),
        _pk("model_versions"),
        sa.UniqueConstraint(
            "endpoint_id", "number", name=op.f("uq_model_versions_endpoint_id_number")
        ),
    )
    _index("model_versions", "source_digest")

    op.create_table(
        "traffic",
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        sa.Column("generation", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        _json("weights", "{}"),
        _json("policy", nullable=True),
        _now("updated_at"),
        _fk("traffic", "endpoint_id", "endpoints", "CASCADE"),
        _pk("traffic", "endpoint_id"),
    )

    op.create_table(
        "traffic_history",
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        _json("weights"),
        _text("action"),
        _text("reason", nullable=True),
        _now("created_at"),
        _fk("traffic_history", "endpoint_id", "endpoints", "CASCADE"),
        _pk("traffic_history", "endpoint_id", "generation"),
    )

    op.create_table(
        "rollouts",
        _id(),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.UUID(), nullable=False),
        _json("policy"),
        _int("step", 0),
        *_choice(
            "rollouts",
            "status",
            "rolloutstatus",
            ("running", "succeeded", "failed", "rolled_back", "cancelled"),
            default="running",
        ),
        _json("checks", "[]"),
        _text("reason", nullable=True),
        _now("started_at"),
        _when("finished_at"),
        _fk("rollouts", "endpoint_id", "endpoints", "CASCADE"),
        _fk("rollouts", "version_id", "model_versions", "CASCADE"),
        _pk("rollouts"),
    )
    _index("rollouts", "endpoint_id")
    op.create_index(
        "uq_rollouts_endpoint_id_running",
        "rollouts",
        ["endpoint_id"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
    )

    op.create_table(
        "replicas",
        _id(),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.UUID(), nullable=False),
        _text("url", nullable=True),
        _text("host", nullable=True),
        _int("pid", nullable=True),
        *_choice(
            "replicas",
            "state",
            "replicastate",
            ("starting", "ready", "draining", "stopped", "failed"),
            default="starting",
        ),
        _int("restarts", 0),
        _text("last_error", nullable=True),
        _now("created_at"),
        _now("updated_at"),
        _fk("replicas", "endpoint_id", "endpoints", "CASCADE"),
        _fk("replicas", "version_id", "model_versions", "CASCADE"),
        _pk("replicas"),
    )
    _index("replicas", "endpoint_id", "state")
    _index("replicas", "version_id")

    op.create_table(
        "endpoint_tokens",
        _id(),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        *_sha256("endpoint_tokens", "token_hash"),
        sa.Column("prefix", sa.String(12), nullable=False),
        _now("created_at"),
        _when("revoked_at"),
        _fk("endpoint_tokens", "endpoint_id", "endpoints", "CASCADE"),
        _pk("endpoint_tokens"),
        sa.UniqueConstraint("token_hash", name=op.f("uq_endpoint_tokens_token_hash")),
    )
    _index("endpoint_tokens", "endpoint_id")

    op.create_table(
        "admin_keys",
        _id(),
        _text("name"),
        *_sha256("admin_keys", "key_hash"),
        sa.Column("prefix", sa.String(12), nullable=False),
        _now("created_at"),
        _when("revoked_at"),
        _pk("admin_keys"),
        sa.UniqueConstraint("key_hash", name=op.f("uq_admin_keys_key_hash")),
    )


def _create_logs() -> None:
    op.create_table(
        "predictions",
        _text("request_id"),
        _now("received_at"),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        _int("version", nullable=True),
        _json("input", nullable=True),
        _json("output", nullable=True),
        _text("error", nullable=True),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("latency_ms", sa.REAL(), nullable=False),
        _text("trace_id", nullable=True),
        _pk("predictions", "request_id", "received_at"),
        postgresql_partition_by="RANGE (received_at)",
    )
    _index("predictions", "endpoint_id", "received_at")
    # Daily partitions are created at run time (cormorant.common.db.partitions); this one
    # catches any row no daily partition covers, so an insert never fails for want of one.
    op.execute("CREATE TABLE predictions_default PARTITION OF predictions DEFAULT")

    op.create_table(
        "metrics",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        _int("version", nullable=True),
        _text("key"),
        sa.Column("value", sa.Double(), nullable=False),
        _text("request_id", nullable=True),
        _now("logged_at"),
        _pk("metrics"),
    )
    _index("metrics", "endpoint_id", "key", "logged_at")


def _create_datasets_and_jobs() -> None:
    op.create_table(
        "datasets",
        _id(),
        _text("name"),
        _now("created_at"),
        _pk("datasets"),
        sa.UniqueConstraint("name", name=op.f("uq_datasets_name")),
    )

    op.create_table(
        "dataset_versions",
        sa.Column("dataset_id", sa.UUID(), nullable=False),
        _int("version"),
        _json("files", "[]"),
        _now("created_at"),
        sa.CheckConstraint("version >= 1", name=op.f("ck_dataset_versions_version_positive")),
        _fk("dataset_versions", "dataset_id", "datasets", "CASCADE"),
        _pk("dataset_versions", "dataset_id", "version"),
    )

    op.create_table(
        "batch_jobs",
        _id(),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        *_choice("batch_jobs", "status", "jobstatus", JOB_STATES, default="pending"),
        _text("input_file"),
        _text("output_file"),
        sa.Column("dataset_id", sa.UUID(), nullable=False),
        _int("rows_total", nullable=True),
        _int("rows_done", 0),
        _int("failures", 0),
        _int("replicas", nullable=True),
        _int("output_dataset_version", nullable=True),
        _text("error", nullable=True),
        _now("created_at"),
        _now("updated_at"),
        _when("started_at"),
        _when("finished_at"),
        sa.ForeignKeyConstraint(
            ["dataset_id", "output_dataset_version"],
            ["dataset_versions.dataset_id", "dataset_versions.version"],
            name="fk_batch_jobs_output_dataset_version",
        ),
        _fk("batch_jobs", "dataset_id", "datasets", "RESTRICT"),
        _fk("batch_jobs", "endpoint_id", "endpoints", "CASCADE"),
        _pk("batch_jobs"),
    )
    _index("batch_jobs", "dataset_id")
    _index("batch_jobs", "endpoint_id", "created_at")


def _create_automation() -> None:
    op.create_table(
        "feedback_loops",
        _id(),
        _text("name"),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        sa.Column("dataset_id", sa.UUID(), nullable=False),
        *_choice("feedback_loops", "schedule_kind", "schedulekind", ("now", "every", "at")),
        _text("schedule_expr", nullable=True),
        _json("query", "{}"),
        _flag("enabled", True),
        _when("last_run_at"),
        _when("next_run_at"),
        _now("created_at"),
        _fk("feedback_loops", "dataset_id", "datasets", "CASCADE"),
        _fk("feedback_loops", "endpoint_id", "endpoints", "CASCADE"),
        _pk("feedback_loops"),
    )
    _index("feedback_loops", "dataset_id")
    _index("feedback_loops", "endpoint_id")

    op.create_table(
        "triggers",
        _id(),
        _text("name"),
        sa.Column("endpoint_id", sa.UUID(), nullable=False),
        _text("metric"),
        *_choice("triggers", "op", "comparison", (">", "<")),
        sa.Column("threshold", sa.Double(), nullable=False),
        _int("every_seconds"),
        _int("min_events", 1),
        *_choice("triggers", "action_kind", "actionkind", ("email", "webhook", "flow")),
        _json("action_config", "{}"),
        _flag("enabled", True),
        _when("last_fired_at"),
        _now("created_at"),
        sa.CheckConstraint("every_seconds > 0", name=op.f("ck_triggers_every_seconds_positive")),
        sa.CheckConstraint("min_events >= 1", name=op.f("ck_triggers_min_events_positive")),
        _fk("triggers", "endpoint_id", "endpoints", "CASCADE"),
        _pk("triggers"),
    )
    _index("triggers", "endpoint_id")

    op.create_table(
        "flows",
        _id(),
        _text("name"),
        _json("spec"),
        _text("source", nullable=True),
        _now("created_at"),
        _now("updated_at"),
        _pk("flows"),
        sa.UniqueConstraint("name", name=op.f("uq_flows_name")),
    )

    op.create_table(
        "flow_runs",
        _id(),
        sa.Column("flow_id", sa.UUID(), nullable=False),
        *_choice("flow_runs", "status", "jobstatus", JOB_STATES, default="pending"),
        _json("tasks", "[]"),
        _text("error", nullable=True),
        _now("created_at"),
        _when("started_at"),
        _when("finished_at"),
        _fk("flow_runs", "flow_id", "flows", "CASCADE"),
        _pk("flow_runs"),
    )
    _index("flow_runs", "flow_id", "created_at")


def downgrade() -> None:
    # Children before parents; dropping predictions drops its partitions with it.
    for table in (
        "flow_runs",
        "flows",
        "triggers",
        "feedback_loops",
        "batch_jobs",
        "dataset_versions",
        "datasets",
        "metrics",
        "predictions",
        "admin_keys",
        "endpoint_tokens",
        "replicas",
        "rollouts",
        "traffic_history",
        "traffic",
        "model_versions",
        "endpoints",
    ):
        op.drop_table(table)
