"""The Arrow form of ``POST /predict/batch``: rows as columns in, cells as columns out.

Batch jobs send a chunk of their CSV as an Arrow IPC stream (``ARROW_STREAM``) instead of
``{"rows": [...]}``, so neither side builds per-row JSON: the worker turns each column into
Python values (the same ``int``, ``float``, ``str``, ``bool`` and ``None`` that JSON decoding
gives) and answers two string columns, ``prediction`` (the output CSV's cell) and ``error``.

pyarrow is imported lazily: only the services that call these functions (the deployer and
the worker) depend on it, and a worker that never runs a batch job never imports it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import orjson

from cormorant.common.errors import BadRequest

if TYPE_CHECKING:
    import pyarrow as pa

ARROW_STREAM = "application/vnd.apache.arrow.stream"
"""Media type of an Arrow IPC stream (requests and answers of the columnar batch path)."""

_VERSION_KEY = b"cormorant.version"


def sendable(schema: pa.Schema) -> bool:
    """True if every column is a type whose values JSON would carry unchanged.

    Integers, floats, strings, booleans and nulls; a chunk with another type (a timestamp, a
    date, a decimal) goes as JSON, which encodes those values as it always has.
    """
    import pyarrow as pa

    return all(_plain_type(pa, field.type) for field in schema)


def encode_batch(batch: pa.RecordBatch) -> bytes:
    """A chunk as an Arrow IPC stream."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    body: bytes = sink.getvalue().to_pybytes()
    return body


def decode_columns(body: bytes) -> tuple[list[list[Any]], int]:
    """The columns of a request's Arrow stream as Python values, and the number of rows.

    Values are what JSON decoding would give: non-finite floats become ``None`` as they do
    in JSON. A body that is not an Arrow stream of plain columns → ``BadRequest``.
    """
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(body).read_all()
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise BadRequest(
            f"the request body is not an Arrow IPC stream ({exc}); send one record batch "
            f"per chunk with Content-Type: {ARROW_STREAM}, or JSON rows as application/json"
        ) from exc
    columns: list[list[Any]] = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if not _plain_type(pa, field.type):
            raise BadRequest(
                f"column {field.name!r} has type {field.type}; the Arrow batch path takes "
                "integer, floating point, string, boolean and null columns (send other "
                "types as JSON rows)"
            )
        values = column.to_pylist()
        if pa.types.is_floating(field.type):
            values = _finite(values, column.null_count)
        columns.append(values)
    return columns, table.num_rows


def prediction_cells(values: list[Any]) -> pa.Array:
    """Predictions as the output CSV's cells: a string as is, anything else as JSON.

    ``values`` are JSON values (a prediction as the worker converted it, ``None`` for a row
    that failed). Scalars of one kind, the common case, convert in C.
    """
    import pyarrow as pa

    try:
        predictions = pa.array(values)
        kind = predictions.type
        if not (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_string(kind)
            or pa.types.is_null(kind)
        ):
            raise TypeError(kind)
        cells: pa.Array = predictions.cast(pa.string())
        return cells
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        return pa.array([_cell(value) for value in values], pa.string())


def encode_results(values: list[Any], errors: list[str | None], version: str) -> bytes:
    """A chunk's answer: ``prediction`` cells and ``error`` messages, as an Arrow stream."""
    import pyarrow as pa

    batch = pa.RecordBatch.from_arrays(
        [prediction_cells(values), pa.array(errors, pa.string())],
        schema=pa.schema(
            [("prediction", pa.string()), ("error", pa.string())],
            metadata={_VERSION_KEY: version.encode()},
        ),
    )
    return encode_batch(batch)


def decode_results(body: bytes, rows: int) -> tuple[pa.Array, pa.Array]:
    """The ``prediction`` and ``error`` columns of an answer; ``ValueError`` if malformed."""
    import pyarrow as pa

    try:
        table = pa.ipc.open_stream(body).read_all()
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"the answer is not an Arrow stream ({exc})") from exc
    if table.schema.names != ["prediction", "error"] or not all(
        pa.types.is_string(field.type) for field in table.schema
    ):
        raise ValueError(f"the answer has columns {table.schema}, not prediction and error")
    if table.num_rows != rows:
        raise ValueError(f"the answer has {table.num_rows} results for {rows} rows")
    return _array(pa, table.column(0)), _array(pa, table.column(1))


def _finite(values: list[Any], nulls: int) -> list[Any]:
    """``values`` with non-finite floats as ``None``, as JSON carries them."""
    present = values if nulls == 0 else [value for value in values if value is not None]
    # Finite floats sum to a finite number (an overflowing sum is a false alarm: the exact
    # pass below gives the same answer).
    if math.isfinite(sum(present)):
        return values
    return [value if value is None or math.isfinite(value) else None for value in values]


def _array(pa: Any, column: pa.ChunkedArray) -> pa.Array:
    if column.num_chunks == 1:
        return column.chunk(0)
    return pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], pa.string())


def _plain_type(pa: Any, kind: pa.DataType) -> bool:
    types = pa.types
    return bool(
        types.is_integer(kind)
        or (types.is_floating(kind) and not types.is_float16(kind))
        or types.is_string(kind)
        or types.is_large_string(kind)
        or types.is_boolean(kind)
        or types.is_null(kind)
    )


def _cell(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()
