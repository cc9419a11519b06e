"""The JetStream streams that hold the event catalogue, and their idempotent creation."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, ServerError

from cormorant.common.events import (
    AlertFired,
    BatchJobChanged,
    EndpointChanged,
    FeedbackRunFinished,
    FlowRunChanged,
    MetricLogged,
    PredictionLogged,
    ReplicaChanged,
    TrafficChanged,
)
from cormorant.common.settings import StreamSettings

log = logging.getLogger(__name__)

_DAY: Final = 86_400.0

PREDICTIONS_STREAM: Final = "CORMORANT_PREDICTIONS"
METRICS_STREAM: Final = "CORMORANT_METRICS"
EVENTS_STREAM: Final = "CORMORANT_EVENTS"

# JetStream's error code for "stream name already in use with a different configuration".
_STREAM_NAME_IN_USE: Final = 10058


@dataclass(slots=True, frozen=True)
class StreamSpec:
    """A JetStream stream owned by the platform: file storage, limits retention."""

    name: str
    subjects: tuple[str, ...]
    max_age: float
    """Seconds a message is kept; 0 keeps it until ``max_bytes`` pushes it out."""
    max_bytes: int = -1
    duplicate_window: float = 120.0
    """Seconds during which a re-sent ``Nats-Msg-Id`` is recognised and dropped."""
    replicas: int = 1

    def to_config(self) -> StreamConfig:
        """The nats-py configuration of this stream."""
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            duplicate_window=self.duplicate_window,
            num_replicas=self.replicas,
        )


def stream_specs(
    *,
    predictions_max_age: float = 7 * _DAY,
    metrics_max_age: float = 30 * _DAY,
    events_max_age: float = 30 * _DAY,
    predictions_max_bytes: int = -1,
    metrics_max_bytes: int = -1,
    events_max_bytes: int = -1,
    duplicate_window: float = 120.0,
    replicas: int = 1,
) -> tuple[StreamSpec, ...]:
    """The platform's streams with the given retention (seconds; bytes, -1 for no limit)."""
    return (
        StreamSpec(
            PREDICTIONS_STREAM,
            (PredictionLogged.subject_filter(),),
            max_age=predictions_max_age,
            max_bytes=predictions_max_bytes,
            duplicate_window=duplicate_window,
            replicas=replicas,
        ),
        StreamSpec(
            METRICS_STREAM,
            (MetricLogged.subject_filter(),),
            max_age=metrics_max_age,
            max_bytes=metrics_max_bytes,
            duplicate_window=duplicate_window,
            replicas=replicas,
        ),
        StreamSpec(
            EVENTS_STREAM,
            tuple(
                cls.subject_filter()
                for cls in (
                    EndpointChanged,  # also VersionCreated: same cormorant.endpoint.> tree
                    TrafficChanged,
                    ReplicaChanged,
                    BatchJobChanged,
                    AlertFired,
                    FlowRunChanged,
                    FeedbackRunFinished,
                )
            ),
            max_age=events_max_age,
            max_bytes=events_max_bytes,
            duplicate_window=duplicate_window,
            replicas=replicas,
        ),
    )


def configured_streams(settings: StreamSettings) -> tuple[StreamSpec, ...]:
    """The platform's streams sized as ``settings`` (the ``CORMORANT_BUS_STREAM_*`` values)."""

    def limit(size: int | None) -> int:
        return -1 if size is None else int(size)

    return stream_specs(
        predictions_max_age=settings.predictions_max_age_s,
        metrics_max_age=settings.metrics_max_age_s,
        events_max_age=settings.events_max_age_s,
        predictions_max_bytes=limit(settings.predictions_max_bytes),
        metrics_max_bytes=limit(settings.metrics_max_bytes),
        events_max_bytes=limit(settings.events_max_bytes),
        replicas=settings.replicas,
    )


STREAMS: Final = stream_specs()
"""The streams with default retention; services pass ``configured_streams(settings)``."""


class StreamRefused(RuntimeError):
    """NATS refused a stream's configuration (more replicas than servers, more bytes than its
    store holds): the message names the settings to change."""

    def __init__(self, spec: StreamSpec, description: str) -> None:
        super().__init__(
            f"NATS refused stream {spec.name} (replicas={spec.replicas},"
            f" max_bytes={spec.max_bytes}, max_age={spec.max_age:.0f}s): {description}; check"
            " CORMORANT_BUS_STREAM_REPLICAS (at most the NATS cluster's servers, 1 on a single"
            " server) and the CORMORANT_BUS_STREAM_*_MAX_BYTES sizes (their sum within the"
            " servers' max_file_store)"
        )
        self.stream = spec.name
        self.description = description


async def ensure_streams(js: JetStreamContext, streams: Iterable[StreamSpec] | None = None) -> None:
    """Create each stream, or update it if its configuration differs; safe to run concurrently.

    Without ``streams`` (a caller not given the ``CORMORANT_BUS_STREAM_*`` settings), missing
    streams are created with the defaults and existing ones are left as they are: such a
    caller must not undo the sizing the configured services applied (3 replicas back to 1).
    """
    update = streams is not None
    for spec in STREAMS if streams is None else streams:
        config = spec.to_config()
        try:
            try:
                # Creating a stream that exists with the same configuration succeeds, so the
                # common case is a single request and two services racing here both succeed.
                await js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                if not update:
                    continue
                await js.update_stream(config)
                log.info("stream %s updated to %s", spec.name, spec)
        except (BadRequestError, ServerError) as exc:
            # JetStream answers a configuration it cannot place with 500 (10074: replicas > 1 on
            # one server; 10047: max_bytes beyond its store), an invalid one with 400.
            raise StreamRefused(spec, exc.description or repr(exc)) from exc
