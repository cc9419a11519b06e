"""Calling predict as the product specifies: input spreading, files, results, streams, errors."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cormorant.common.errors import InvalidPrediction, PayloadTooLarge
from cormorant.common.predictor import (
    END,
    ArgumentsDoNotFit,
    ChunkStream,
    FunctionRaised,
    InvalidInput,
    Prediction,
    Predictor,
)


def value_of(predictor: Predictor, input_value: Any) -> Any:
    outcome = predictor.predict(input_value)
    assert isinstance(outcome, Prediction)
    return outcome.value


def echo_args(*args: Any) -> list[Any]:
    return list(args)


@pytest.mark.parametrize(
    ("input_value", "received"),
    [
        ([1, 2, 3], [1, 2, 3]),
        ([[1, 2, 3]], [[1, 2, 3]]),
        ([], []),
        ("a sentence", ["a sentence"]),
        (7, [7]),
        (2.5, [2.5]),
        (None, [None]),
        ({"a": 1}, [{"a": 1}]),
        (True, [True]),
    ],
)
def test_input_is_passed_exactly_as_entered(input_value: Any, received: list[Any]) -> None:
    """A JSON list is spread as positional arguments; anything else is a single argument."""
    assert value_of(Predictor(echo_args), input_value) == received


def test_bytes_input_is_one_argument_as_is() -> None:
    """A Kafka message value (bytes) reaches predict unchanged, as one argument."""
    seen: list[Any] = []

    def predict(value: bytes) -> int:
        seen.append(value)
        return len(value)

    assert value_of(Predictor(predict), b'{"x": 1}') == 8
    assert seen == [b'{"x": 1}']


def test_preprocess_output_becomes_predict_input_with_the_same_rule() -> None:
    """preprocess gets the input as entered; a list it returns is spread into predict."""

    def preprocess(text: str) -> list[Any]:
        return [text.upper(), len(text)]

    def predict(word: str, size: int) -> str:
        return f"{word}:{size}"

    assert value_of(Predictor(predict, preprocess=preprocess), "abc") == "ABC:3"


def test_preprocess_scalar_output_is_one_argument() -> None:
    """A non-list preprocess output is passed to predict as one argument."""
    predictor = Predictor(echo_args, preprocess=lambda a, b: {"sum": a + b})
    assert value_of(predictor, [1, 2]) == [{"sum": 3}]


def test_accepts_file_passes_a_temporary_path_and_deletes_it() -> None:
    """A Base64 input is written to a temporary file whose path predict reads; then removed."""
    paths: list[str] = []

    def predict(path: str) -> str:
        paths.append(path)
        return Path(path).read_bytes().decode()

    predictor = Predictor(predict, accepts_file=True)
    assert value_of(predictor, base64.b64encode(b"hello file").decode()) == "hello file"
    assert not os.path.exists(paths[0])


def test_accepts_file_keeps_a_png_suffix_and_allows_data_urls() -> None:
    """An image keeps a matching extension; a data: URL prefix is accepted."""
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    predictor = Predictor(lambda path: Path(path).suffix, accepts_file=True)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    assert value_of(predictor, url) == ".png"


def test_file_is_deleted_when_predict_raises() -> None:
    """The temporary file goes away even when predict fails."""
    paths: list[str] = []

    def predict(path: str) -> None:
        paths.append(path)
        raise RuntimeError("bad image")

    predictor = Predictor(predict, accepts_file=True)
    with pytest.raises(FunctionRaised):
        predictor.predict(base64.b64encode(b"x").decode())
    assert not os.path.exists(paths[0])


@pytest.mark.parametrize("bad", ["not base64 !!", "abc", 42, [1, 2], None])
def test_bad_base64_or_non_string_is_a_400(bad: Any) -> None:
    """An input that is not a Base64 string is refused with a clear 400."""
    predictor = Predictor(lambda path: path, accepts_file=True)
    with pytest.raises(InvalidInput, match="Base64") as caught:
        predictor.predict(bad)
    assert caught.value.status_code == 400


def test_file_over_the_limit_is_a_413() -> None:
    """A decoded file larger than max_file_bytes is refused with 413 before predict runs."""
    predictor = Predictor(lambda path: path, accepts_file=True, max_file_bytes=10)
    with pytest.raises(PayloadTooLarge) as caught:
        predictor.predict(base64.b64encode(b"x" * 11).decode())
    assert caught.value.status_code == 413


def test_raw_bytes_with_accepts_file_are_written_as_is() -> None:
    """With accepts_file, bytes input (a Kafka message) is the file content itself."""
    predictor = Predictor(lambda path: Path(path).read_bytes().decode(), accepts_file=True)
    assert value_of(predictor, b"raw") == "raw"


def test_numpy_and_tuples_become_json() -> None:
    """numpy scalars and arrays and tuples are converted to plain JSON values."""

    def predict() -> Any:
        return {
            "array": np.arange(3),
            "scalar": np.float32(0.5),
            "int": np.int64(7),
            "flag": np.bool_(True),
            "pair": (1, "a"),
            "matrix": np.eye(2),
        }

    assert value_of(Predictor(predict), []) == {
        "array": [0, 1, 2],
        "scalar": 0.5,
        "int": 7,
        "flag": True,
        "pair": [1, "a"],
        "matrix": [[1.0, 0.0], [0.0, 1.0]],
    }


def test_bytes_result_is_text_or_base64() -> None:
    """bytes become UTF-8 text when valid, Base64 otherwise."""
    assert value_of(Predictor(lambda: "é".encode()), []) == "é"
    assert value_of(Predictor(lambda: b"\xff\x00"), []) == base64.b64encode(b"\xff\x00").decode()


class FakeResponse:
    def __init__(self) -> None:
        self.status_code = 200
        self.headers: dict[str, str] = {}


class Response:
    """Named like every framework's response class."""


