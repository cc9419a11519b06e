"""Predict many rows at once, as batch jobs do: one result per row, a raising row isolated.

Each row is an input list, called with the product's semantics (``predict(*row)``). A version
that declares a batch-capable predict (``CORMORANT_PREDICT_BATCH=true`` in its ``env``) is
called once per chunk instead, ``predict(rows)``, and must return one value per row; if that
call raises, the chunk is predicted again row by row so only the raising rows carry an error.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Mapping, Sequence
from typing import Any

from cormorant.common.errors import CormorantError
from cormorant.common.predictor.contract import FunctionRaised
from cormorant.common.predictor.conversion import is_response_object, refuse_response, to_json
from cormorant.common.predictor.invocation import ChunkStream, Prediction, Predictor, spread

log = logging.getLogger(__name__)

BATCH_ENV = "CORMORANT_PREDICT_BATCH"
"""The ``env`` key that declares a version's predict batch-capable (``true``)."""

_PLAIN = (str, int, bool, type(None))
_SCALARS = frozenset((str, int, bool, float, type(None)))
_NUMBERS = frozenset((int, float))
RowResult = dict[str, Any]
"""``{"prediction": value}`` or ``{"error": "Type: message"}``."""


LOG_AS_HEADER = "Cormorant-Log-As"
"""Header of a batch chunk whose rows the replica also records in the prediction log: the
request id prefix of its rows (the job's id); each row's id is ``<prefix>-<row number>``."""
FIRST_ROW_HEADER = "Cormorant-First-Row"
"""Header of such a chunk: the number of its first row in the job's input (from 1)."""


def declares_batch(env: Mapping[str, str]) -> bool:
    """True if an endpoint's ``env`` declares its predict batch-capable."""
    return env.get(BATCH_ENV, "").strip().lower() in ("1", "true", "yes")


def predict_rows(
    predictor: Predictor, rows: Sequence[Any], *, batch: bool = False
) -> list[RowResult]:
    """One result per row, in order; blocks, so call it off the event loop."""
    if batch and rows:
        results = _predict_chunk(predictor, rows)
        if results is not None:
            return results
    if predictor.preprocess_function is None and not predictor.accepts_file:
        return _plain_rows(predictor.predict_function, rows)
    return [predict_row(predictor, row) for row in rows]


def predict_columns(
    predictor: Predictor, columns: Sequence[Sequence[Any]], rows: int, *, batch: bool = False
) -> tuple[list[Any], list[str | None]]:
    """``predict_rows`` for rows given as columns: per row, its prediction and its error.

    A prediction is a JSON value (``None`` for a row that failed); an error is ``None`` for a
    row that was predicted. Blocks, so call it off the event loop.
    """
    if batch and rows:
        values = _chunk_values(predictor, rows_of(columns, rows))
        if values is not None:
            return values, [None] * rows
    if columns and predictor.preprocess_function is None and not predictor.accepts_file:
        return _plain_columns(predictor.predict_function, columns, rows)
    results = predict_rows(predictor, rows_of(columns, rows))
    return [r.get("prediction") for r in results], [r.get("error") for r in results]


def rows_of(columns: Sequence[Sequence[Any]], rows: int) -> list[list[Any]]:
    """The rows as lists, as JSON decoding gives them."""
    if not columns:
        return [[] for _ in range(rows)]
    return [list(row) for row in zip(*columns, strict=True)]


