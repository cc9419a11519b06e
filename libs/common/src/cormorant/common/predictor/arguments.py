"""Named inputs as predict arguments, and predict's signature as named inputs.

The Open Inference Protocol sends named tensors whose first dimension is the batch. Each row
becomes one call:

- when every input is named like a parameter of the function that first sees the input
  (preprocess if there is one, else predict), each input's row value is that argument
  (``predict(sepal_length=..., petal_width=...)``);
- otherwise one input's row is spread as the product's contract spreads a list
  (``predict(*row)``: a ``[N, 3]`` tensor calls ``predict(a, b, c)``, a ``[N]`` tensor
  ``predict(x)``), and several inputs are positional arguments in the order sent;
- request ``parameters`` whose names are keyword parameters of that function (and not inputs)
  are passed by keyword to every call.

A batch-capable predict (``CORMORANT_PREDICT_BATCH``) is called once with the list of rows, each
row the list of its positional values, as batch jobs call it. A call whose arguments do not
bind to the function's signature is the caller's mistake: ``ArgumentsDoNotFit``, a 400.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cormorant.common.errors import CormorantError, InvalidPrediction
from cormorant.common.predictor.contract import (
    FunctionRaised,
    InvalidInput,
    check_binding,
    signature_of,
)
from cormorant.common.predictor.conversion import JSONValue, to_json
from cormorant.common.predictor.invocation import ChunkStream, Prediction, Predictor

_NAMED_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
_DATATYPES: Mapping[Any, str] = {
    bool: "BOOL", int: "INT64", float: "FP64", str: "BYTES", bytes: "BYTES",
    "bool": "BOOL", "int": "INT64", "float": "FP64", "str": "BYTES", "bytes": "BYTES",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class NamedInput:
    """One named input: its value for each row of the request."""

    name: str
    rows: Sequence[Any]


@dataclass(slots=True)
class CallPlan:
    """How each row of a request becomes the arguments of one call."""

    names: list[str]
    by_name: bool
    keywords: dict[str, Any] = field(default_factory=dict)
    """Request parameters passed by keyword to every call."""

    def row_arguments(self, values: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Positional and keyword arguments of one row (one value per input)."""
        if self.by_name:
            return (), {**self.keywords, **dict(zip(self.names, values, strict=True))}
        if len(values) == 1:
            only = values[0]
            return (tuple(only) if isinstance(only, list) else (only,)), dict(self.keywords)
        return tuple(values), dict(self.keywords)


def plan_calls(
    predictor: Predictor, names: Sequence[str], parameters: Mapping[str, Any], *, batch: bool
) -> CallPlan:
    """The call plan for inputs named ``names`` and the request's ``parameters``."""
    entry = predictor.preprocess_function or predictor.predict_function
    signature = signature_of(predictor.predict_function if batch else entry)
    named: set[str] = set()
    if signature is not None:
        named = {p.name for p in signature.parameters.values() if p.kind in _NAMED_KINDS}
    by_name = (
        not batch
        and not predictor.accepts_file
        and bool(names)
        and all(name in named for name in names)
    )
    keywords = {k: v for k, v in parameters.items() if k in named and k not in names}
    return CallPlan(list(names), by_name, keywords)


def predict_named(
    predictor: Predictor,
    inputs: Sequence[NamedInput],
    parameters: Mapping[str, Any],
    *,
    batch: bool = False,
) -> list[JSONValue]:
    """One prediction per row of ``inputs``; the first failing row's error is raised.

    Its message names the row when there are several. Blocks: call it off the event loop.
    """
    count = check_rows(inputs)
    plan = plan_calls(predictor, [i.name for i in inputs], parameters, batch=batch)
    rows = [[column.rows[index] for column in inputs] for index in range(count)]
    if batch:
        return predict_chunk(predictor, batch_rows(plan, rows), plan.keywords)
    values: list[JSONValue] = []
    for index, row in enumerate(rows):
        args, kwargs = plan.row_arguments(row)
        try:
            outcome = predictor.call(args, kwargs)
            if isinstance(outcome, ChunkStream):
                outcome.close()
                raise _GeneratorResult()
        except CormorantError as exc:
            if count > 1:
                # The whole request fails with the row's own status; the message says which.
                exc.message = f"row {index}: {exc.message}"
                exc.args = (exc.message,)
                exc.details["row"] = index
            raise
        assert isinstance(outcome, Prediction)
        values.append(outcome.value)
    return values