@pytest.mark.parametrize("returned", [FakeResponse(), Response()])
def test_framework_response_is_refused(returned: object) -> None:
    """Returning a web framework response is refused: the worker builds the HTTP answer."""
    with pytest.raises(InvalidPrediction, match="return the data, not a Response"):
        Predictor(lambda: returned).predict([])


def test_unconvertible_result_names_its_place() -> None:
    """A value JSON cannot carry is refused, saying where it sits in the result."""
    with pytest.raises(InvalidPrediction, match=r"prediction\['model'\] is a .*object"):
        Predictor(lambda: {"model": object()}).predict([])


def test_raising_predict_is_a_predict_error_with_type_and_message() -> None:
    """An exception in predict becomes a 500 predict_error carrying its type and message."""

    def predict(x: int) -> None:
        raise ValueError(f"bad value {x}")

    with pytest.raises(FunctionRaised) as caught:
        Predictor(predict).predict(3)
    assert caught.value.message == "ValueError: bad value 3"
    assert caught.value.status_code == 500
    assert caught.value.code == "predict_error"
    assert caught.value.exception_type == "ValueError"


def test_arguments_that_do_not_bind_are_the_callers_mistake() -> None:
    """Spread arguments that do not fit the signature: 400 naming it; a TypeError raised
    inside the function stays the function's failure (500)."""
    with pytest.raises(ArgumentsDoNotFit, match=r"does not fit predict\(a\): too many") as caught:
        Predictor(lambda a: a).predict([1, 2, 3])
    assert caught.value.status_code == 400

    def inner(a: int) -> int:
        return a + "x"  # type: ignore[operator]

    with pytest.raises(FunctionRaised, match="TypeError: unsupported operand") as raised:
        Predictor(inner).predict(1)
    assert raised.value.status_code == 500
    with pytest.raises(ArgumentsDoNotFit, match="missing a required argument: 'b'"):
        Predictor(lambda a, b: a).call((1,), {})
    assert Predictor(lambda a, b=2: a + b).call((1,), {"b": 5}) == Prediction(6)


def test_raising_preprocess_names_the_stage() -> None:
    """An exception in preprocess is reported as coming from preprocess."""

    def preprocess(_: Any) -> None:
        raise KeyError("column")

    with pytest.raises(FunctionRaised, match="preprocess raised KeyError") as caught:
        Predictor(echo_args, preprocess=preprocess).predict(1)
    assert caught.value.stage == "preprocess"


def test_async_predict_runs_to_completion() -> None:
    """An async def predict is awaited and its result returned."""

    async def predict(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    assert value_of(Predictor(predict), 1) == 2


def test_generator_result_streams_converted_chunks() -> None:
    """A generator is a stream: each chunk is produced on demand and converted to JSON."""
    produced: list[int] = []

    def predict(n: int) -> Iterator[Any]:
        for i in range(n):
            produced.append(i)
            yield np.int64(i)

    stream = Predictor(predict).predict(3)
    assert isinstance(stream, ChunkStream)
    assert produced == []
    assert stream.next_chunk() == 0
    assert produced == [0]
    assert list(stream) == [1, 2]
    assert stream.next_chunk() is END


def test_async_generator_result_streams() -> None:
    """An async generator is a stream too, iterated without the caller's event loop."""

    async def predict(n: int) -> AsyncIterator[int]:
        for i in range(n):
            await asyncio.sleep(0)
            yield i * 10

    with Predictor(predict).predict(3) as stream:
        assert isinstance(stream, ChunkStream)
        assert list(stream) == [0, 10, 20]


def test_generator_raising_midway_is_a_predict_error() -> None:
    """A generator that raises after some chunks ends the stream with a predict error."""

    def predict() -> Iterator[int]:
        yield 1
        raise RuntimeError("out of tokens")

    stream = Predictor(predict).predict([])
    assert isinstance(stream, ChunkStream)
    assert stream.next_chunk() == 1
    with pytest.raises(FunctionRaised, match="RuntimeError: out of tokens"):
        stream.next_chunk()
    assert stream.next_chunk() is END


def test_closing_a_stream_stops_the_generator_and_deletes_the_file() -> None:
    """Closing a stream early runs the generator's cleanup and removes the input file."""
    events: list[str] = []

    def predict(path: str) -> Iterator[str]:
        events.append(path)
        try:
            yield "first"
            yield "second"
        finally:
            events.append("closed")

    stream = Predictor(predict, accepts_file=True).predict(base64.b64encode(b"x").decode())
    assert isinstance(stream, ChunkStream)
    assert stream.next_chunk() == "first"
    assert os.path.exists(events[0])
    stream.close()
    assert events[1] == "closed"
    assert not os.path.exists(events[0])


def test_stream_close_waits_for_a_chunk_in_progress() -> None:
    """close from another thread waits for the running chunk instead of breaking it."""
    started = threading.Event()
    release = threading.Event()

    def predict() -> Iterator[str]:
        started.set()
        release.wait(5)
        yield "slow"

    stream = Predictor(predict).predict([])
    assert isinstance(stream, ChunkStream)
    results: list[Any] = []
    worker = threading.Thread(target=lambda: results.append(stream.next_chunk()))
    worker.start()
    started.wait(5)
    closer = threading.Thread(target=stream.close)
    closer.start()
    release.set()
    worker.join(5)
    closer.join(5)
    assert results == ["slow"]
    assert stream.next_chunk() is END
