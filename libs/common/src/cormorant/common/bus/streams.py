"""The JetStream streams that hold the event catalogue, and their idempotent creation."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

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
    duplicate_window: float = 120.0,
    replicas: int = 1,
) -> tuple[StreamSpec, ...]:
    """The platform's streams with the given retention (seconds)."""
    return (
        StreamSpec(
            PREDICTIONS_STREAM,
            (PredictionLogged.subject_filter(),),
            max_age=predictions_max_age,
            duplicate_window=duplicate_window,
            replicas=replicas,
        ),
        StreamSpec(
            METRICS_STREAM,
            (MetricLogged.subject_filter(),),
            max_age=metrics_max_age,
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
            duplicate_window=duplicate_window,
            replicas=replicas,
        ),
    )


STREAMS: Final = stream_specs()
"""The streams with default retention; services pass their own ``stream_specs(...)``."""


async def ensure_streams(js: JetStreamContext, streams: Iterable[StreamSpec] = STREAMS) -> None:
    """Create each stream, or update it if its configuration differs; safe to run concurrently."""
    for spec in streams:
        config = spec.to_config()
        try:
            # Creating a stream that exists with the same configuration succeeds, so the
            # common case is a single request and two services racing here both succeed.
            await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != _STREAM_NAME_IN_USE:
                raise
            await js.update_stream(config)
            log.info("stream %s updated to %s", spec.name, spec)
