"""Endpoint records turned into the JSON the API answers and the events carry."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cormorant.common.endpoints.kafka import public_kafka
from cormorant.common.endpoints.schemas import (
    EndpointOut,
    EndpointSpec,
    ReplicaCounts,
    ReplicaEventOut,
)
from cormorant.common.endpoints.store import EndpointRecord, EndpointStats, VersionRecord
from cormorant.common.errors import NotFound
from cormorant.common.events import VersionCreated


class EndpointNotFound(NotFound):
    """No live endpoint has this slug."""

    def __init__(self, slug: str) -> None:
        super().__init__(
            f"endpoint {slug!r} not found; GET /api/v1/endpoints lists the endpoints",
            details={"slug": slug},
        )


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    """One state change of one replica, as the endpoint's ``events`` lists it."""

    time: datetime
    replica_id: str
    version: str
    state: str
    reason: str | None = None
    cause: str | None = None
    """Why a worker or the replica died, for a death."""


def predict_url(slug: str) -> str:
    """The gateway path that serves ``slug``'s predictions."""
    return f"/api/v1/endpoints/{slug}/predict"


def endpoint_view(
    record: EndpointRecord, stats: EndpointStats, events: Iterable[ReplicaEvent]
) -> EndpointOut:
    """The endpoint's JSON document."""
    spec = record.spec
    version = record.version
    return EndpointOut(
        slug=record.slug,
        name=spec.name,
        kind=spec.kind,
        status=record.status,
        reason=record.reason,
        version=version.label if version else None,
        source=spec.source,
        commit=version.commit if version else spec.commit,
        source_digest=version.digest if version else None,
        file=spec.file,
        function=spec.function,
        preprocess_file=spec.preprocess_file,
        preprocess_function=spec.preprocess_function,
        accepts_file=spec.accepts_file,
        env=spec.env,
        server=spec.server,
        timeout_s=spec.timeout_s,
        resources=spec.resources,
        kafka=public_kafka(spec.kafka),
        replicas=ReplicaCounts(
            ready=stats.ready,
            desired=record.desired,
            min=spec.replicas.min,
            max=spec.replicas.max,
            target=spec.replicas.target,
        ),
        restarts=stats.restarts,
        events=[
            ReplicaEventOut(
                time=event.time,
                replica_id=event.replica_id,
                version=event.version,
                state=event.state,
                reason=event.reason,
                cause=event.cause,
            )
            for event in events
        ],
        created_at=record.created_at,
        predict_url=predict_url(record.slug),
    )


def event_attributes(view: EndpointOut) -> dict[str, Any]:
    """The endpoint's public fields for an ``EndpointChanged`` event (events left out)."""
    return view.model_dump(mode="json", exclude={"events"})


def version_created(slug: str, version: VersionRecord, spec: EndpointSpec) -> VersionCreated:
    """The ``VersionCreated`` event of ``version``, whose code fields ``spec`` holds."""
    return VersionCreated(
        endpoint=slug,
        version=version.label,
        attributes={
            "number": version.number,
            "source": version.source,
            "commit": version.commit,
            "source_digest": version.digest,
            "file": spec.file,
            "function": spec.function,
            "preprocess_file": spec.preprocess_file,
            "preprocess_function": spec.preprocess_function,
            "accepts_file": spec.accepts_file,
        },
    )
