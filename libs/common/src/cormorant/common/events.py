"""The event catalogue: typed events, their NATS subjects and their wire encoding.

Every event is a frozen pydantic model with an ``event_id`` (sent as ``Nats-Msg-Id`` so that
JetStream drops re-sent copies) and an ``occurred_at`` in UTC. On the wire an event is its
compact JSON body plus two headers: the event type and the message id. ``decode`` turns any
message back into the right class through ``EVENT_TYPES``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
)

SUBJECT_ROOT = "cormorant"
EVENT_TYPE_HEADER = "Cormorant-Event"
MSG_ID_HEADER = "Nats-Msg-Id"

_SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Subject tokens that are not slugs (trigger ids, flow names) may also carry capitals and
# underscores; what matters is that `.`, `*`, `>` and whitespace can never reach a subject.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")


class InvalidSubjectToken(ValueError):
    """A value that would break a NATS subject if used as one of its tokens."""

    def __init__(self, value: str, *, allowed: str = "letters, digits, '-' and '_'") -> None:
        super().__init__(f"{value!r} cannot be a subject token: use only {allowed}")
        self.value = value


class EventDecodeError(ValueError):
    """A message that is not a known, valid event."""

    def __init__(self, message: str, *, event_type: str | None = None) -> None:
        super().__init__(message)
        self.event_type = event_type


def _slug(value: str) -> str:
    if _SLUG_RE.fullmatch(value) is None:
        raise InvalidSubjectToken(value, allowed="lowercase letters, digits and '-' (not first)")
    return value


def _token(value: str) -> str:
    if _TOKEN_RE.fullmatch(value) is None:
        raise InvalidSubjectToken(value)
    return value


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


def subject_token(value: str) -> str:
    """``value`` unchanged if it is safe as one subject token, else ``InvalidSubjectToken``."""
    return _token(value)


Slug = Annotated[str, AfterValidator(_slug)]
"""An endpoint slug, ``[a-z0-9][a-z0-9-]*``: safe as a subject token."""

Token = Annotated[str, AfterValidator(_token)]
"""A name used as a subject token (trigger id, flow name)."""

UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]
"""A timezone-aware datetime, normalised to UTC; naive datetimes are refused."""

NonEmpty = Annotated[str, Field(min_length=1)]


class Event(BaseModel):
    """Base of every event on the bus."""

    # Frozen: an event is a fact. Unknown fields are ignored so that an older consumer keeps
    # decoding events from a newer producer during a rolling upgrade.
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_type: ClassVar[str]
    subject_prefix: ClassVar[str]
    key_is_slug: ClassVar[bool] = True
    """Whether the subject token after the prefix is an endpoint slug."""

    event_id: str = Field(default_factory=_new_id, min_length=1, max_length=64)
    occurred_at: UtcDatetime = Field(default_factory=_now)

    @property
    def subject(self) -> str:
        """The NATS subject this event is published on."""
        raise NotImplementedError

    @classmethod
    def subject_filter(cls, key: str | None = None) -> str:
        """Subject filter for this event family, optionally for one endpoint/trigger/flow."""
        if key is None:
            return f"{cls.subject_prefix}.>"
        return f"{cls.subject_prefix}.{_slug(key) if cls.key_is_slug else _token(key)}"

    def encode(self) -> bytes:
        """Compact JSON body of this event."""
        # The serializer writes bytes directly; model_dump_json would add a str round trip.
        return self.__pydantic_serializer__.to_json(self)

    def headers(self) -> dict[str, str]:
        """NATS headers that carry the event type and the de-duplication id."""
        return {EVENT_TYPE_HEADER: self.event_type, MSG_ID_HEADER: self.event_id}


class _EndpointTree(Event):
    """Events under ``cormorant.endpoint.<slug>.<what>``."""

    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.endpoint"

    @classmethod
    def subject_filter(cls, key: str | None = None) -> str:
        """Subject filter for endpoint events, optionally of one endpoint."""
        if key is None:
            return f"{cls.subject_prefix}.>"
        return f"{cls.subject_prefix}.{_slug(key)}.>"


class EndpointChanged(_EndpointTree):
    """An endpoint was created, updated or deleted."""

    event_type: ClassVar[str] = "EndpointChanged"

    endpoint: Slug
    change: Literal["created", "updated", "deleted"]
    attributes: dict[str, JsonValue] = Field(default_factory=dict)
    """The endpoint's public fields after the change (empty when deleted)."""

    @property
    def subject(self) -> str:
        """``cormorant.endpoint.<slug>.<change>``."""
        return f"{self.subject_prefix}.{self.endpoint}.{self.change}"


