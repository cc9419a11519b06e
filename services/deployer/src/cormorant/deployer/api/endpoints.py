"""HTTP routes of the deployer: the endpoints API (behind the gateway) and the routing table.

Handlers only translate HTTP to ``EndpointService`` calls; errors are ``CormorantError``s
rendered by the platform's one handler.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from cormorant.common.endpoints.schemas import (
    EndpointCreate,
    EndpointCreated,
    EndpointList,
    EndpointOut,
    EndpointRerun,
    ReplicasIn,
    Route,
    RoutingTable,
    TokenOut,
)
from cormorant.common.errors import error_response
from cormorant.deployer.api.deps import EndpointsDep as ServiceDep

router = APIRouter()


@router.post("/api/v1/endpoints", status_code=201, tags=["endpoints"])
async def create_endpoint(body: EndpointCreate, service: ServiceDep) -> EndpointCreated:
    """Deploy a predict function; the answer carries the endpoint's token, shown only here."""
    return await service.create(body)


@router.get("/api/v1/endpoints", tags=["endpoints"])
async def list_endpoints(service: ServiceDep) -> EndpointList:
    """Every endpoint, newest first."""
    return await service.list()


@router.get("/api/v1/endpoints/{slug}", tags=["endpoints"])
async def get_endpoint(slug: str, service: ServiceDep) -> EndpointOut:
    """One endpoint: status, replicas, recent replica events."""
    return await service.get(slug)


@router.delete("/api/v1/endpoints/{slug}", tags=["endpoints"])
async def delete_endpoint(slug: str, service: ServiceDep) -> EndpointOut:
    """Revoke the endpoint's tokens, drain and stop its replicas; the final state."""
    return await service.delete(slug)


@router.post("/api/v1/endpoints/{slug}/rerun", status_code=201, tags=["endpoints"])
async def rerun_endpoint(
    slug: str,
    service: ServiceDep,
    body: Annotated[EndpointRerun | None, Body()] = None,
) -> EndpointCreated:
    """A new endpoint with this one's settings and code; any field may be overridden."""
    return await service.rerun(slug, body or EndpointRerun())


@router.post("/api/v1/endpoints/{slug}/token", tags=["endpoints"])
async def rotate_token(slug: str, service: ServiceDep) -> TokenOut:
    """A new token for the endpoint, shown once; the previous one stops working at once."""
    return await service.rotate_token(slug)


@router.get("/internal/routing", tags=["internal"])
async def routing_table(service: ServiceDep) -> RoutingTable:
    """Where the gateway sends each endpoint's requests: ready replicas and traffic weights."""
    return await service.routes()


@router.get("/internal/prometheus/targets", tags=["internal"])
async def prometheus_targets(service: ServiceDep) -> list[dict[str, Any]]:
    """Every ready replica as a Prometheus HTTP service-discovery target group."""
    table = await service.routes()
    return [
        {
            "targets": [urlsplit(replica.url).netloc],
            "labels": {"endpoint": route.slug, "version": replica.version, "replica": replica.id},
        }
        for route in table.endpoints
        for replica in route.replicas
    ]


@router.get("/internal/routing/{slug}", tags=["internal"])
async def routing_entry(slug: str, service: ServiceDep) -> Route:
    """The route of one endpoint; 404 once it is deleted."""
    return await service.route(slug)


_FIELDS = {
    "body": sorted(EndpointCreate.model_fields),
    "replicas": sorted(ReplicasIn.model_fields),
}


def install_validation_messages(app: FastAPI) -> None:
    """Render request validation errors as 400s that name each field and what to fix."""

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, "bad_request", describe_validation(exc.errors()))

    app.add_exception_handler(RequestValidationError, on_validation)


def describe_validation(errors: Any) -> str:
    """One sentence per problem, ``field: what is wrong``."""
    parts = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        where = ".".join(loc) or "body"
        kind = err.get("type")
        if kind == "extra_forbidden":
            parent = loc[-2] if len(loc) > 1 else "body"
            accepted = ", ".join(_FIELDS.get(parent, []))
            parts.append(f"{where}: unknown field; accepted fields are {accepted}")
        elif kind == "missing":
            parts.append(f"{where}: required")
        elif kind == "json_invalid":
            parts.append(f"body: not valid JSON ({err.get('ctx', {}).get('error', 'syntax')})")
        else:
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
