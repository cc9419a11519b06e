"""The web console at ``/console``: pages and assets that call the public ``/api/v1``."""

from __future__ import annotations

import secrets

from fastapi import FastAPI

from cormorant.gateway.console.pages import router
from cormorant.gateway.console.session import Console, ConsoleSessions
from cormorant.gateway.settings import GatewaySettings


def mount(app: FastAPI, settings: GatewaySettings) -> None:
    """Serve the console on ``app`` and let its session cookie pass the admin check."""
    secret = settings.console_secret
    key = secret.get_secret_value().encode() if secret else secrets.token_bytes(32)
    sessions = ConsoleSessions(key, ttl_s=settings.console_session_s)
    app.state.console = Console(sessions, grafana_url=settings.grafana_url)
    app.include_router(router)
