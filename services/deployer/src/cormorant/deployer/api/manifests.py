"""Routes of ``cormorant k8s manifests``: the Kubernetes objects of one endpoint or of all.

The fleet renders them with the ``KubernetesFleet``'s builders whichever fleet runs (see
``cormorant.fleet.kubernetes.render``).
"""

from __future__ import annotations

from fastapi import APIRouter

from cormorant.common.endpoints.fleet import ManifestsOut
from cormorant.deployer.api.deps import EndpointsDep

router = APIRouter(tags=["kubernetes"])


@router.get("/api/v1/endpoints/{slug}/manifests")
async def endpoint_manifests(slug: str, service: EndpointsDep) -> ManifestsOut:
    """The Kubernetes objects of every version ``slug`` runs, as the kubernetes fleet applies
    them (JSON and a YAML stream)."""
    return await service.fleet.manifests(slug)


@router.get("/api/v1/manifests")
async def all_manifests(service: EndpointsDep) -> ManifestsOut:
    """The Kubernetes objects of every endpoint."""
    return await service.fleet.manifests()
