"""The Feedback service's ASGI app."""

from __future__ import annotations

from fastapi import FastAPI

from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.feedback.settings import FeedbackSettings


def create_app(settings: FeedbackSettings) -> FastAPI:
    """Build the Feedback app: for now its health probe and metrics scrape only."""
    app = create_service_app(title="cormorant-feedback", registry=new_registry())
    app.state.settings = settings
    return app
