"""An endpoint may be ``degraded``: it serves, but its workers keep dying (a crash loop).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = ("deploying", "running", "idle", "failed", "stopped")
_AFTER = (*_BEFORE, "degraded")


def _check(values: Sequence[str]) -> None:
    listed = ", ".join(f"'{value}'" for value in values)
    op.drop_constraint(op.f("ck_endpoints_endpointstatus"), "endpoints", type_="check")
    op.create_check_constraint(
        op.f("ck_endpoints_endpointstatus"), "endpoints", f"status IN ({listed})"
    )


def upgrade() -> None:
    _check(_AFTER)


def downgrade() -> None:
    op.execute("UPDATE endpoints SET status = 'running' WHERE status = 'degraded'")
    _check(_BEFORE)
