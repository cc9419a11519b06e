"""The deployer's JSON shapes: what a client sends, what is stored as the spec, what it gets."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from cormorant.common.events import ShadowTarget
from cormorant.common.sandbox import DEFAULT_MAX_PROCESSES, DEFAULT_MEMORY_MB, DEFAULT_OPEN_FILES

KindName = Literal["web", "batch", "stream"]
ServerValue = str | int | float | bool


def server_flag_value(value: ServerValue) -> str:
    """A server setting as the worker's ``--server KEY=VALUE`` flag expects it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class StrictModel(BaseModel):
    """A request body: an unknown field is refused (400 naming it), so a typo is not ignored."""

    model_config = ConfigDict(extra="forbid")


class ReplicasIn(StrictModel):
    """Replica bounds as a client gives them; unset values take the defaults."""

    min: int | None = Field(default=None, ge=0, description="Fewest replicas (web: at least 1).")
    max: int | None = Field(default=None, ge=1, description="Most replicas the autoscaler adds.")
    target: float | None = Field(
        default=None, gt=0, description="In-flight requests per replica the autoscaler aims for."
    )


class ResourcesIn(StrictModel):
    """Limits of each replica's processes, as a client gives them; unset values take the
    defaults."""

    memory_mb: int | None = Field(
        default=None, ge=64, le=1 << 20,
        description="Memory (MB of data segment) each worker process of a replica may map; "
        "past it predict gets a MemoryError and the worker is replaced.",
    )  # fmt: skip
    max_processes: int | None = Field(
        default=None, ge=16, le=1 << 16,
        description="Processes and threads a replica may run at once, its workers included.",
    )  # fmt: skip
    open_files: int | None = Field(
        default=None, ge=64, le=1 << 20,
        description="File descriptors each process of a replica may hold.",
    )  # fmt: skip


class ResourcesSpec(BaseModel):
    """Resolved limits of each replica (``cormorant.common.sandbox.Limits``)."""

    memory_mb: int = DEFAULT_MEMORY_MB
    max_processes: int = DEFAULT_MAX_PROCESSES
    open_files: int = DEFAULT_OPEN_FILES


class EndpointCreate(StrictModel):
    """``POST /api/v1/endpoints``: a predict function to serve."""

    name: str = Field(
        min_length=1, max_length=200, description="Shown name; the slug comes from it."
    )
    kind: KindName = "web"
    source: str = Field(min_length=1, description="Absolute directory path, or a git URL.")
    commit: str | None = Field(default=None, description="Commit, tag or branch of a git source.")
    file: str = "predict.py"
    function: str = "predict"
    preprocess_file: str | None = None
    preprocess_function: str | None = None
    accepts_file: bool = False
    env: dict[str, str] = Field(default_factory=dict, description="Exported to the predict code.")
    server: dict[str, ServerValue] = Field(
        default_factory=dict, description='Gunicorn settings, e.g. {"workers": 1, "threads": 4}.'
    )
    replicas: ReplicasIn = Field(default_factory=ReplicasIn)
    timeout_s: float | None = Field(
        default=None, gt=0,
        description="Per-request deadline: past it the request gets 504 and the worker "
        "running it is replaced.",
    )  # fmt: skip
    resources: ResourcesIn = Field(default_factory=ResourcesIn)
    kafka: dict[str, JsonValue] | None = Field(default=None, description="Stream endpoints only.")


class EndpointRerun(StrictModel):
    """``POST /api/v1/endpoints/{slug}/rerun``: fields that override the original's."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    kind: KindName | None = None
    source: str | None = Field(default=None, min_length=1)
    commit: str | None = None
    file: str | None = None
    function: str | None = None
    preprocess_file: str | None = None
    preprocess_function: str | None = None
    accepts_file: bool | None = None
    env: dict[str, str] | None = None
    server: dict[str, ServerValue] | None = None
    replicas: ReplicasIn | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    resources: ResourcesIn | None = None
    kafka: dict[str, JsonValue] | None = None


class ReplicasSpec(BaseModel):
    """Resolved replica bounds."""

    min: int
    max: int
    target: float


class EndpointSpec(BaseModel):
    """An endpoint's settings after defaults: stored as ``endpoints.spec``, echoed by the API."""

    name: str
    kind: KindName
    source: str
    commit: str | None
    file: str
    function: str
    preprocess_file: str | None
    preprocess_function: str | None
    accepts_file: bool
    env: dict[str, str]
    server: dict[str, ServerValue]
    replicas: ReplicasSpec
    timeout_s: float
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    """Endpoints stored before limits existed take the defaults."""
    kafka: dict[str, JsonValue] | None

    def to_request(self) -> dict[str, Any]:
        """This spec as the fields of a create request (a rerun starts from them)."""
        return self.model_dump(mode="json")


class ReplicaCounts(BaseModel):
    """How many replicas are ready, wanted, and the bounds."""

    ready: int
    desired: int
    min: int
    max: int
    target: float


class ReplicaEventOut(BaseModel):
    """One state change of one replica."""

    time: datetime
    replica_id: str
    version: str
    state: str
    reason: str | None = None
    cause: str | None = None
    """Why a worker or replica died: ``timeout``, ``oom``, ``exit``, ``killed``, ``signal``."""


class EndpointOut(BaseModel):
    """An endpoint as every read of the API shows it (never with a token)."""

    slug: str
    name: str
    kind: KindName
    status: str
    reason: str | None
    version: str | None
    source: str
    commit: str | None
    source_digest: str | None
    file: str
    function: str
    preprocess_file: str | None
    preprocess_function: str | None
    accepts_file: bool
    env: dict[str, str]
    server: dict[str, ServerValue]
    timeout_s: float
    resources: ResourcesSpec
    kafka: dict[str, JsonValue] | None
    replicas: ReplicaCounts
    restarts: int
    events: list[ReplicaEventOut]
    created_at: datetime
    predict_url: str


class EndpointCreated(EndpointOut):
    """A new endpoint, with its bearer token: the only answer that ever shows it."""

    token: str


class EndpointList(BaseModel):
    """Every endpoint that is not deleted, newest first."""

    endpoints: list[EndpointOut]


class TokenOut(BaseModel):
    """A rotated token, shown once; the previous one no longer works."""

    slug: str
    token: str


class RouteReplica(BaseModel):
    """A replica the gateway may send requests to."""

    id: str
    version: str
    url: str
    state: str


class Route(BaseModel):
    """How the gateway reaches one endpoint."""

    slug: str
    endpoint_id: str
    kind: KindName
    status: str
    timeout_s: float
    generation: int
    weights: dict[str, int]
    replicas: list[RouteReplica]
    shadow: ShadowTarget | None = None
    """The version a share of live requests is mirrored to (its replicas are among
    ``replicas``; it has no weight)."""


class RoutingTable(BaseModel):
    """Every endpoint's route."""

    endpoints: list[Route]
