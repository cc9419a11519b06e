"""Predict message values with the product's contract: bytes in, one output message out.

- Each message value reaches predict as ``bytes`` (through preprocess when there is one).
- A result is JSON-encoded into the output message; a ``bytes`` result is the output message
  as it is (it is logged as text, or Base64 when it is not UTF-8).
- A generator result is collected: the output message is the JSON array of its chunks.
- A function that raises is tried again (``tries`` attempts in all, with a doubling pause);
  input the function cannot be given (no value, a file too large) and results that cannot be
  encoded fail at once. Either way the message becomes a :class:`Failed` outcome that goes
  to the dead-letter topic.

Everything here blocks: the bridge runs it on its predict threads, never on the event loop.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from cormorant.common.errors import CormorantError, InvalidPrediction
from cormorant.common.predictor import (
    ChunkStream,
    FileTooLarge,
    FunctionRaised,
    InvalidInput,
    JSONValue,
    Predictor,
)
from cormorant.common.retry import Backoff

# Longest error message carried in a dead-letter header: enough for a traceback's last line.
MAX_ERROR_CHARS: Final = 1_000

_raw = threading.local()


@dataclass(slots=True)
class Predicted:
    """A message predict succeeded on."""

    payload: bytes
    """The output message value."""
    output: JSONValue | bytes
    """The prediction: JSON values, or the ``bytes`` predict returned (the payload itself)."""
    seconds: float
    """Time spent on this message, retries included."""
    attempts: int


@dataclass(slots=True)
class Failed:
    """A message that goes to the dead-letter topic."""

    error_type: str
    """The exception's class name (the user's own for a function that raised)."""
    message: str
    stage: str
    """Where it failed: ``input``, ``preprocess``, ``predict`` or ``output``."""
    seconds: float
    attempts: int


Outcome = Predicted | Failed


class BatchPredictor:
    """Runs a loaded predictor over message values, one outcome per value."""

    def __init__(self, predictor: Predictor, *, tries: int = 3, backoff: float = 0.01) -> None:
        if tries < 1:
            raise ValueError("tries must be at least 1")
        # A copy whose predict keeps a bytes result as it is: the predictor would convert it.
        self._predictor = Predictor(
            _keep_bytes(predictor.predict_function),
            preprocess=predictor.preprocess_function,
            accepts_file=predictor.accepts_file,
            max_file_bytes=predictor.max_file_bytes,
            temp_dir=predictor.temp_dir,
        )
        self.tries = tries
        self._backoff = Backoff(backoff, cap=backoff * 2**tries)

    def predict_all(self, values: Sequence[bytes | None]) -> list[Outcome]:
        """One outcome per value, in order."""
        return [self.predict_one(value) for value in values]

    def predict_one(self, value: bytes | None) -> Outcome:
        """Predict ``value``, trying again while the function raises."""
        started = time.perf_counter()
        if value is None:
            return Failed("EmptyValue", "the message has no value (a tombstone)", "input", 0.0, 0)
        attempt = 0
        while True:
            attempt += 1
            try:
                payload, output = self._attempt(value)
            except FunctionRaised as exc:
                if attempt < self.tries:
                    time.sleep(self._backoff.delay(attempt))
                    continue
                return _failed(
                    exc.exception_type, exc.exception_message, exc.stage, started, attempt
                )
            except (InvalidInput, FileTooLarge) as exc:
                return _failed(type(exc).__name__, exc.message, "input", started, attempt)
            except CormorantError as exc:
                return _failed(type(exc).__name__, exc.message, "output", started, attempt)
            except Exception as exc:  # an output no encoder takes must not stop the stream
                return _failed(type(exc).__name__, str(exc), "output", started, attempt)
            return Predicted(payload, output, time.perf_counter() - started, attempt)

    def _attempt(self, value: bytes) -> tuple[bytes, JSONValue | bytes]:
        _raw.value = None
        outcome = self._predictor.predict(value)
        raw: bytes | None = _raw.value
        if raw is not None:
            _raw.value = None
            return raw, raw
        if isinstance(outcome, ChunkStream):
            with outcome:
                result: JSONValue = list(outcome)
        else:
            result = outcome.value
        return encode(result), result


def encode(value: JSONValue) -> bytes:
    """The JSON encoding of a prediction (already converted to JSON values)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        # orjson refuses integers beyond 64 bits, which JSON itself allows.
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidPrediction(f"the prediction cannot be encoded as JSON: {exc}") from exc


def _failed(error_type: str, message: str, stage: str, started: float, attempts: int) -> Failed:
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return Failed(error_type, message, stage, time.perf_counter() - started, attempts)


def _keep_bytes(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, with a ``bytes`` result set aside for this thread and ``None`` returned."""

    @functools.wraps(function)
    def predict(*args: Any) -> Any:
        result = function(*args)
        if type(result) is bytes:  # the common case first: a plain type check is cheapest
            _raw.value = result
            return None
        # The contract's own test (not asyncio.iscoroutine, which takes generators too).
        if isinstance(result, Coroutine):
            return _set_aside_awaited(result)
        return _set_aside(result)

    return predict


def _set_aside(result: Any) -> Any:
    if isinstance(result, bytes | bytearray | memoryview):
        _raw.value = bytes(result)
        return None
    return result


async def _set_aside_awaited(result: Coroutine[Any, Any, Any]) -> Any:
    return _set_aside(await result)
