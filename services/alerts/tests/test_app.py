"""The Alerts service answers its probes in the platform's shapes."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager

from cormorant.alerts.app import create_app
from cormorant.alerts.settings import AlertsSettings
from cormorant.common.internal import InternalAuth, generate_internal_secret


async def test_health_metrics_and_error_shape() -> None:
    """/healthz is 200, /metrics is Prometheus text, an unknown path is a JSON 404 (with the
    internal credential; 401 without it)."""
    secret = generate_internal_secret()
    app = create_app(AlertsSettings(internal_secret=secret))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            metrics = await client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            assert (await client.get("/nope")).status_code == 401
            missing = await client.get("/nope", auth=InternalAuth(secret))
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "not_found"
