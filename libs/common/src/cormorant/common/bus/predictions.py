"""``PredictionLogged`` bodies on the request path: written by orjson, the model as fallback.

Building and serializing the pydantic model costs a replica about 8 µs per prediction, a
tenth of what a no-op prediction costs it in all; orjson writes the same body in about 1 µs.
The caller vouches for what the model would check (a slug, a status between 100 and 599, a
latency not below zero, aware timestamps) because it builds those values itself;
``PredictionLogged`` still decodes every body, on the consumer's side.

A replica sends its predictions as column packs (``prediction_pack``): the events of one
endpoint version as one JSON object of columns, a tenth of the cost per event again and a
third of the bytes. ``read_prediction_columns`` reads one back unchecked, for a reader that
checks the columns in bulk (the prediction log's ingest); ``expand_prediction_pack`` turns
one into ordinary event bodies, which is how ``bus.unpack`` hands it to every other reader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from random import getrandbits
from typing import Any

import orjson
from pydantic_core import from_json, to_json

from cormorant.common.bus.packing import (
    COLUMNS_LAYOUT,
    LAYOUT_HEADER,
    PACK_HEADER,
    Pack,
    pack_size,
)
from cormorant.common.events import (
    EVENT_TYPE_HEADER,
    MSG_ID_HEADER,
    EventDecodeError,
    PredictionLogged,
)


def prediction_body(
    *,
    event_id: str,
    occurred_at: datetime,
    request_id: str,
    endpoint: str,
    endpoint_id: str | None,
    version: str,
    input: Any,
    output: Any,
    error: str | None,
    status: int,
    latency_ms: float,
    received_at: datetime,
    trace_id: str | None,
    shadow: bool = False,
) -> bytes:
    """The JSON body of the ``PredictionLogged`` with these fields, in the model's field order
    (``shadow`` written only when true, so other events keep their bytes).

    A value orjson cannot write (an integer past 64 bits, a dict with non-string keys...)
    sends the event through the model, which writes it or raises ``ValueError`` if it is
    not JSON.
    """
    fields = {
        "event_id": event_id,
        "occurred_at": occurred_at,
        "request_id": request_id,
        "endpoint": endpoint,
        "endpoint_id": endpoint_id,
        "version": version,
        "input": input,
        "output": output,
        "error": error,
        "status": status,
        "latency_ms": latency_ms,
        "received_at": received_at,
        "trace_id": trace_id,
    }
    if shadow:
        fields["shadow"] = True
    try:
        return orjson.dumps(fields, option=orjson.OPT_UTC_Z)
    except TypeError:
        return PredictionLogged(**fields).encode()


# -- column packs: a replica's predictions in one JSON object of columns


@dataclass(slots=True)
class PredictionColumns:
    """``PredictionLogged`` events of one endpoint version as columns, one entry per event.

    Written by a replica (``prediction_pack``), read back by ``read_prediction_columns``
    unchecked: the reader checks the values (the prediction log's ingest, in bulk) or
    ``expand_prediction_pack`` hands each event to the model.
    """

    endpoint: Any
    endpoint_id: Any
    version: Any
    occurred_at: Any
    """When the pack was built: the ``occurred_at`` of every event in it."""
    request_id: list[Any]
    received_at: list[Any]
    """POSIX timestamps (seconds, float): JSON round-trips them exactly."""
    latency_ms: list[Any]
    status: list[Any]
    input: list[Any]
    output: list[Any]
    error: list[Any]
    trace_id: list[Any]
    headers: list[Any] | None = None
    """Each event's own headers (its W3C trace context); None when no event has any."""

    def __len__(self) -> int:
        return len(self.request_id)

    @classmethod
    def of(
        cls, events: Sequence[PredictionLogged], contexts: Sequence[Mapping[str, str]] | None = None
    ) -> PredictionColumns:
        """``events`` (of one endpoint version) as columns; ``contexts``: their trace headers."""
        first = events[0]
        return cls(
            first.endpoint, first.endpoint_id, first.version, first.occurred_at,
            [e.request_id for e in events], [e.received_at.timestamp() for e in events],
            [e.latency_ms for e in events], [e.status for e in events],
            [e.input for e in events], [e.output for e in events], [e.error for e in events],
            [e.trace_id for e in events], None if contexts is None else list(contexts),
        )  # fmt: skip

    def part(self, start: int, stop: int) -> PredictionColumns:
        """The events ``start:stop``."""
        return PredictionColumns(
            self.endpoint, self.endpoint_id, self.version, self.occurred_at,
            self.request_id[start:stop], self.received_at[start:stop],
            self.latency_ms[start:stop], self.status[start:stop], self.input[start:stop],
            self.output[start:stop], self.error[start:stop], self.trace_id[start:stop],
            None if self.headers is None else self.headers[start:stop],
        )  # fmt: skip

    def without(self, indexes: set[int]) -> PredictionColumns:
        """These columns but the events at ``indexes``."""
        keep = [i for i in range(len(self)) if i not in indexes]

        def pick(column: list[Any]) -> list[Any]:
            return [column[i] for i in keep]

        return PredictionColumns(
            self.endpoint, self.endpoint_id, self.version, self.occurred_at,
            pick(self.request_id), pick(self.received_at), pick(self.latency_ms),
            pick(self.status), pick(self.input), pick(self.output), pick(self.error),
            pick(self.trace_id), None if self.headers is None else pick(self.headers),
        )  # fmt: skip


_COLUMNS = (
    "request_id", "received_at", "latency_ms", "status", "input", "output", "error", "trace_id",
)  # fmt: skip


def prediction_pack(columns: PredictionColumns) -> tuple[Pack | None, list[tuple[str, str]]]:
    """The column pack of ``columns``, and the (request id, reason) of events left out.

    One ``orjson.dumps`` for the whole pack: a replica spends well under a microsecond per
    event here, where an event of its own (``prediction_body``) cost two, and the pack is a
    third of their bytes. A value orjson cannot write (an integer past 64 bits, a dict with
    non-string keys) sends the pack through pydantic's encoder; an event that is not JSON at
    all is left out. None when no event is left.
    """
    left_out: list[tuple[str, str]] = []
    try:
        payload = _encode_columns(columns)
    except ValueError:
        refused: set[int] = set()
        for index, pair in enumerate(zip(columns.input, columns.output, strict=True)):
            try:
                to_json(pair)
            except ValueError as exc:
                refused.add(index)
                left_out.append((str(columns.request_id[index]), f"not JSON: {exc}"))
        columns = columns.without(refused)
        if not len(columns):
            return None, left_out
        payload = _encode_columns(columns)
    count = len(columns)
    headers = {
        EVENT_TYPE_HEADER: PredictionLogged.event_type,
        PACK_HEADER: str(count),
        LAYOUT_HEADER: COLUMNS_LAYOUT,
        # Re-sent as it is after a lost ack, so JetStream stores it once.
        MSG_ID_HEADER: f"pack-{getrandbits(128):032x}",
    }

    def split() -> list[Pack]:
        half = count // 2
        if not half:
            return []
        parts = (columns.part(0, half), columns.part(half, count))
        return [pack for pack, _ in map(prediction_pack, parts) if pack is not None]

    return Pack(PredictionLogged.event_type, payload, headers, count, split), left_out


def _encode_columns(columns: PredictionColumns) -> bytes:
    """The pack's JSON body; ``ValueError`` if a value is not JSON."""
    body: dict[str, Any] = {
        "endpoint": columns.endpoint,
        "endpoint_id": columns.endpoint_id,
        "version": columns.version,
        "occurred_at": columns.occurred_at,
    }
    for name in _COLUMNS:
        body[name] = getattr(columns, name)
    if columns.headers is not None:
        body["headers"] = columns.headers
    try:
        return orjson.dumps(body, option=orjson.OPT_UTC_Z)
    except TypeError:
        return to_json(body)


def read_prediction_columns(data: bytes, headers: Mapping[str, str]) -> PredictionColumns:
    """The columns of a column pack, values unchecked; ``EventDecodeError`` if malformed.

    Read with pydantic-core's parser, as ``PredictionLogged`` reads an event: orjson would
    turn integers past 64 bits into floats.
    """
    count = pack_size(headers)
    try:
        body = from_json(data)
    except ValueError as exc:
        raise EventDecodeError(f"malformed pack: not JSON ({exc})") from exc
    if type(body) is not dict:
        raise EventDecodeError("malformed pack: its body is not a JSON object")
    columns: dict[str, list[Any]] = {}
    for name in _COLUMNS:
        column = body.get(name)
        if type(column) is not list or len(column) != count:
            raise EventDecodeError(
                f"malformed pack: column {name!r} does not hold the {count} event(s) the "
                "header says",
                event_type=PredictionLogged.event_type,
            )
        columns[name] = column
    own = body.get("headers")
    if own is not None and (type(own) is not list or len(own) != count):
        raise EventDecodeError("malformed pack: column 'headers' does not match the count")
    return PredictionColumns(
        body.get("endpoint"), body.get("endpoint_id"), body.get("version"),
        body.get("occurred_at"), headers=own, **columns,
    )  # fmt: skip


def column_event_id(headers: Mapping[str, str], index: int) -> str:
    """The event id of the ``index``-th event of a column pack (its pack's id, numbered)."""
    return f"{headers.get(MSG_ID_HEADER, 'pack')}-{index}"


def expand_prediction_pack(
    data: bytes, headers: Mapping[str, str]
) -> list[tuple[bytes, Mapping[str, str]]]:
    """A column pack as one ``PredictionLogged`` body and headers per event, for ``unpack``.

    A value the model refuses (a missing timestamp...) still gives its event a body, which
    fails to decode on its own; ``EventDecodeError`` if the pack itself is malformed.
    """
    columns = read_prediction_columns(data, headers)
    base = {EVENT_TYPE_HEADER: PredictionLogged.event_type}
    own = columns.headers
    out: list[tuple[bytes, Mapping[str, str]]] = []
    for index in range(len(columns)):
        received = columns.received_at[index]
        if type(received) in (int, float):
            # Out of range: left as it is, for the model to refuse.
            with contextlib.suppress(OverflowError, OSError, ValueError):
                received = datetime.fromtimestamp(received, UTC)
        fields = {
            "event_id": column_event_id(headers, index),
            "occurred_at": columns.occurred_at,
            "request_id": columns.request_id[index],
            "endpoint": columns.endpoint,
            "endpoint_id": columns.endpoint_id,
            "version": columns.version,
            "input": columns.input[index],
            "output": columns.output[index],
            "error": columns.error[index],
            "status": columns.status[index],
            "latency_ms": columns.latency_ms[index],
            "received_at": received,
            "trace_id": columns.trace_id[index],
        }
        try:
            body = orjson.dumps(fields, option=orjson.OPT_UTC_Z)
        except TypeError:
            body = to_json(fields)
        extra = own[index] if own is not None else None
        if type(extra) is dict and extra and all(type(v) is str for v in extra.values()):
            out.append((body, base | extra))
        else:
            out.append((body, base))
    return out
