"""Credentials, stored only as SHA-256 hashes (see ``cormorant.common.auth``)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from cormorant.common.db.base import Base, CreatedAt, UUIDPk

PREFIX_LENGTH = 12
"""Longest stored token prefix: enough to tell tokens apart, far too short to use one."""


class EndpointToken(Base):
    """A bearer token that may call one endpoint's predict route."""

    __tablename__ = "endpoint_tokens"
    __table_args__ = (CheckConstraint("token_hash ~ '^[0-9a-f]{64}$'", name="token_hash_sha256"),)

    id: Mapped[UUIDPk]
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("endpoints.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(PREFIX_LENGTH))
    created_at: Mapped[CreatedAt]
    revoked_at: Mapped[datetime | None]


class AdminKey(Base):
    """A key that may call the management API."""

    __tablename__ = "admin_keys"
    __table_args__ = (CheckConstraint("key_hash ~ '^[0-9a-f]{64}$'", name="key_hash_sha256"),)

    id: Mapped[UUIDPk]
    name: Mapped[str]
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(PREFIX_LENGTH))
    created_at: Mapped[CreatedAt]
    revoked_at: Mapped[datetime | None]
