"""Turn whatever predict returned into plain JSON values, or refuse it clearly.

Conversions (documented for users):

- numpy scalars and arrays, and anything else with ``dtype`` and ``tolist()`` (torch tensors,
  pandas Series), via ``tolist()``;
- tuples, sets, ranges and other non-string iterables become lists;
- mapping keys become strings (``True`` → ``"true"``, ``None`` → ``"null"``, numbers via ``str``);
- ``bytes`` become text when they are valid UTF-8, otherwise a Base64 string;
- dataclasses and pydantic models become objects, enums their value, dates and times ISO
  8601 strings, ``Decimal`` a float, ``UUID`` and paths a string;
- non-finite floats (NaN, ±inf) become ``null``: JSON has no spelling for them.

A web framework response (Flask, Starlette, Django, ...) is refused: the worker builds the
HTTP response itself.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import enum
import math
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any, TypeAlias

from cormorant.common.errors import InvalidPrediction

JSONValue: TypeAlias = "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"

# Deep enough for any real prediction, shallow enough to catch a self-referencing structure.
MAX_DEPTH = 100

_SCALARS = (str, int, float, bool, type(None), list, dict, tuple)
_RESPONSE_CLASS_NAMES = frozenset(
    {"Response", "HttpResponse", "HttpResponseBase", "StreamingHttpResponse", "StreamingResponse"}
)


class PredictionTooDeep(InvalidPrediction):
    """predict returned lists or objects nested deeper than ``MAX_DEPTH`` (or a cycle).

    422, not 500: the platform did nothing wrong and retrying cannot help; the answer names
    the limit so the model's author knows what to change.
    """

    status_code = 422
    code = "prediction_too_deep"

    def __init__(self, path: str) -> None:
        root = path.split("[", 1)[0]
        super().__init__(
            f"{root} is nested deeper than {MAX_DEPTH} levels of lists or objects (or holds "
            f"a cycle); return a structure at most {MAX_DEPTH} levels deep",
            details={"max_depth": MAX_DEPTH},
        )


def is_response_object(value: object) -> bool:
    """Whether ``value`` looks like a web framework's HTTP response rather than data."""
    if isinstance(value, _SCALARS):
        return False
    if any(cls.__name__ in _RESPONSE_CLASS_NAMES for cls in type(value).__mro__):
        return True
    return hasattr(value, "status_code") and (hasattr(value, "headers") or hasattr(value, "body"))


def refuse_response(value: object, what: str = "predict") -> InvalidPrediction:
    """The error for a function that returned a framework response instead of data."""
    return InvalidPrediction(
        f"{what} returned a {type(value).__name__}: return the data, not a Response; "
        "the worker builds the HTTP response"
    )


def to_json(value: Any, what: str = "prediction") -> JSONValue:
    """``value`` as JSON types; ``InvalidPrediction`` names the part that cannot be sent."""
    return _convert(value, what, 0)


def bytes_to_json(data: bytes | bytearray | memoryview) -> str:
    """UTF-8 text when ``data`` decodes cleanly, otherwise its Base64 encoding."""
    raw = bytes(data)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii")


def _convert(value: Any, path: str, depth: int) -> JSONValue:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value  # type: ignore[no-any-return]
    if kind is float:
        return value if math.isfinite(value) else None
    if isinstance(value, enum.Enum):
        return _convert(value.value, path, depth + 1)
    # Subclasses (numpy.float64, numpy.str_, IntFlag...) become the plain type serializers expect.
    for plain in (bool, int, float, str):
        if isinstance(value, plain):
            return _convert(plain(value), path, depth)
    if depth >= MAX_DEPTH:
        raise PredictionTooDeep(path)
    if isinstance(value, list | tuple):
        return [_convert(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        return {
            _key(key, path): _convert(item, f"{path}[{key!r}]", depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes_to_json(value)
    if hasattr(value, "dtype") and callable(getattr(value, "tolist", None)):
        return _convert(value.tolist(), path, depth + 1)
    if is_response_object(value):
        raise refuse_response(value)
    return _convert_object(value, path, depth)


def _convert_object(value: Any, path: str, depth: int) -> JSONValue:
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return _convert(float(value), path, depth + 1)
    if isinstance(value, uuid.UUID | PurePath):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return _convert(fields, path, depth + 1)
    if callable(getattr(value, "model_dump", None)) and not isinstance(value, type):
        return _convert(value.model_dump(mode="json"), path, depth + 1)
    if isinstance(value, Iterable) and not isinstance(value, str | type):
        return [_convert(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise InvalidPrediction(
        f"{path} is a {type(value).__module__}.{type(value).__qualname__}, which cannot be "
        "sent as JSON: return lists, dicts, strings, numbers, booleans, None or numpy values"
    )


def _key(key: Any, path: str) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return {None: "null", True: "true", False: "false"}[key]
    if isinstance(key, int | float):
        return str(key)
    if hasattr(key, "dtype") and callable(getattr(key, "item", None)):
        return _key(key.item(), path)
    if isinstance(key, enum.Enum):
        return _key(key.value, path)
    raise InvalidPrediction(
        f"{path} has a key of type {type(key).__name__}; JSON object keys must be strings"
    )
