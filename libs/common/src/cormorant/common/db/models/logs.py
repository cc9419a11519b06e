"""What endpoints did: every prediction (partitioned by day) and the custom metrics."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import REAL, BigInteger, Index, PrimaryKeyConstraint, SmallInteger, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql.base import ischema_names
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import UserDefinedType

from cormorant.common.db.base import Base


class Xid8(UserDefinedType[str]):
    """PostgreSQL's 64-bit transaction id (``xid8``), read as its decimal text."""

    cache_ok = True

    def get_col_spec(self, **_: object) -> str:
        """The column type in DDL."""
        return "xid8"


# Reflection (Alembic's comparison of models and migrations) then knows the type too.
ischema_names.setdefault("xid8", Xid8)


# No foreign keys to endpoints here: rows arrive by COPY at tens of thousands per second,
# retention drops whole partitions, and logs outlive (soft-)deleted endpoints.


class Prediction(Base):
    """One prediction request and its outcome.

    Range-partitioned by ``received_at``: daily partitions plus a default one, managed by
    ``cormorant.common.db.partitions``. The key includes ``received_at`` because every
    unique index of a partitioned table must contain the partition key, and leads with it
    because rows arrive in time order (new keys land at the index's right edge).
    """

    __tablename__ = "predictions"
    __table_args__ = (
        PrimaryKeyConstraint("received_at", "request_id"),
        Index(None, "endpoint_id", "received_at"),
        Index(None, "endpoint_id", "ingest_xid"),
        {"postgresql_partition_by": "RANGE (received_at)"},
    )

    request_id: Mapped[str] = mapped_column(primary_key=True)
    received_at: Mapped[datetime] = mapped_column(primary_key=True, server_default=func.now())
    endpoint_id: Mapped[uuid.UUID]
    version: Mapped[int | None]
    input: Mapped[Any] = mapped_column(JSONB, nullable=True)
    output: Mapped[Any] = mapped_column(JSONB, nullable=True)
    error: Mapped[str | None]
    status: Mapped[int] = mapped_column(SmallInteger)
    """The HTTP status the client received."""
    latency_ms: Mapped[float] = mapped_column(REAL)
    trace_id: Mapped[str | None]
    ingest_xid: Mapped[str | None] = mapped_column(Xid8(), server_default=func.pg_current_xact_id())
    """The transaction that stored the row: the ingest order feedback loops export by (a
    snapshot tells whether it had committed). NULL for rows stored before revision 0005."""
    shadow: Mapped[bool] = mapped_column(server_default=text("false"))
    """A mirrored request's answer by the shadow version (never returned to the caller); its
    ``request_id`` is the live row's, so the two compare."""


class Metric(Base):
    """A value logged with ``log_metric(key, value)``."""

    __tablename__ = "metrics"
    __table_args__ = (
        Index(None, "endpoint_id", "key", "logged_at"),
        Index(None, "endpoint_id", "request_id"),
        # Triggers read the values logged after the last ones they evaluated, by id.
        Index(None, "endpoint_id", "key", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[uuid.UUID]
    version: Mapped[int | None]
    key: Mapped[str]
    value: Mapped[float]
    request_id: Mapped[str | None]
    logged_at: Mapped[datetime] = mapped_column(server_default=func.now())
    event_id: Mapped[str | None] = mapped_column(unique=True)
    """The ``MetricLogged`` event id: a redelivered event is stored once."""
