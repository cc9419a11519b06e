"""The PredictLog service's ASGI app."""

from __future__ import annotations

from fastapi import FastAPI

from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.predictlog.settings import PredictLogSettings


def create_app(settings: PredictLogSettings) -> FastAPI:
    """Build the PredictLog app: for now its health probe and metrics scrape only."""
    app = create_service_app(title="cormorant-predictlog", registry=new_registry())
    app.state.settings = settings
    return app
