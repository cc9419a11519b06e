"""Call a user's predict function with the product's input semantics.

- The input is passed exactly as entered: a list is spread as positional arguments
  (``predict(*input)``); anything else (scalar, string, dict, ``None``, ``bytes``) is one
  argument. A preprocess function runs first with the same rule, and its output becomes
  predict's input by the same rule (a list or tuple is spread).
- With ``accepts_file`` the input is a Base64 string (a ``data:`` URL prefix is allowed) or raw
  ``bytes``; it is written to a temporary file whose path is passed, and the file is deleted
  once the prediction (or its stream) is finished.
- A generator or async generator result is a :class:`ChunkStream`; anything else is converted
  to JSON values (see :mod:`cormorant.common.predictor.conversion`).
- Everything here is synchronous and may block: callers run it off their event loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import logging
import os
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from cormorant.common.errors import CormorantError
from cormorant.common.predictor.contract import (
    DEFAULT_MAX_FILE_BYTES,
    FileTooLarge,
    FunctionRaised,
    InvalidInput,
    PredictorSpec,
    check_binding,
    check_spec,
)
from cormorant.common.predictor.conversion import (
    JSONValue,
    is_response_object,
    refuse_response,
    to_json,
)
from cormorant.common.predictor.loader import get_function, import_user_file

log = logging.getLogger(__name__)

# Extensions by leading bytes, so libraries that pick a decoder by file name still work.
_MAGIC_SUFFIXES: Final = (
    (b"\x89PNG\r\n\x1a\n", ".png"),
    (b"\xff\xd8\xff", ".jpg"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"%PDF", ".pdf"),
    (b"PK\x03\x04", ".zip"),
    (b"\x1f\x8b", ".gz"),
)


class _End(enum.Enum):
    END = 0


END: Final = _End.END
"""Returned by :meth:`ChunkStream.next_chunk` once the stream is exhausted."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """A complete (non-streamed) prediction, already converted to JSON values."""

    value: JSONValue


class ChunkStream(Iterator[JSONValue]):
    """The chunks of a generator result, each converted to JSON values as it is produced.

    Thread-safe: :meth:`next_chunk` and :meth:`close` may be called from any thread, one at a
    time is enforced. An async generator runs on a private event loop in the calling thread.
    """

    def __init__(
        self,
        source: Generator[Any, Any, Any] | AsyncIterator[Any],
        *,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._source = source
        self._on_close = on_close
        self._lock = threading.Lock()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def next_chunk(self) -> JSONValue | _End:
        """The next converted chunk, or :data:`END`; a raising generator → ``FunctionRaised``."""
        with self._lock:
            if self._closed:
                return END
            try:
                item = self._step()
            except (StopIteration, StopAsyncIteration):
                self._close_locked()
                return END
            except CormorantError:
                self._close_locked()
                raise
            except (Exception, SystemExit) as exc:
                self._close_locked()
                raise FunctionRaised("predict", exc) from exc
            try:
                if is_response_object(item):
                    raise refuse_response(item, "predict's generator")
                return to_json(item, "chunk")
            except CormorantError:
                self._close_locked()
                raise

    def close(self) -> None:
        """Stop the generator and delete the input file; safe to call more than once."""
        with self._lock:
            self._close_locked()

    def __next__(self) -> JSONValue:
        chunk = self.next_chunk()
        if chunk is END:
            raise StopIteration
        return chunk

    def __enter__(self) -> ChunkStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _step(self) -> Any:
        if isinstance(self._source, Generator):
            return next(self._source)
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(anext(self._source))

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if isinstance(self._source, Generator):
                self._source.close()
            elif self._loop is not None:
                aclose = getattr(self._source, "aclose", None)
                if aclose is not None:
                    self._loop.run_until_complete(aclose())
        except Exception:
            # The user's cleanup code failing must not hide the chunks already sent.
            log.exception("closing the predict generator raised")
        finally:
            if self._loop is not None:
                self._loop.close()
            if self._on_close is not None:
                self._on_close()


Outcome = Prediction | ChunkStream


class Predictor:
    """A loaded predict function (and optional preprocess) with the product's call semantics."""

    def __init__(
        self,
        predict: Callable[..., Any],
        *,
        preprocess: Callable[..., Any] | None = None,
        accepts_file: bool = False,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        temp_dir: Path | None = None,
    ) -> None:
        self.predict_function = predict
        self.preprocess_function = preprocess
        self.accepts_file = accepts_file
        self.max_file_bytes = max_file_bytes
        self.temp_dir = temp_dir

    @classmethod
    def load(cls, spec: PredictorSpec, *, temp_dir: Path | None = None) -> Predictor:
        """Import the functions ``spec`` names; contract errors say what is wrong and how."""
        check_spec(spec)
        predict_module = import_user_file(spec.source, spec.file)
        predict = get_function(predict_module, spec.function, spec.file)
        preprocess = None
        if spec.preprocess_function:
            pre_file = spec.preprocess_file or spec.file
            pre_module = (
                predict_module
                if Path(pre_file) == Path(spec.file)
                else import_user_file(spec.source, pre_file)
            )
            preprocess = get_function(pre_module, spec.preprocess_function, pre_file)
        return cls(
            predict,
            preprocess=preprocess,
            accepts_file=spec.accepts_file,
            max_file_bytes=spec.max_file_bytes,
            temp_dir=temp_dir,
        )

    def predict(self, input_value: Any) -> Outcome:
        """Run preprocess (if any) and predict on ``input_value``; blocks, so call it off-loop."""
        if self.accepts_file:
            return self._outcome((input_value,), {})
        return self._outcome(spread(input_value), {})

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
        """``predict`` with the arguments given as they are (named inputs); blocks too.

        With ``accepts_file`` the one argument is the file's Base64 (or bytes).
        """
        if self.accepts_file and (len(args) != 1 or kwargs):
            raise InvalidInput(
                "this endpoint takes a file: send exactly one input, the file's Base64 string"
            )
        return self._outcome(args, kwargs)

    def _outcome(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
        temp_files: list[Path] = []
        handed_over = False
        try:
            if self.accepts_file:
                args = (self._file_input(args[0], temp_files),)
            if self.preprocess_function is not None:
                value = _call(self.preprocess_function, args, kwargs, "preprocess")
                if is_response_object(value):
                    raise refuse_response(value, "preprocess")
                args, kwargs = spread(value), {}
            result = _call(self.predict_function, args, kwargs, "predict")
            if isinstance(result, Generator | AsyncIterator):
                handed_over = True
                return ChunkStream(result, on_close=lambda: _remove(temp_files))
            if is_response_object(result):
                raise refuse_response(result)
            return Prediction(to_json(result))
        finally:
            if not handed_over:
                _remove(temp_files)

    def _file_input(self, input_value: Any, temp_files: list[Path]) -> str:
        data = decode_file_input(input_value, self.max_file_bytes)
        fd, name = tempfile.mkstemp(
            prefix="cormorant-input-", suffix=_suffix(data), dir=self.temp_dir
        )
        temp_files.append(Path(name))
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return name


def decode_file_input(input_value: Any, max_bytes: int) -> bytes:
    """The file content carried by a Base64 string (or raw ``bytes``), within ``max_bytes``."""
    if isinstance(input_value, bytes | bytearray | memoryview):
        data = bytes(input_value)
    elif isinstance(input_value, str):
        text = input_value
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        text = "".join(text.split())
        # Refuse before decoding, so a huge body never doubles in memory.
        estimate = len(text) * 3 // 4 - text[-2:].count("=")
        if estimate > max_bytes:
            raise FileTooLarge(estimate, max_bytes)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidInput(
                f"this endpoint takes a file: the input must be a Base64 string ({exc})"
            ) from exc
    else:
        raise InvalidInput(
            "this endpoint takes a file: the input must be a Base64 string, "
            f"not {_json_type(input_value)}"
        )
    if len(data) > max_bytes:
        raise FileTooLarge(len(data), max_bytes)
    return data


def spread(value: Any) -> tuple[Any, ...]:
    """Positional arguments for ``value``: a list or tuple is spread, anything else is one."""
    if isinstance(value, list | tuple):
        return tuple(value)
    return (value,)


def _call(
    function: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], stage: str
) -> Any:
    try:
        result = function(*args, **kwargs)
        if isinstance(result, Coroutine):
            # An ``async def`` predict runs to completion here, on this thread's own loop.
            result = asyncio.run(result)
    except CormorantError:
        # Raised on purpose (e.g. by the SDK's log_metric): keep its status and message.
        raise
    except TypeError as exc:
        # Arguments that do not bind are the caller's mistake (400), not the model failing;
        # a TypeError raised inside the function is the model's own (500).
        check_binding(function, args, kwargs, stage)
        raise FunctionRaised(stage, exc) from exc
    except (Exception, SystemExit) as exc:
        raise FunctionRaised(stage, exc) from exc
    return result


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    paths.clear()


def _suffix(data: bytes) -> str:
    for magic, suffix in _MAGIC_SUFFIXES:
        if data.startswith(magic):
            return suffix
    if data[:4] == b"RIFF" and data[8:12] in (b"WAVE", b"WEBP"):
        return ".wav" if data[8:12] == b"WAVE" else ".webp"
    return ""


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"
