"""Who is calling: endpoint tokens and admin keys, checked against their SHA-256 hashes.

The database stores only hashes (``cormorant.common.auth.hash_token``). The gateway keeps
hash → principal in memory, loaded in full at start and every ``auth_refresh_s``, edited by
``EndpointChanged`` events (a rotation or a deletion drops the endpoint's entries), and
asks the database on a miss, so a token created a moment ago works at once. A miss is
remembered for ``auth_negative_ttl_s``, so a stream of bad tokens does not become a stream of
queries; concurrent misses for one token share one query.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cormorant.common.auth import hash_token
from cormorant.common.db.models import AdminKey, Endpoint, EndpointToken
from cormorant.common.errors import Forbidden, ServiceUnavailable, Unauthorized
from cormorant.common.events import EndpointChanged
from cormorant.common.retry import Backoff

log = logging.getLogger(__name__)

# Far longer than any token we issue; longer ones are refused without hashing or querying.
MAX_TOKEN_LENGTH = 512
# Past this many remembered misses the memory is cleared rather than grown.
MAX_NEGATIVE_ENTRIES = 10_000

PREDICT_HINT = "send Authorization: Bearer <endpoint token>"
ADMIN_HINT = "send Authorization: Bearer <admin key>"


@dataclass(frozen=True, slots=True)
class Principal:
    """What a valid credential is: an endpoint's token or an admin key."""

    kind: Literal["endpoint", "admin"]
    key_hash: str
    endpoint: str | None = None
    """Slug of the endpoint an endpoint token belongs to."""


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


