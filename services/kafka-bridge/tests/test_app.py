"""A replica answers its probes in the platform's shapes."""

from __future__ import annotations

import httpx
from asgi_lifespan import LifespanManager

from cormorant.kafka_bridge.app import create_app
from cormorant.kafka_bridge.replica import Phase, Replica
from cormorant.kafka_bridge.settings import KafkaBridgeSettings


async def test_health_metrics_and_error_shape() -> None:
    """/healthz is 200, /metrics is Prometheus text; a replica holds no internal credential,
    so any other path is refused (401) whatever the caller sends."""
    app = create_app(KafkaBridgeSettings())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc") as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            metrics = await client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            missing = await client.get("/nope", headers={"Authorization": "Bearer anything"})
            assert missing.status_code == 401
            assert "no internal credential configured" in missing.json()["error"]["message"]


async def test_healthz_reports_what_the_replica_is_doing() -> None:
    """503 with the phase until the replica streams, 200 while it does, 503 once stopping."""
    replica = Replica(KafkaBridgeSettings(endpoint="orders", version="2"))
    transport = httpx.ASGITransport(app=replica.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        loading = await client.get("/healthz")
        assert loading.status_code == 503
        assert loading.json()["error"] == {
            "code": "not_ready",
            "message": "orders/2: importing the model",
        }
        replica.phase = Phase.STREAMING
        assert (await client.get("/healthz")).status_code == 200
        replica.request_stop()
        stopping = await client.get("/healthz")
        assert stopping.json()["error"]["message"] == "orders/2: stopping"
