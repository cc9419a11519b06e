"""Packs: several events of one subject in one NATS message, for one publish and one ack.

A pack is a JetStream message with three headers: ``Cormorant-Event`` (the type of every
event inside), ``Cormorant-Pack`` (how many events it carries) and ``Nats-Msg-Id`` (derived
from the event ids, so a re-sent pack is de-duplicated like a re-sent event). Its body is,
for each event, one line with the event's own headers but the type and id (its W3C trace
context) as a JSON object, empty when there are none, and one line with the event's JSON
body (which holds its id). Neither line can hold a raw newline: both are compact JSON, which
escapes control characters.

Every consumer reads messages through ``unpack`` (or ``decode_message``), so a plain
one-event message and a pack are handled alike: a pack's events keep their own ids and
trace contexts. A message is acked once, for all of its events; consumers are idempotent on
the event (or request) id, so a pack redelivered because one of its events had to wait
stores nothing twice.

A producer may also build a pack itself (``Pack``, sent with ``BatchedPublisher.publish_pack``)
in another layout, named by its ``Cormorant-Pack-Layout`` header: ``columns`` is the
prediction log's (``bus.predictions``), one JSON object of columns for the whole pack, which
``unpack`` expands into the same events for any other reader.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import orjson

from cormorant.common.events import (
    EVENT_TYPE_HEADER,
    MSG_ID_HEADER,
    Event,
    EventDecodeError,
    decode,
)

PACK_HEADER: Final = "Cormorant-Pack"
"""Header holding the number of events a pack carries."""
LAYOUT_HEADER: Final = "Cormorant-Pack-Layout"
"""Header naming a producer-built pack's layout; absent on the line layout above."""
COLUMNS_LAYOUT: Final = "columns"
"""The layout of ``bus.predictions.prediction_pack``."""

_NL: Final = b"\n"


@dataclass(slots=True, frozen=True)
class Pack:
    """Events packed by their producer, for ``BatchedPublisher.publish_pack``."""

    event_type: str
    payload: bytes
    headers: dict[str, str]
    """The pack's NATS headers, its type, count, layout and ``Nats-Msg-Id`` among them."""
    count: int
    split: Callable[[], Sequence[Pack]] | None = None
    """The same events in smaller packs, should this one be refused as too large; an empty
    sequence when it cannot be split."""


def is_pack(headers: Mapping[str, str] | None) -> bool:
    """Whether the message with ``headers`` is a pack."""
    return headers is not None and PACK_HEADER in headers


def pack_size(headers: Mapping[str, str] | None) -> int:
    """How many events the message with ``headers`` carries (1 unless it is a pack)."""
    if headers is None:
        return 1
    count = headers.get(PACK_HEADER)
    if count is None:
        return 1
    try:
        return max(1, int(count))
    except ValueError:
        return 1


def pack_id(event_ids: Iterable[str]) -> str:
    """The ``Nats-Msg-Id`` of a pack: the same events in the same order give the same id."""
    digest = hashlib.blake2b(digest_size=16)
    for event_id in event_ids:
        digest.update(event_id.encode())
        digest.update(_NL)
    return f"pack-{digest.hexdigest()}"


def header_line(headers: Mapping[str, str]) -> bytes:
    """An event's headers as the line that precedes its body in a pack (the type and id are
    the pack's and the body's already)."""
    if len(headers) <= 2 and EVENT_TYPE_HEADER in headers:
        return b""  # nothing but the type and, as a rule, the id
    own = {k: v for k, v in headers.items() if k != EVENT_TYPE_HEADER and k != MSG_ID_HEADER}
    return orjson.dumps(own) if own else b""


def pack(
    event_type: str, members: Sequence[tuple[bytes, bytes]], event_ids: Iterable[str]
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of the pack of ``members`` (header line, body) of ``event_type``."""
    parts: list[bytes] = []
    for line, body in members:
        parts.append(line)
        parts.append(body)
    parts.append(b"")
    headers = {
        EVENT_TYPE_HEADER: event_type,
        PACK_HEADER: str(len(members)),
        MSG_ID_HEADER: pack_id(event_ids),
    }
    return _NL.join(parts), headers


def unpack(data: bytes, headers: Mapping[str, str] | None) -> list[tuple[bytes, Mapping[str, str]]]:
    """Each event a message carries as (body, headers); ``EventDecodeError`` if malformed.

    A message without the pack header is one event and comes back as it is.
    """
    if headers is None or PACK_HEADER not in headers:
        return [(data, headers or {})]
    layout = headers.get(LAYOUT_HEADER)
    if layout is not None:
        if layout == COLUMNS_LAYOUT:
            # Imported here: that module builds its packs with this one's names.
            from cormorant.common.bus.predictions import expand_prediction_pack

            return expand_prediction_pack(data, headers)
        raise EventDecodeError(
            f"malformed pack: unknown layout {layout!r}", event_type=headers.get(EVENT_TYPE_HEADER)
        )
    expected = pack_size(headers)
    lines = data.split(_NL)
    if not lines or lines[-1] != b"" or len(lines) != 2 * expected + 1:
        raise EventDecodeError(
            f"malformed pack: {len(lines) // 2} event(s) where the header says {expected}",
            event_type=headers.get(EVENT_TYPE_HEADER),
        )
    base = {EVENT_TYPE_HEADER: headers.get(EVENT_TYPE_HEADER, "")}
    out: list[tuple[bytes, Mapping[str, str]]] = []
    for at in range(0, 2 * expected, 2):
        line = lines[at]
        if not line:
            out.append((lines[at + 1], base))  # shared: nobody writes to these headers
            continue
        try:
            own = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise EventDecodeError(f"malformed pack: unreadable event headers ({exc})") from exc
        if not isinstance(own, dict):
            raise EventDecodeError("malformed pack: event headers are not an object")
        out.append((lines[at + 1], base | own))
    return out


def decode_message(
    data: bytes, headers: Mapping[str, str] | None
) -> list[tuple[Event | EventDecodeError, Mapping[str, str]]]:
    """Each event a message carries, decoded, with its own headers.

    An event that does not decode comes back as its ``EventDecodeError`` (the others of its
    pack are still good); a malformed pack raises ``EventDecodeError``.
    """
    decoded: list[tuple[Event | EventDecodeError, Mapping[str, str]]] = []
    for body, own in unpack(data, headers):
        try:
            decoded.append((decode(body, own), own))
        except EventDecodeError as exc:
            decoded.append((exc, own))
    return decoded


def decode_all(data: bytes, headers: Mapping[str, str] | None) -> list[Event]:
    """Every event a message carries; ``EventDecodeError`` if any of them does not decode."""
    events: list[Event] = []
    for event, _ in decode_message(data, headers):
        if isinstance(event, EventDecodeError):
            raise event
        events.append(event)
    return events
