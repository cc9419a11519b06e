"""Named inputs as predict arguments (the Open Inference Protocol's rows)."""

from __future__ import annotations

from typing import Any

import pytest

from cormorant.common.errors import InvalidPrediction
from cormorant.common.predictor import ArgumentsDoNotFit, FunctionRaised, InvalidInput, Predictor
from cormorant.common.predictor.arguments import (
    NamedInput,
    predict_named,
    signature_inputs,
    signature_outputs,
)


def iris(sepal: float, petal: float, scale: float = 1.0) -> float:
    return (sepal + petal) * scale


def test_inputs_named_like_parameters_are_passed_by_name() -> None:
    """Names that are parameters: each row's values by name; parameters by keyword."""
    inputs = [NamedInput("petal", [1.0, 2.0]), NamedInput("sepal", [10.0, 20.0])]
    assert predict_named(Predictor(iris), inputs, {"scale": 2, "other": 1}) == [22.0, 44.0]


def test_unnamed_inputs_are_positional_and_one_row_is_spread() -> None:
    """One input's row [a, b] is predict(a, b); several inputs are arguments in order."""
    assert predict_named(Predictor(iris), [NamedInput("x", [[1.0, 2.0], [3.0, 4.0]])], {}) == [
        3.0,
        7.0,
    ]
    columns = [NamedInput("INPUT0", [1.0]), NamedInput("INPUT1", [2.0])]
    assert predict_named(Predictor(iris), columns, {}) == [3.0]
    assert predict_named(Predictor(lambda x: x * 2), [NamedInput("x", [1, 2])], {}) == [2, 4]


def test_the_first_failing_row_fails_with_its_own_status() -> None:
    """A row that does not bind is a 400; a raising row a 500; both name the row."""
    with pytest.raises(ArgumentsDoNotFit, match=r"row 1: the input does not fit predict\(") as a:
        predict_named(Predictor(iris), [NamedInput("x", [[1.0, 2.0], [1.0]])], {})
    assert a.value.status_code == 400

    def fragile(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x

    with pytest.raises(FunctionRaised, match="row 2: ValueError: negative"):
        predict_named(Predictor(fragile), [NamedInput("x", [1, 2, -1])], {})
    with pytest.raises(InvalidInput, match="same first"):
        predict_named(Predictor(iris), [NamedInput("a", [1]), NamedInput("b", [1, 2])], {})


def test_batch_capable_predict_gets_the_rows_once() -> None:
    """predict(rows) once, each row the list of its positional values; one value per row."""
    calls: list[Any] = []

    def batch(rows: list[list[float]], scale: float = 1.0) -> list[float]:
        calls.append(rows)
        return [sum(row) * scale for row in rows]

    inputs = [NamedInput("a", [1.0, 2.0]), NamedInput("b", [10.0, 20.0])]
    assert predict_named(Predictor(batch), inputs, {"scale": 10}, batch=True) == [110.0, 220.0]
    assert calls == [[[1.0, 10.0], [2.0, 20.0]]]
    features = [NamedInput("features", [[1.0, 2.0], [3.0, 4.0]])]
    assert predict_named(Predictor(batch), features, {}, batch=True) == [3.0, 7.0]
    assert calls[-1] == [[1.0, 2.0], [3.0, 4.0]]
    with pytest.raises(InvalidPrediction, match="one value per row: got 1 for 2"):
        predict_named(Predictor(lambda rows: [1]), inputs, {}, batch=True)


def test_signature_as_metadata() -> None:
    """Annotated parameters are typed; the return annotation types the prediction."""
    assert signature_inputs(Predictor(iris), batch=False) == [
        {"name": "sepal", "datatype": "FP64", "shape": [-1]},
        {"name": "petal", "datatype": "FP64", "shape": [-1]},
        {"name": "scale", "datatype": "FP64", "shape": [-1]},
    ]
    assert signature_outputs(Predictor(iris)) == [
        {"name": "prediction", "datatype": "FP64", "shape": [-1]}
    ]
    assert signature_inputs(Predictor(lambda *features: 1), batch=False) == [
        {"name": "features", "datatype": "BYTES", "shape": [-1, -1]}
    ]
