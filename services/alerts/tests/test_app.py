"""The Alerts service answers its probes in the platform's shapes."""

from __future__ import annotations

import httpx


async def test_health_metrics_and_error_shape(client: httpx.AsyncClient) -> None:
    """/healthz is 200, /metrics is Prometheus text, an unknown path is a JSON 404."""
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "cormorant_alerts_evaluations_total" in metrics.text
    missing = await client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
