"""Predict many rows at once, as batch jobs do: one result per row, a raising row isolated.

Each row is an input list, called with the product's semantics (``predict(*row)``). A version
that declares a batch-capable predict (``CORMORANT_PREDICT_BATCH=true`` in its ``env``) is
called once per chunk instead, ``predict(rows)``, and must return one value per row; if that
call raises, the chunk is predicted again row by row so only the raising rows carry an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from cormorant.common.errors import CormorantError
from cormorant.common.predictor.conversion import to_json
from cormorant.common.predictor.invocation import ChunkStream, Prediction, Predictor

log = logging.getLogger(__name__)

BATCH_ENV = "CORMORANT_PREDICT_BATCH"
"""The ``env`` key that declares a version's predict batch-capable (``true``)."""

RowResult = dict[str, Any]
"""``{"prediction": value}`` or ``{"error": "Type: message"}``."""


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
    return [predict_row(predictor, row) for row in rows]


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
    # None: fall back to row by row (the chunk raised or answered in the wrong shape).
    function = predictor.predict_function
    try:
        values = function(list(rows))
        if not isinstance(values, Sequence) or isinstance(values, str | bytes):
            values = list(values)
        if len(values) != len(rows):
            log.warning("batch predict returned %d values for %d rows", len(values), len(rows))
            return None
        return [{"prediction": to_json(value)} for value in values]
    except Exception as exc:
        log.info("batch predict raised (%s: %s); predicting row by row", type(exc).__name__, exc)
        return None
