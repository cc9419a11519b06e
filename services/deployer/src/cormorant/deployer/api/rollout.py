"""HTTP routes of model updates: versions, rollout, promote, rollback, traffic."""

from __future__ import annotations

from fastapi import APIRouter

from cormorant.common.openapi import error_responses
from cormorant.deployer.api.deps import RolloutsDep as RolloutDep
from cormorant.deployer.rollout.schemas import (
    RolloutIn,
    ShadowIn,
    ShadowOut,
    TrafficOut,
    VersionCreate,
    VersionList,
    VersionOut,
)

router = APIRouter(tags=["rollout"], responses=error_responses(409))


@router.post("/api/v1/endpoints/{slug}/versions", status_code=201)
async def create_version(slug: str, body: VersionCreate, service: RolloutDep) -> VersionOut:
    """A new version of the endpoint; its replicas start, it takes no traffic until rolled out."""
    return await service.create_version(slug, body)


@router.get("/api/v1/endpoints/{slug}/versions")
async def list_versions(slug: str, service: RolloutDep) -> VersionList:
    """Every version of the endpoint, with its weight, role and replicas."""
    return await service.list_versions(slug)


@router.post("/api/v1/endpoints/{slug}/rollout")
async def rollout(slug: str, body: RolloutIn, service: RolloutDep) -> TrafficOut:
    """Give a version a share of the traffic (1-100 %) once its replicas are ready."""
    return await service.rollout(slug, body)


@router.post("/api/v1/endpoints/{slug}/promote")
async def promote(slug: str, service: RolloutDep) -> TrafficOut:
    """Send all traffic to the canary; the previous version retires after draining."""
    return await service.promote(slug)


@router.post("/api/v1/endpoints/{slug}/rollback")
async def rollback(slug: str, service: RolloutDep) -> TrafficOut:
    """Send all traffic to the stable version; the canary retires after draining."""
    return await service.rollback(slug)


@router.get("/api/v1/endpoints/{slug}/traffic")
async def traffic(slug: str, service: RolloutDep) -> TrafficOut:
    """Weights, generation, each version's replicas, traffic history and rollouts."""
    return await service.traffic(slug)


@router.post("/api/v1/endpoints/{slug}/shadow")
async def start_shadow(slug: str, body: ShadowIn, service: RolloutDep) -> ShadowOut:
    """Mirror a share of live requests to a running version; its answers are logged tagged
    shadow and never returned, and callers never wait for them."""
    return await service.start_shadow(slug, body)


@router.get("/api/v1/endpoints/{slug}/shadow")
async def shadow(slug: str, service: RolloutDep) -> ShadowOut:
    """The shadow version and the share of live requests mirrored to it (none: nulls)."""
    return await service.shadow(slug)


@router.delete("/api/v1/endpoints/{slug}/shadow")
async def stop_shadow(slug: str, service: RolloutDep) -> ShadowOut:
    """Stop mirroring; the shadow version keeps running without traffic."""
    return await service.stop_shadow(slug)
