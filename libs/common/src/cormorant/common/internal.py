"""The internal credential: a per-stack secret every service-to-service HTTP call carries.

Services behind the gateway (deployer, predictlog, feedback, alerts, batch) accept a call only
with ``Authorization: Bearer <internal secret>``; the gateway checks admin keys and endpoint
tokens, then adds it. ``create_service_app`` installs the check on every app, so a new route or
a new service cannot forget it; ``InternalAuth`` is the one way a client adds it. Replicas never
receive the secret: the deployer's calls to a replica go out without it.

A replica's own port answers only the platform too: each replica has a **replica key**
(``replica_key``), an HMAC of its id under the internal secret. The deployer hands it to that
replica alone (its ``CORMORANT_WORKER_REPLICA_KEY``); the gateway and the batch service, which
hold the secret, compute it for the replica they call and send it as ``Cormorant-Replica-Key``.
Nothing stores or transports it, and a replica cannot work out another's from its own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Generator, Iterable
from typing import Any

import httpx
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from cormorant.common.errors import error_response
from cormorant.common.settings import CommonSettings

INTERNAL_SECRET_PREFIX = "cmi_"
PLATFORM_SECRET_VARIABLES = frozenset({"CORMORANT_INTERNAL_SECRET", "CORMORANT_DATABASE_URL"})
"""Variables a service holds that must never reach a replica's environment (user code)."""
OPEN_PATHS = frozenset({"/healthz", "/metrics"})
"""Paths every service answers without the credential: probes and the Prometheus scrape."""
REPLICA_KEY_PREFIX = "cmr_"
REPLICA_KEY_HEADER = "cormorant-replica-key"
"""The header a replica's callers carry its key in."""
REPLICA_KEY_VARIABLE = "CORMORANT_WORKER_REPLICA_KEY"
"""The replica's own key, in its environment (the worker's ``replica_key`` setting)."""


def replica_key(secret: SecretStr | str, replica_id: str) -> str:
    """The key of replica ``replica_id``: an HMAC-SHA-256 of its id under the internal secret."""
    digest = hmac.new(
        _secret_value(secret).encode(), b"cormorant-replica-key\n" + replica_id.encode(), "sha256"
    )
    return REPLICA_KEY_PREFIX + digest.hexdigest()


class ReplicaKeys:
    """Replica keys of the replicas a service calls, computed once each (an HMAC is ~1 µs)."""

    def __init__(self, secret: SecretStr | str | None, *, limit: int = 10_000) -> None:
        self._secret = _secret_value(secret) if secret else None
        self._keys: dict[str, str] = {}
        self._limit = limit

    def __call__(self, replica_id: str) -> str | None:
        """The key of ``replica_id``; None without a secret (replicas then take no key)."""
        if self._secret is None:
            return None
        key = self._keys.get(replica_id)
        if key is None:
            if len(self._keys) >= self._limit:
                self._keys.clear()  # replicas come and go; keep the cache bounded
            key = self._keys[replica_id] = replica_key(self._secret, replica_id)
        return key


def generate_internal_secret() -> str:
    """A new internal secret (256 bits of entropy), named for what it is."""
    return INTERNAL_SECRET_PREFIX + secrets.token_urlsafe(32)


def _secret_value(secret: SecretStr | str) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


class InternalAuth(httpx.Auth):
    """httpx auth adding the internal credential to every request of a client (or one call)."""

    def __init__(self, secret: SecretStr | str | None) -> None:
        self._header = f"Bearer {_secret_value(secret)}" if secret else None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Set ``Authorization``, replacing whatever a caller had put there."""
        if self._header is not None:
            request.headers["Authorization"] = self._header
        yield request


def internal_client(settings: CommonSettings, **options: Any) -> httpx.AsyncClient:
    """A client for calls to other Cormorant services: the credential on every request, and
    no proxy from the environment (these are in-cluster hops). Never use it to call a replica."""
    auth = InternalAuth(settings.internal_secret)
    return httpx.AsyncClient(auth=auth, trust_env=False, **options)


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ReplicaKeyCheck:
    """A replica's check of the key its callers present (constant time: digests of equal
    length, so not even the length leaks)."""

    def __init__(self, key: SecretStr | str) -> None:
        self._expected = _digest(_secret_value(key).encode())

    def allowed(self, presented: bytes | None) -> bool:
        """Whether ``presented`` (the header's value) is this replica's key."""
        return presented is not None and hmac.compare_digest(_digest(presented), self._expected)


class RequireInternal:
    """ASGI middleware: every HTTP call but ``open_paths`` needs the internal credential (401).

    Compared in constant time (digests of equal length, so not even the length leaks). With
    no secret configured every such call is refused: a service never falls open.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        secret: SecretStr | str | None,
        service: str,
        open_paths: Iterable[str] = OPEN_PATHS,
    ) -> None:
        self.app = app
        self.service = service
        self.open_paths = frozenset(open_paths)
        self._expected = _digest(f"Bearer {_secret_value(secret)}".encode()) if secret else None

    def allowed(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` value carries this service's internal credential."""
        if self._expected is None or authorization is None:
            return False
        return hmac.compare_digest(_digest(authorization), self._expected)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass open paths and non-HTTP scopes (lifespan) through; check everything else."""
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
                break
        if self.allowed(authorization):
            await self.app(scope, receive, send)
            return
        if self._expected is None:
            message = (
                f"{self.service} has no internal credential configured, so it refuses every "
                "call but /healthz and /metrics: set CORMORANT_INTERNAL_SECRET to the stack's "
                "secret (the same on every service)"
            )
        else:
            message = (
                f"{self.service} is an internal service: it answers only Cormorant's own "
                "services, which carry the stack's internal credential. Call the gateway's "
                "/api/v1 with an admin key instead"
            )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
            return
        response = error_response(401, "internal_credential_required", message)
        response.headers["WWW-Authenticate"] = 'Bearer realm="cormorant-internal"'
        await response(scope, receive, send)
