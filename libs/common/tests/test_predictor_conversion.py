"""Converting predict results to JSON values."""

from __future__ import annotations

import datetime
import enum
import math
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel

from cormorant.common.errors import InvalidPrediction
from cormorant.common.predictor import is_response_object, to_json


class Color(enum.Enum):
    RED = "red"


@dataclass
class Point:
    x: float
    y: np.float64


class Label(BaseModel):
    name: str
    score: float


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({1: "a", None: "b", False: "c"}, {"1": "a", "null": "b", "false": "c"}),
        ({np.int64(2): 1}, {"2": 1}),
        (frozenset({3}), [3]),
        (range(3), [0, 1, 2]),
        (Color.RED, "red"),
        (datetime.date(2024, 1, 2), "2024-01-02"),
        (Decimal("1.25"), 1.25),
        (Point(1.0, np.float64(2.0)), {"x": 1.0, "y": 2.0}),
        (Label(name="a", score=0.5), {"name": "a", "score": 0.5}),
        (np.str_("text"), "text"),
        (float("nan"), None),
        ([math.inf, -math.inf], [None, None]),
    ],
)
def test_values_convert_to_plain_json(value: Any, expected: Any) -> None:
    """Common Python, numpy and pydantic values become plain JSON types."""
    assert to_json(value) == expected


def test_uuid_becomes_its_string() -> None:
    """UUIDs are sent as their canonical string."""
    value = uuid.UUID(int=1)
    assert to_json(value) == str(value)


def test_plain_json_types_come_back_as_the_same_types() -> None:
    """Subclasses of JSON types (numpy floats, str subclasses) come back as the plain type."""
    converted = to_json([np.float64(0.5), np.str_("s"), True, None])
    assert [type(v) for v in converted] == [float, str, bool, type(None)]  # type: ignore[union-attr]


def test_a_self_referencing_result_is_refused() -> None:
    """A cycle cannot be sent; it is refused instead of recursing forever."""
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(InvalidPrediction, match="nested deeper"):
        to_json(loop)


def test_unhashable_object_keys_are_refused() -> None:
    """Object keys that cannot become strings are refused with the reason."""
    with pytest.raises(InvalidPrediction, match="keys must be strings"):
        to_json({(1, 2): "pair"})


def test_data_is_not_mistaken_for_a_response() -> None:
    """Dicts with status_code keys are data, not framework responses."""
    assert not is_response_object({"status_code": 200, "headers": {}})
