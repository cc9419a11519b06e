"""NATS and JetStream plumbing shared by every service.

- ``connect`` / ``close``: a client that reconnects forever and logs connection changes.
- ``STREAMS`` / ``configured_streams`` / ``ensure_streams``: the JetStream streams that hold the
  event catalogue, sized by the ``CORMORANT_BUS_STREAM_*`` settings.
- ``BatchedPublisher``: a bounded, never-blocking, at-least-once publisher for the request path;
  with ``max_pack`` it sends several events of one subject as one message (a pack).
- ``unpack`` / ``decode_message``: the events a message carries, pack or not; a durable
  consumer (the prediction log's ingest) reads messages through them.

Exactly-once on the stream comes from at-least-once publishing plus JetStream de-duplication
on ``Nats-Msg-Id`` (the event id) within each stream's ``duplicate_window``. Consumers are
at-least-once: a handler must tolerate seeing an event twice (de-duplicate on ``event_id``).
"""

from cormorant.common.bus.connection import close, connect
from cormorant.common.bus.packing import (
    PACK_HEADER,
    Pack,
    decode_all,
    decode_message,
    is_pack,
    pack_size,
    unpack,
)
from cormorant.common.bus.predictions import (
    PredictionColumns,
    column_event_id,
    prediction_body,
    prediction_pack,
    read_prediction_columns,
)
from cormorant.common.bus.publisher import PACK_EVENTS, BatchedPublisher, PublisherStats
from cormorant.common.bus.replica import reachable, replica_publisher
from cormorant.common.bus.streams import (
    EVENTS_STREAM,
    METRICS_STREAM,
    PREDICTIONS_STREAM,
    STREAMS,
    StreamRefused,
    StreamSpec,
    configured_streams,
    ensure_streams,
    stream_specs,
)

__all__ = [
    "EVENTS_STREAM",
    "METRICS_STREAM",
    "PACK_EVENTS",
    "PACK_HEADER",
    "PREDICTIONS_STREAM",
    "STREAMS",
    "BatchedPublisher",
    "Pack",
    "PredictionColumns",
    "PublisherStats",
    "StreamRefused",
    "StreamSpec",
    "close",
    "column_event_id",
    "configured_streams",
    "connect",
    "decode_all",
    "decode_message",
    "ensure_streams",
    "is_pack",
    "pack_size",
    "prediction_body",
    "prediction_pack",
    "reachable",
    "read_prediction_columns",
    "replica_publisher",
    "stream_specs",
    "unpack",
]
