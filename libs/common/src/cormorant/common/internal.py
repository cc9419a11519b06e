"""The internal credential: a per-stack secret every service-to-service HTTP call carries.

Services behind the gateway (deployer, predictlog, feedback, alerts, batch) accept a call only
with ``Authorization: Bearer <internal secret>``; the gateway checks admin keys and endpoint
tokens, then adds it. ``create_service_app`` installs the check on every app, so a new route or
a new service cannot forget it; ``InternalAuth`` is the one way a client adds it. Replicas never
receive the secret: the deployer's calls to a replica go out without it.
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
