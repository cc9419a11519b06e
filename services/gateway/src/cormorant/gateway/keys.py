"""Admin keys: ``/api/v1/keys`` creates, lists and revokes the keys of the management API.

A key is shown once, when created; the database keeps its SHA-256 and a short prefix that
tells keys apart in a listing.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.auth import ADMIN_KEY_PREFIX, generate_token, hash_token
from cormorant.common.db.models import PREFIX_LENGTH, AdminKey
from cormorant.common.errors import Conflict, NotFound, ServiceUnavailable
from cormorant.common.openapi import error_responses
from cormorant.gateway.auth import Credentials, Principal
from cormorant.gateway.console.session import cookie_principal


class KeyCreate(BaseModel):
    """A new admin key's request."""

    name: str = Field(min_length=1, max_length=100, description="What the key is for.")

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        # PostgreSQL text cannot hold NUL, and a listing should not hold terminal escapes.
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must not contain control characters (NUL, newlines, escapes)")
        return value


class KeyCreated(BaseModel):
    """A new admin key: ``key`` is shown this once and never again."""

    id: uuid.UUID
    name: str
    key: str


class KeyInfo(BaseModel):
    """An admin key as listed: never the key itself."""

    id: uuid.UUID
    name: str
    prefix: str
    created_at: datetime


class KeyList(BaseModel):
    """The active admin keys, oldest first."""

    keys: list[KeyInfo]


def _credentials(request: Request) -> Credentials:
    credentials: Credentials = request.app.state.credentials
    return credentials


async def require_admin(request: Request) -> Principal:
    """Dependency: the caller's admin key (or console session), or 401/403 saying what to send."""
    authorization = request.headers.get("authorization")
    if authorization is None:
        session = await cookie_principal(request, _credentials(request))
        if session is not None:
            return session
    return await _credentials(request).check_admin(authorization)


Admin = Annotated[Principal, Depends(require_admin)]

# Every key route: the admin key (401/403), and the database the gateway reaches at start (503).
router = APIRouter(
    prefix="/api/v1/keys", tags=["admin keys"], responses=error_responses(401, 403, 503)
)


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions = _credentials(request).sessions
    if sessions is None:
        raise ServiceUnavailable("the gateway is starting; retry shortly")
    return sessions


@router.post("", status_code=201)
async def create_key(body: KeyCreate, request: Request, _: Admin) -> KeyCreated:
    """Create an admin key; the answer holds the key, shown this once."""
    key = generate_token(ADMIN_KEY_PREFIX)
    row = AdminKey(name=body.name, key_hash=hash_token(key), prefix=key[:PREFIX_LENGTH])
    async with _sessions(request)() as session, session.begin():
        session.add(row)
    _credentials(request).remember(Principal("admin", row.key_hash))
    return KeyCreated(id=row.id, name=row.name, key=key)


@router.get("")
async def list_keys(request: Request, _: Admin) -> KeyList:
    """The active admin keys (id, name, prefix, creation time)."""
    async with _sessions(request)() as session:
        rows = await session.scalars(
            select(AdminKey).where(AdminKey.revoked_at.is_(None)).order_by(AdminKey.created_at)
        )
        return KeyList(
            keys=[
                KeyInfo(id=r.id, name=r.name, prefix=r.prefix, created_at=r.created_at)
                for r in rows
            ]
        )


@router.delete(
    "/{key_id}",
    status_code=204,
    responses=error_responses(409, s409="The last active admin key cannot be revoked."),
)
async def revoke_key(key_id: uuid.UUID, request: Request, _: Admin) -> Response:
    """Revoke an admin key; it stops working at once on this gateway."""
    async with _sessions(request)() as session, session.begin():
        row = await session.get(AdminKey, key_id, with_for_update=True)
        if row is None:
            raise NotFound(f"no admin key {key_id}; list them with GET /api/v1/keys")
        if row.revoked_at is None:
            # Locking every active key serialises concurrent revocations of the last two.
            active = await session.scalars(
                select(AdminKey.id).where(AdminKey.revoked_at.is_(None)).with_for_update()
            )
            if list(active) == [key_id]:
                raise Conflict(
                    "this is the last active admin key: create another one first, "
                    "or nobody could manage the platform"
                )
            row.revoked_at = datetime.now(UTC)
        key_hash = row.key_hash
    _credentials(request).forget(key_hash)
    return Response(status_code=204)
