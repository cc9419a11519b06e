"""JSON shapes of versions, traffic and rollouts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from cormorant.common.endpoints.schemas import ReplicasIn, ServerValue, StrictModel


class VersionCreate(StrictModel):
    """``POST /api/v1/endpoints/{slug}/versions``: new code for the endpoint; unset fields keep
    the endpoint's current values."""

    source: str = Field(min_length=1, description="Absolute directory path, or a git URL.")
    commit: str | None = Field(default=None, description="Commit, tag or branch of a git source.")
    file: str | None = None
    function: str | None = None
    preprocess_file: str | None = None
    preprocess_function: str | None = None
    accepts_file: bool | None = None
    env: dict[str, str] | None = None
    server: dict[str, ServerValue] | None = None
    replicas: ReplicasIn | None = None


class RolloutIn(StrictModel):
    """``POST /api/v1/endpoints/{slug}/rollout``: the canary's share of the traffic."""

    version: str = Field(min_length=1, description='The version label, e.g. "2".')
    percent: int = Field(ge=1, le=100, description="Share of requests for the version, 1-100.")
    policy: dict[str, Any] | None = Field(
        default=None,
        description='Progressive delivery, e.g. {"steps": [10, 50, 100], "interval": "30s", '
        '"checks": [...]}; percent is then ignored.',
    )


class ShadowIn(StrictModel):
    """``POST /api/v1/endpoints/{slug}/shadow``: mirror a share of live requests to a version."""

    version: str = Field(
        min_length=1, description='The version label, e.g. "2": running, without traffic.'
    )
    percent: float = Field(
        gt=0, le=100, description="Share of live requests mirrored to it, more than 0 up to 100."
    )


class ShadowOut(BaseModel):
    """``GET /api/v1/endpoints/{slug}/shadow``: the shadow version and its share, if any."""

    slug: str
    generation: int
    version: str | None
    """None when no request is mirrored."""
    percent: float | None


class ReplicaOut(BaseModel):
    """A replica of one version."""

    id: str
    state: str
    url: str | None


class VersionOut(BaseModel):
    """A version of an endpoint."""

    version: str
    status: str
    reason: str | None
    source: str
    commit: str | None
    source_digest: str
    file: str
    function: str
    created_at: datetime
    weight: int = 0
    role: str = "inactive"
    """``stable`` (sets the status, autoscaled), ``canary``, ``shadow`` (mirrored requests
    only), ``starting`` (running, no traffic), ``retiring`` or ``inactive``."""
    replicas: list[ReplicaOut] = Field(default_factory=list)


class VersionList(BaseModel):
    """Every version of an endpoint, newest first."""

    slug: str
    versions: list[VersionOut]


class TrafficOut(BaseModel):
    """``GET /api/v1/endpoints/{slug}/traffic``."""

    slug: str
    generation: int
    weights: dict[str, int]
    stable: str | None
    canary: str | None
    shadow: ShadowOut | None = None
    """The shadow version and its share while live requests are mirrored, else None."""
    versions: list[VersionOut]
    history: list[dict[str, Any]]
    rollouts: list[dict[str, Any]]
