"""The management side: admin keys, forwarding to the owning services, the merged OpenAPI.

The services behind the gateway are small real HTTP apps standing in for them (see
gateway_testkit.py); readiness is checked against a deployer that is not there yet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from gateway_testkit import (
    INTERNAL_SECRET,
    Gateway,
    Secrets,
    StandIn,
    Worker,
    demo_route,
    eventually,
    free_port,
    serve,
)

from cormorant.gateway.app import create_app
from cormorant.gateway.forward import owner
from cormorant.gateway.settings import GatewaySettings

SERVICE_OPENAPI = {
    "openapi": "3.1.0",
    "info": {"title": "deployer", "version": "0.1.0"},
    "paths": {
        "/api/v1/endpoints": {
            "get": {
                "responses": {
                    "200": {
                        "description": "ok",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/KeyList"}}
                        },
                    }
                }
            }
        },
        "/healthz": {"get": {"responses": {"200": {"description": "ok"}}}},
    },
    "components": {
        "schemas": {
            "KeyList": {"type": "object", "title": "not the gateway's KeyList"},
            "Endpoint": {"type": "object"},
        }
    },
}


@pytest.fixture
async def services() -> AsyncIterator[dict[str, tuple[StandIn, str]]]:
    """Stand-ins for predictlog and feedback with their URLs (alerts stays down)."""
    predictlog, feedback = StandIn("predictlog"), StandIn("feedback")
    async with serve(predictlog.app()) as (p_url, _), serve(feedback.app()) as (f_url, _):
        yield {"predictlog": (predictlog, p_url), "feedback": (feedback, f_url)}


@pytest.fixture
async def gateway(
    workers: dict[str, Worker], start_gateway: Any, services: dict[str, tuple[StandIn, str]]
) -> AsyncIterator[Gateway]:
    """A gateway whose management API reaches the stand-ins; alerts and batch are down."""
    async with start_gateway(
        [demo_route(workers)],
        predictlog_url=services["predictlog"][1],
        feedback_url=services["feedback"][1],
        alerts_url=f"http://127.0.0.1:{free_port()}",
        batch_url=f"http://127.0.0.1:{free_port()}",
        openapi_cache_s=0,
    ) as gw:
        gw.deployer.openapi = SERVICE_OPENAPI
        yield gw


def test_paths_go_to_their_owners() -> None:
    """Each /api/v1 path is owned by one service."""
    assert owner("/api/v1/endpoints") == "deployer"
    assert owner("/api/v1/endpoints/demo/rollout") == "deployer"
    assert owner("/api/v1/endpoints/demo/manifests") == "deployer"
    assert owner("/api/v1/manifests") == "deployer"
    assert owner("/api/v1/endpoints/demo/logs") == "predictlog"
    assert owner("/api/v1/endpoints/demo/logs.csv") == "predictlog"
    assert owner("/api/v1/endpoints/demo/feedback-loops") == "feedback"
    assert owner("/api/v1/endpoints/demo/feedback-loops/0e4f/run") == "feedback"
    assert owner("/api/v1/endpoints/demo/charts/latency") == "predictlog"
    assert owner("/api/v1/endpoints/demo/metrics") == "predictlog"
    assert owner("/api/v1/endpoints/demo/batch-jobs") == "batch"
    assert owner("/api/v1/endpoints/demo/batch-jobs/compare") == "batch"
    assert owner("/api/v1/flows/retrain/runs") == "alerts"
    assert owner("/api/v1/datasets/d1/versions") == "feedback"
    assert owner("/api/v1/feedback-loops") == "feedback"
    assert owner("/api/v1/triggers/t1") == "alerts"
    assert owner("/api/v1/endpoints/demo/triggers") == "alerts"
    assert owner("/api/v1/unknown") is None


async def test_admin_keys_create_list_revoke(gateway: Gateway) -> None:
    """A key is shown once, listed by prefix, works at once and stops at once when revoked."""
    created = await gateway.http.post("/api/v1/keys", json={"name": "ci"}, headers=gateway.admin())
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("cmk_")
    new_admin = {"Authorization": f"Bearer {key}"}
    listed = await gateway.http.get("/api/v1/keys", headers=new_admin)
    assert listed.status_code == 200
    keys = listed.json()["keys"]
    assert [k["name"] for k in keys] == ["test", "ci"]
    assert keys[1]["prefix"] == key[:12]
    assert all("key" not in k for k in keys)
    empty_name = await gateway.http.post("/api/v1/keys", json={"name": ""}, headers=new_admin)
    assert empty_name.status_code == 400
    nul = await gateway.http.post("/api/v1/keys", json={"name": "ci\u0000"}, headers=new_admin)
    assert nul.status_code == 400
    assert "name: Value error, must not contain control characters" in nul.text
    revoked = await gateway.http.delete(f"/api/v1/keys/{keys[1]['id']}", headers=gateway.admin())
    assert revoked.status_code == 204
    assert (await gateway.http.get("/api/v1/keys", headers=new_admin)).status_code == 401
    last = await gateway.http.delete(f"/api/v1/keys/{keys[0]['id']}", headers=gateway.admin())
    assert last.status_code == 409
    assert "last active admin key" in last.json()["error"]["message"]
    missing = await gateway.http.delete(
        "/api/v1/keys/00000000-0000-0000-0000-000000000000", headers=gateway.admin()
    )
    assert missing.status_code == 404


async def test_management_calls_are_forwarded(gateway: Gateway) -> None:
    """Method, path, query and body reach the owner; the admin key does not, the internal
    credential does (the stand-ins refuse a call without it)."""
    created = await gateway.http.post(
        "/api/v1/endpoints?dry=1",
        json={"name": "x"},
        headers={**gateway.admin(), "X-Custom": "yes"},
    )
    assert created.status_code == 201
    seen = created.json()
    assert seen["service"] == "deployer"
    assert (seen["method"], seen["path"], seen["query"]) == ("POST", "/api/v1/endpoints", "dry=1")
    assert seen["body"] == '{"name":"x"}'
    assert seen["headers"]["x-custom"] == "yes"
    assert seen["headers"]["authorization"] == f"Bearer {INTERNAL_SECRET}"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    logs = await gateway.http.get("/api/v1/endpoints/demo/logs?limit=5", headers=gateway.admin())
    assert logs.json()["service"] == "predictlog"
    datasets = await gateway.http.delete("/api/v1/datasets/d1", headers=gateway.admin())
    assert datasets.json()["service"] == "feedback"
    assert datasets.json()["method"] == "DELETE"
    nowhere = await gateway.http.get("/api/v1/unknown", headers=gateway.admin())
    assert nowhere.status_code == 404


async def test_a_large_export_streams_back(gateway: Gateway) -> None:
    """The CSV export arrives whole, streamed through."""
    async with gateway.http.stream(
        "GET", "/api/v1/endpoints/demo/logs.csv", headers=gateway.admin()
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        lines = [line async for line in response.aiter_lines()]
    assert lines[0] == "id,value"
    assert lines[-1] == "19999,39998"


async def test_a_service_that_is_down_is_a_502(gateway: Gateway) -> None:
    """The alerts service is not running: 502 naming it."""
    response = await gateway.http.get("/api/v1/triggers", headers=gateway.admin())
    assert response.status_code == 502
    assert "the alerts service is unreachable" in response.json()["error"]["message"]


async def test_openapi_merges_the_services(gateway: Gateway) -> None:
    """One document: the gateway's routes and each service's /api/v1 paths, clashes renamed."""
    document = (await gateway.http.get("/openapi.json")).json()
    paths = document["paths"]
    assert "post" in paths["/api/v1/endpoints/{slug}/predict"]
    assert "post" in paths["/api/v1/keys"]
    assert "/v2/models/{slug}/infer" in paths
    assert "get" in paths["/api/v1/endpoints"]
    assert "/healthz" not in paths
    schemas = document["components"]["schemas"]
    assert "Endpoint" in schemas
    assert schemas["deployer_KeyList"]["title"] == "not the gateway's KeyList"
    ref = paths["/api/v1/endpoints"]["get"]["responses"]["200"]["content"]["application/json"]
    assert ref["schema"]["$ref"] == "#/components/schemas/deployer_KeyList"
    assert "KeyList" in schemas
    assert schemas["KeyList"] != schemas["deployer_KeyList"]
    assert set(document["x-cormorant-missing"]) == {"alerts", "batch", "predictlog", "feedback"}
    assert document["components"]["securitySchemes"]["adminKey"]["scheme"] == "bearer"
    # What the gateway answers itself on a forwarded call is documented on every one.
    assert {"401", "403", "502", "504"} <= set(paths["/api/v1/endpoints"]["get"]["responses"])
    keys = paths["/api/v1/keys"]["post"]["responses"]
    assert {"400", "401", "403", "503"} <= set(keys)
    assert "422" not in keys
    assert "422" in paths["/api/v1/endpoints/{slug}/predict"]["post"]["responses"]
    assert (await gateway.http.get("/docs")).status_code == 404


async def test_not_ready_until_the_routing_table_loads(credentials: Secrets, nats_url: str) -> None:
    """/healthz and /v2/health/ready say 503 until the deployer answered once."""
    port = free_port()
    settings = GatewaySettings(
        database_url=credentials.database_url,
        nats_url=nats_url,
        deployer_url=f"http://127.0.0.1:{port}",
        internal_secret=INTERNAL_SECRET,
        log_json=False,
        grpc_port=0,
    )
    app = create_app(settings)
    async with serve(app) as (url, _), httpx.AsyncClient(base_url=url) as http:
        health = await http.get("/healthz")
        assert health.status_code == 503
        assert (await http.get("/v2/health/ready")).status_code == 503
        assert (await http.get("/metrics")).headers["content-type"].startswith("text/plain")
        missing = await http.get("/nope")
        assert missing.json()["error"]["code"] == "not_found"
        # The deployer comes up on the port the gateway was told about.
        async with serve(StandIn("deployer").app(), port):

            async def healthy() -> bool:
                return (await http.get("/healthz")).status_code == 200

            await eventually(healthy, what="ready")
            assert (await http.get("/v2/health/ready")).json() == {"ready": True}
