"""Routes of ``cormorant k8s manifests``: the Kubernetes objects of one endpoint or of all.

Rendered with the ``KubernetesFleet``'s builders whichever fleet runs (see
``fleet/kubernetes/render.py``).
"""

from __future__ import annotations

from fastapi import APIRouter

from cormorant.deployer.api.deps import EndpointsDep
from cormorant.deployer.fleet.kubernetes.manifests import ClusterConfig
from cormorant.deployer.fleet.kubernetes.render import ManifestsOut

router = APIRouter(tags=["kubernetes"])


@router.get("/api/v1/endpoints/{slug}/manifests")
async def endpoint_manifests(slug: str, service: EndpointsDep) -> ManifestsOut:
    """The Kubernetes objects of every version ``slug`` runs, as the kubernetes fleet applies
    them (JSON and a YAML stream)."""
    config = ClusterConfig.of(service.settings)
    return await service.fleet.manifests(config, slug)


@router.get("/api/v1/manifests")
async def all_manifests(service: EndpointsDep) -> ManifestsOut:
    """The Kubernetes objects of every endpoint."""
    return await service.fleet.manifests(ClusterConfig.of(service.settings))
