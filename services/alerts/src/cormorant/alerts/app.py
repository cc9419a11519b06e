"""The Alerts service's ASGI app."""

from __future__ import annotations

from fastapi import FastAPI

from cormorant.alerts.settings import AlertsSettings
from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app


def create_app(settings: AlertsSettings) -> FastAPI:
    """Build the Alerts app: for now its health probe and metrics scrape only."""
    app = create_service_app(title="cormorant-alerts", settings=settings, registry=new_registry())
    app.state.settings = settings
    return app