def batch_rows(plan: CallPlan, rows: list[list[Any]]) -> list[list[Any]]:
    """Each row as the list of its positional values, as a batch-capable predict takes rows:
    one input's ``[a, b, c]`` row is ``[a, b, c]``, several inputs' values in order."""
    return [list(plan.row_arguments(row)[0]) for row in rows]


def check_rows(inputs: Sequence[NamedInput]) -> int:
    """The rows every input has; 400 if the inputs disagree or two share a name."""
    if not inputs:
        raise InvalidInput("the request has no inputs; send at least one")
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"input names must be unique, got {names}")
    counts = {i.name: len(i.rows) for i in inputs}
    if len(set(counts.values())) != 1:
        raise InvalidInput(
            f"every input needs the same first (batch) dimension, got {counts}",
            details={"rows": counts},
        )
    return len(inputs[0].rows)


def predict_chunk(
    predictor: Predictor, rows: list[list[Any]], keywords: Mapping[str, Any]
) -> list[JSONValue]:
    """A batch-capable predict's answer for ``rows``: one JSON value per row, or it raises."""
    function = predictor.predict_function
    try:
        values = function(rows, **keywords)
    except TypeError as exc:
        check_binding(function, (rows,), keywords, "predict")
        raise FunctionRaised("predict", exc) from exc
    except CormorantError:
        raise
    except (Exception, SystemExit) as exc:
        raise FunctionRaised("predict", exc) from exc
    try:
        values = list(values)
    except TypeError as exc:
        raise InvalidPrediction(
            f"a batch predict must return one value per row, not {type(values).__name__}"
        ) from exc
    if len(values) != len(rows):
        raise InvalidPrediction(
            f"a batch predict must return one value per row: got {len(values)} for "
            f"{len(rows)} row(s)"
        )
    return [to_json(value) for value in values]


def signature_inputs(predictor: Predictor, *, batch: bool) -> list[dict[str, Any]]:
    """The function's parameters as V2 tensor metadata (first dimension: the batch)."""
    if batch:
        return [{"name": "rows", "datatype": "BYTES", "shape": [-1, -1]}]
    if predictor.accepts_file:
        return [{"name": "file", "datatype": "BYTES", "shape": [-1]}]
    entry = predictor.preprocess_function or predictor.predict_function
    signature = signature_of(entry)
    if signature is None:
        return [{"name": "input", "datatype": "BYTES", "shape": [-1, -1]}]
    described = []
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            described.append({"name": parameter.name, "datatype": "BYTES", "shape": [-1, -1]})
            continue
        datatype = _DATATYPES.get(parameter.annotation, "BYTES")
        shape = [-1] if parameter.annotation in _DATATYPES else [-1, -1]
        described.append({"name": parameter.name, "datatype": datatype, "shape": shape})
    return described


def signature_outputs(predictor: Predictor) -> list[dict[str, Any]]:
    """The prediction as V2 tensor metadata, typed by predict's return annotation if any."""
    signature = signature_of(predictor.predict_function)
    annotation = signature.return_annotation if signature is not None else None
    datatype = _DATATYPES.get(annotation, "BYTES")
    return [{"name": "prediction", "datatype": datatype, "shape": [-1]}]


class _GeneratorResult(InvalidPrediction):
    def __init__(self) -> None:
        super().__init__(
            "predict returned a generator; the Open Inference Protocol needs one value per row "
            "(use POST /api/v1/endpoints/{slug}/predict to stream)"
        )
