"""The Feedback service answers its probes in the platform's shapes."""

from __future__ import annotations

from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager

from cormorant.common.internal import InternalAuth, generate_internal_secret
from cormorant.feedback.app import create_app
from cormorant.feedback.settings import FeedbackSettings


async def test_health_metrics_and_error_shape(database_url: str, tmp_path: Path) -> None:
    """/healthz is 200, /metrics is Prometheus text, an unknown path is a JSON 404 (with the
    internal credential; 401 without it)."""
    secret = generate_internal_secret()
    settings = FeedbackSettings(
        database_url=database_url, data_dir=tmp_path, publish_events=False, internal_secret=secret
    )
    app = create_app(settings)
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
    # The default storage is a local directory under the data dir.
    assert (tmp_path / "datasets" / "tmp").is_dir()
