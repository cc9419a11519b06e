"""The Deployer service answers its probes and documents its API in the platform's shapes."""

from __future__ import annotations

from deployer_testkit import DeployerHarness


async def test_health_metrics_and_error_shape(deployer: DeployerHarness) -> None:
    """/healthz is 200 once started, /metrics is Prometheus text, an unknown path is a JSON 404."""
    client = deployer.client
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "cormorant_publisher" in metrics.text
    missing = await client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


async def test_openapi_documents_the_endpoints_api(deployer: DeployerHarness) -> None:
    """The OpenAPI document the gateway merges lists every endpoints route with its schemas."""
    document = (await deployer.client.get("/openapi.json")).json()
    paths = document["paths"]
    assert set(paths["/api/v1/endpoints"]) == {"get", "post"}
    assert set(paths["/api/v1/endpoints/{slug}"]) == {"get", "delete"}
    assert "post" in paths["/api/v1/endpoints/{slug}/rerun"]
    assert "post" in paths["/api/v1/endpoints/{slug}/token"]
    assert "token" in document["components"]["schemas"]["EndpointCreated"]["properties"]
    assert "token" not in document["components"]["schemas"]["EndpointOut"]["properties"]
