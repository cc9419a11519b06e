"""The Gateway service's ASGI app."""

from __future__ import annotations

from fastapi import FastAPI

from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings) -> FastAPI:
    """Build the Gateway app: for now its health probe and metrics scrape only."""
    app = create_service_app(title="cormorant-gateway", registry=new_registry())
    app.state.settings = settings
    return app