class VersionCreated(_EndpointTree):
    """A new model version was registered for an endpoint."""

    event_type: ClassVar[str] = "VersionCreated"

    endpoint: Slug
    version: NonEmpty
    attributes: dict[str, JsonValue] = Field(default_factory=dict)
    """The version's public fields (source, function names, requirements...)."""

    @property
    def subject(self) -> str:
        """``cormorant.endpoint.<slug>.version-created``."""
        return f"{self.subject_prefix}.{self.endpoint}.version-created"


class ShadowTarget(BaseModel):
    """Where an endpoint mirrors a share of its live requests: a version that answers them
    for the log only (shadow traffic)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    version: NonEmpty
    percent: float = Field(gt=0, le=100)
    """Share of live requests mirrored, in percent."""


class TrafficChanged(Event):
    """The traffic split of an endpoint changed; ``generation`` orders the changes."""

    event_type: ClassVar[str] = "TrafficChanged"
    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.traffic"

    endpoint: Slug
    generation: int = Field(ge=0)
    weights: dict[NonEmpty, Annotated[int, Field(ge=0, le=100)]]
    """Percent of requests per version; sums to 100 unless the endpoint has no version."""
    shadow: ShadowTarget | None = None
    """The shadow version live requests are mirrored to, if any, in force from this
    generation on."""

    @field_validator("weights")
    @classmethod
    def _sum_to_100(cls, weights: dict[str, int]) -> dict[str, int]:
        if weights and sum(weights.values()) != 100:
            raise ValueError(f"traffic weights must sum to 100, got {sum(weights.values())}")
        return weights

    @property
    def subject(self) -> str:
        """``cormorant.traffic.<slug>``."""
        return f"{self.subject_prefix}.{self.endpoint}"


ReplicaState = Literal["starting", "ready", "draining", "stopped", "crashed"]


class ReplicaChanged(Event):
    """A replica of an endpoint version changed state."""

    event_type: ClassVar[str] = "ReplicaChanged"
    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.replica"

    endpoint: Slug
    version: NonEmpty
    replica_id: NonEmpty
    state: ReplicaState
    url: str | None = None
    reason: str | None = None

    @property
    def subject(self) -> str:
        """``cormorant.replica.<slug>``."""
        return f"{self.subject_prefix}.{self.endpoint}"


class LoadReported(Event):
    """A gateway's average in-flight requests per replica over its last report interval.

    Sent on core NATS only (``cormorant.load.<slug>``, outside every stream): it is a live
    signal for the autoscaler, worthless once stale, so it is never stored or replayed.
    """

    event_type: ClassVar[str] = "LoadReported"
    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.load"

    endpoint: Slug
    gateway: NonEmpty
    interval_s: float = Field(gt=0)
    concurrency: dict[NonEmpty, Annotated[float, Field(ge=0)]]
    """Replica id to its time-averaged in-flight requests over the interval."""
    requests: int = Field(default=0, ge=0)

    @property
    def subject(self) -> str:
        """``cormorant.load.<slug>``."""
        return f"{self.subject_prefix}.{self.endpoint}"


class PredictionLogged(Event):
    """One prediction request and its answer, for the prediction log."""

    event_type: ClassVar[str] = "PredictionLogged"
    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.predictions"

    request_id: NonEmpty
    endpoint: Slug
    endpoint_id: str | None = None
    """The endpoint's database id, so the log outlives a slug reused after deletion."""
    version: NonEmpty
    input: JsonValue
    output: JsonValue = None
    error: str | None = None
    status: int = Field(ge=100, le=599)
    latency_ms: float = Field(ge=0)
    received_at: UtcDatetime
    trace_id: str | None = None
    shadow: bool = False
    """The answer of a shadow version to a mirrored request (logged by the gateway, never
    returned to the caller); ``request_id`` is the live request's."""

    @property
    def subject(self) -> str:
        """``cormorant.predictions.<slug>``."""
        return f"{self.subject_prefix}.{self.endpoint}"


class MetricLogged(Event):
    """A custom metric logged from predict code (``Endpoint().log_metric``)."""

    event_type: ClassVar[str] = "MetricLogged"
    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.metrics"

    endpoint: Slug
    endpoint_id: str | None = None
    """The endpoint's database id, when the sender knows it."""
    version: NonEmpty
    key: NonEmpty
    value: float
    request_id: str | None = None
    logged_at: UtcDatetime = Field(default_factory=_now)

    @property
    def subject(self) -> str:
        """``cormorant.metrics.<slug>``."""
        return f"{self.subject_prefix}.{self.endpoint}"


BatchJobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class BatchJobChanged(Event):
    """Progress or outcome of a batch job."""

    event_type: ClassVar[str] = "BatchJobChanged"
    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.batch"

    endpoint: Slug
    job_id: NonEmpty
    status: BatchJobStatus
    rows_done: int = Field(default=0, ge=0)
    rows_total: int | None = Field(default=None, ge=0)
    failures: int = Field(default=0, ge=0)

    @property
    def subject(self) -> str:
        """``cormorant.batch.<slug>``."""
        return f"{self.subject_prefix}.{self.endpoint}"


AlertAction = Literal["email", "webhook", "flow"]


class AlertFired(Event):
    """A metric trigger crossed its threshold and its action was started."""

    event_type: ClassVar[str] = "AlertFired"
    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.alerts"
    key_is_slug: ClassVar[bool] = False

    trigger_id: Token
    endpoint: Slug
    metric: NonEmpty
    value: float
    """The latest value that met the condition."""
    threshold: float
    action: AlertAction
    severity: Literal["info", "warning", "critical"] = "warning"
    title: str = ""
    count: int = 1
    """How many values met the condition when the trigger fired."""
    values: list[float] = Field(default_factory=list)
    """The latest of those values, oldest first."""

    @property
    def subject(self) -> str:
        """``cormorant.alerts.<trigger_id>``."""
        return f"{self.subject_prefix}.{self.trigger_id}"


FlowRunStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]


class FlowRunChanged(Event):
    """A flow run (or one of its tasks) changed status."""

    event_type: ClassVar[str] = "FlowRunChanged"
    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.flows"
    key_is_slug: ClassVar[bool] = False

    flow: Token
    run_id: NonEmpty
    task: str | None = None
    """The task that changed, or None for the run as a whole."""
    status: FlowRunStatus

    @property
    def subject(self) -> str:
        """``cormorant.flows.<flow>``."""
        return f"{self.subject_prefix}.{self.flow}"


FeedbackRunStatus = Literal["succeeded", "failed"]


class FeedbackRunFinished(Event):
    """A feedback loop's run ended: its rows are in a new dataset version, or it failed."""

    event_type: ClassVar[str] = "FeedbackRunFinished"
    subject_prefix: ClassVar[str] = f"{SUBJECT_ROOT}.feedback"

    endpoint: Slug
    loop_id: NonEmpty
    run_id: NonEmpty
    dataset: NonEmpty
    status: FeedbackRunStatus
    rows: int = Field(default=0, ge=0)
    dataset_version: int | None = Field(default=None, ge=1)
    """The version holding the rows; None when nothing was new or the run failed."""

    @property
    def subject(self) -> str:
        """``cormorant.feedback.<slug>``."""
        return f"{self.subject_prefix}.{self.endpoint}"


AnyEvent = (
    EndpointChanged
    | VersionCreated
    | TrafficChanged
    | ReplicaChanged
    | LoadReported
    | PredictionLogged
    | MetricLogged
    | BatchJobChanged
    | AlertFired
    | FlowRunChanged
    | FeedbackRunFinished
)
"""Every concrete event, for exhaustive ``match`` statements."""

EVENT_TYPES: Mapping[str, type[Event]] = {
    cls.event_type: cls
    for cls in (
        EndpointChanged,
        VersionCreated,
        TrafficChanged,
        ReplicaChanged,
        LoadReported,
        PredictionLogged,
        MetricLogged,
        BatchJobChanged,
        AlertFired,
        FlowRunChanged,
        FeedbackRunFinished,
    )
}
"""Event type name (the ``Cormorant-Event`` header) to its class."""


def decode(data: bytes, headers: Mapping[str, str] | None) -> Event:
    """The event carried by a NATS message body and headers; ``EventDecodeError`` if none."""
    event_type = headers.get(EVENT_TYPE_HEADER) if headers else None
    if event_type is None:
        raise EventDecodeError(f"message has no {EVENT_TYPE_HEADER} header")
    cls = EVENT_TYPES.get(event_type)
    if cls is None:
        raise EventDecodeError(f"unknown event type {event_type!r}", event_type=event_type)
    try:
        return cls.model_validate_json(data)
    except ValidationError as exc:
        raise EventDecodeError(
            f"invalid {event_type} event: {exc.error_count()} error(s): {exc.errors()[0]['msg']}",
            event_type=event_type,
        ) from exc
