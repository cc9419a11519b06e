"""The KafkaBridge service's ASGI app."""

from __future__ import annotations

from fastapi import FastAPI

from cormorant.common.telemetry import new_registry
from cormorant.common.web import create_service_app
from cormorant.kafka_bridge.settings import KafkaBridgeSettings


def create_app(settings: KafkaBridgeSettings) -> FastAPI:
    """Build the KafkaBridge app: for now its health probe and metrics scrape only."""
    app = create_service_app(title="cormorant-kafka-bridge", registry=new_registry())
    app.state.settings = settings
    return app