class Credentials:
    """The in-memory credential cache in front of the database."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession] | None = None,
        *,
        negative_ttl_s: float = 1.0,
    ) -> None:
        self.sessions = sessions
        """Database sessions; set once the app's lifespan opened the engine."""
        self._negative_ttl_s = negative_ttl_s
        self._known: dict[str, Principal] = {}
        self._unknown: dict[str, float] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}
        # Bumped by every invalidation: a query that started before one must not refill the
        # cache with what the invalidation removed.
        self._epoch = 0

    async def identify(self, token: str) -> Principal | None:
        """The principal ``token`` stands for, or None if it is unknown or revoked."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        return await self.identify_hash(hash_token(token))

    async def identify_hash(self, token_hash: str) -> Principal | None:
        """The principal of the token hashing to ``token_hash`` (a console session's key)."""
        # The lookup is keyed by the SHA-256 of the token, which a caller cannot steer towards
        # a stored hash without knowing a valid token, so its timing reveals nothing useful;
        # the final equality is still checked in constant time.
        principal = self._known.get(token_hash)
        if principal is not None:
            return principal if hmac.compare_digest(principal.key_hash, token_hash) else None
        expiry = self._unknown.get(token_hash)
        if expiry is not None and expiry > time.monotonic():
            return None
        return await self._lookup(token_hash)

    async def check_predict(self, authorization: str | None, slug: str) -> None:
        """Allow an endpoint token of ``slug``; raise 401 or 403 with what to send instead."""
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized(f"missing endpoint token: {PREDICT_HINT} of endpoint {slug!r}")
        principal = await self.identify(token)
        if principal is None:
            raise Unauthorized(
                f"the token is unknown, revoked or rotated: {PREDICT_HINT} with the current "
                f"token of endpoint {slug!r}"
            )
        if principal.kind == "admin":
            raise Forbidden(
                f"an admin key cannot call predict: {PREDICT_HINT} of endpoint {slug!r}"
            )
        if principal.endpoint != slug:
            raise Forbidden(
                f"this token belongs to another endpoint: {PREDICT_HINT} of endpoint {slug!r}"
            )

    async def check_admin(self, authorization: str | None) -> Principal:
        """Allow an admin key; raise 401 or 403 with what to send instead."""
        token = bearer_token(authorization)
        if token is None:
            raise Unauthorized(
                f"missing admin key: {ADMIN_HINT} (create one with `cormorant keys create`; "
                "`make up` prints the first)"
            )
        principal = await self.identify(token)
        if principal is None:
            raise Unauthorized(f"the admin key is unknown or revoked: {ADMIN_HINT}")
        if principal.kind != "admin":
            raise Forbidden(
                "an endpoint token only calls its endpoint's predict route: "
                f"{ADMIN_HINT} for the management API"
            )
        return principal

    async def load_all(self) -> None:
        """Replace the cache by every valid token and admin key in the database."""
        for _ in range(3):
            epoch = self._epoch
            known = await self._query_all()
            if epoch == self._epoch:
                self._known = known
                self._unknown.clear()
                return
        # Invalidations kept arriving: the misses will fill the cache instead.
        self._known = {}

    async def refresh_forever(self, interval_s: float) -> None:
        """Reload every credential now and every ``interval_s``; retry soon after a failure."""
        backoff = Backoff(initial=0.5, cap=interval_s)
        failures = 0
        while True:
            try:
                await self.load_all()
            except (SQLAlchemyError, OSError, ServiceUnavailable) as exc:
                log.warning("credentials not loaded from the database: %s", exc)
                failures += 1
                await asyncio.sleep(backoff.delay(failures))
                continue
            failures = 0
            await asyncio.sleep(interval_s)

    def remember(self, principal: Principal) -> None:
        """Cache a credential just created here (a new admin key)."""
        self._known[principal.key_hash] = principal
        self._unknown.pop(principal.key_hash, None)

    def forget(self, key_hash: str) -> None:
        """Drop one credential (an admin key just revoked here)."""
        self._epoch += 1
        self._known.pop(key_hash, None)

    def endpoint_changed(self, event: EndpointChanged) -> None:
        """Apply an endpoint event: new tokens may exist, old ones may be gone."""
        self._epoch += 1
        # A token that was unknown a moment ago may be this endpoint's new one.
        self._unknown.clear()
        if event.change == "created":
            return
        if event.change == "deleted" or event.attributes.get("token_rotated"):
            self._known = {h: p for h, p in self._known.items() if p.endpoint != event.endpoint}

    async def _lookup(self, token_hash: str) -> Principal | None:
        pending = self._pending.get(token_hash)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Principal | None] = asyncio.get_running_loop().create_future()
        self._pending[token_hash] = future
        epoch = self._epoch
        try:
            principal = await self._query_one(token_hash)
        except (SQLAlchemyError, OSError) as exc:
            log.warning("credential lookup failed: %s", exc)
            error = ServiceUnavailable(
                "cannot verify credentials now: the database is unreachable; retry shortly"
            )
            future.set_exception(error)
            # Waiters re-raise it; this marks it retrieved for the ones that never come.
            future.exception()
            raise error from exc
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._pending[token_hash]
        future.set_result(principal)
        if epoch == self._epoch:
            if principal is not None:
                self._known[token_hash] = principal
            else:
                if len(self._unknown) >= MAX_NEGATIVE_ENTRIES:
                    self._unknown.clear()
                self._unknown[token_hash] = time.monotonic() + self._negative_ttl_s
        return principal

    def _session(self) -> AsyncSession:
        if self.sessions is None:
            raise ServiceUnavailable("the gateway is starting; retry shortly")
        return self.sessions()

    async def _query_one(self, token_hash: str) -> Principal | None:
        async with self._session() as session:
            slug = await session.scalar(
                select(Endpoint.slug)
                .join(EndpointToken, EndpointToken.endpoint_id == Endpoint.id)
                .where(
                    EndpointToken.token_hash == token_hash,
                    EndpointToken.revoked_at.is_(None),
                    Endpoint.deleted_at.is_(None),
                )
            )
            if slug is not None:
                return Principal("endpoint", token_hash, slug)
            admin = await session.scalar(
                select(AdminKey.key_hash).where(
                    AdminKey.key_hash == token_hash, AdminKey.revoked_at.is_(None)
                )
            )
            return Principal("admin", token_hash) if admin is not None else None

    async def _query_all(self) -> dict[str, Principal]:
        async with self._session() as session:
            tokens = await session.execute(
                select(EndpointToken.token_hash, Endpoint.slug)
                .join(Endpoint, EndpointToken.endpoint_id == Endpoint.id)
                .where(EndpointToken.revoked_at.is_(None), Endpoint.deleted_at.is_(None))
            )
            known = {h: Principal("endpoint", h, slug) for h, slug in tokens}
            admins = await session.scalars(
                select(AdminKey.key_hash).where(AdminKey.revoked_at.is_(None))
            )
            for key_hash in admins:
                known[key_hash] = Principal("admin", key_hash)
        return known