def _plain_columns(
    function: Callable[..., Any], columns: Sequence[Sequence[Any]], rows: int
) -> tuple[list[Any], list[str | None]]:
    # predict(*row) through map(), which passes a row's values without building a tuple per
    # row; a raising row stops map() right after that row, so the loop resumes with the next.
    values: list[Any] = []
    errors: list[str | None] = [None] * rows
    arguments = [iter(column) for column in columns]
    while len(values) < rows:
        try:
            values.extend(map(function, *arguments))
        except CormorantError as exc:
            errors[len(values)] = exc.message
            values.append(None)
        except (Exception, SystemExit) as exc:
            errors[len(values)] = FunctionRaised("predict", exc).message
            values.append(None)
        else:
            if len(values) < rows:
                # map() ends quietly when predict raises StopIteration (its message is lost).
                errors[len(values)] = FunctionRaised("predict", StopIteration()).message
                values.append(None)
    if _all_json(values):
        return values, errors
    for index, value in enumerate(values):
        kind = type(value)
        if kind in _PLAIN or (kind is float and math.isfinite(value)):
            continue
        result = _converted(value)
        values[index] = result.get("prediction")
        errors[index] = result.get("error")
    return values, errors


def _all_json(values: Sequence[Any]) -> bool:
    """True if every value is a plain JSON scalar (a float finite): ``to_json`` keeps it."""
    kinds = set(map(type, values))
    if float not in kinds:
        return kinds <= _SCALARS
    # Floats sum to a finite number only if each one is finite (an overflowing sum is a
    # false alarm: the caller converts every value, which gives the same answer).
    try:
        return kinds <= _NUMBERS and math.isfinite(sum(values))
    except OverflowError:  # an int too large for a float
        return False


def _plain_rows(function: Callable[..., Any], rows: Sequence[Any]) -> list[RowResult]:
    # The common case without a preprocess or file input: the same semantics as
    # ``Predictor.predict`` without its per-call set-up, which costs more than a cheap predict.
    results: list[RowResult] = []
    append = results.append
    for row in rows:
        try:
            value = function(*row) if type(row) is list else function(*spread(row))
        except CormorantError as exc:
            append({"error": exc.message})
            continue
        except (Exception, SystemExit) as exc:
            append({"error": FunctionRaised("predict", exc).message})
            continue
        kind = type(value)
        if kind in _PLAIN or (kind is float and math.isfinite(value)):
            append({"prediction": value})
        else:
            append(_converted(value))
    return results


def _converted(value: Any) -> RowResult:
    """A non-plain predict result as a row result, as ``Predictor.predict`` converts it."""
    try:
        if isinstance(value, Coroutine):
            value = asyncio.run(value)
        if isinstance(value, Generator | AsyncIterator):
            if isinstance(value, Generator):
                value.close()
            return {"error": "predict returned a generator; a batch job needs one value per row"}
        if is_response_object(value):
            raise refuse_response(value)
        return {"prediction": to_json(value)}
    except CormorantError as exc:
        return {"error": exc.message}
    except (Exception, SystemExit) as exc:
        return {"error": FunctionRaised("predict", exc).message}


def predict_row(predictor: Predictor, row: Any) -> RowResult:
    """The prediction for one row's input, or the error it raised."""
    try:
        outcome = predictor.predict(row)
    except CormorantError as exc:
        return {"error": exc.message}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(outcome, ChunkStream):
        outcome.close()
        return {"error": "predict returned a generator; a batch job needs one value per row"}
    assert isinstance(outcome, Prediction)
    return {"prediction": outcome.value}


def _predict_chunk(predictor: Predictor, rows: Sequence[Any]) -> list[RowResult] | None:
    values = _chunk_values(predictor, rows)
    return None if values is None else [{"prediction": value} for value in values]


def _chunk_values(predictor: Predictor, rows: Sequence[Any]) -> list[Any] | None:
    # None: fall back to row by row (the chunk raised or answered in the wrong shape).
    function = predictor.predict_function
    try:
        values = function(list(rows))
        if not isinstance(values, Sequence) or isinstance(values, str | bytes):
            values = list(values)
        if len(values) != len(rows):
            log.warning("batch predict returned %d values for %d rows", len(values), len(rows))
            return None
        if _all_json(values):
            return list(values)
        return [to_json(value) for value in values]
    except Exception as exc:
        log.info("batch predict raised (%s: %s); predicting row by row", type(exc).__name__, exc)
        return None
