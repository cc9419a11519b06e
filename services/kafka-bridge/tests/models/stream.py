"""Test models of the kafka-bridge: message values are JSON ``{"id": ..., ...}`` as bytes.

- ``predict``: ``{"id": id, "double": 2 * n}``; raises on ``"poison": true`` messages.
- ``slow``: as ``predict`` after sleeping ``STREAM_DELAY_MS`` (env) or the message's ``sleep``.
- ``echo``: returns the value's bytes unchanged (passed through as the output message).
- ``chunks``: a generator of two chunks.
- ``flaky``: fails on the first try of each message, succeeds on the second.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

DELAY = float(os.environ.get("STREAM_DELAY_MS", "0")) / 1000
_tries: dict[int, int] = {}
_lock = threading.Lock()


def predict(value: bytes) -> dict[str, Any]:
    """The id and twice ``n``; a poison message raises."""
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    message = json.loads(value)
    if message.get("poison"):
        raise ValueError(f"poison message {message['id']}")
    return {"id": message["id"], "double": 2 * message.get("n", 0)}


def slow(value: bytes) -> dict[str, Any]:
    """``predict`` after a pause."""
    message = json.loads(value)
    time.sleep(float(message.get("sleep", DELAY)))
    return predict(value)


def echo(value: bytes) -> bytes:
    """The message itself."""
    return value


def chunks(value: bytes) -> Iterator[dict[str, Any]]:
    """Two chunks per message."""
    message = json.loads(value)
    yield {"id": message["id"], "part": 1}
    yield {"id": message["id"], "part": 2}


def flaky(value: bytes) -> dict[str, Any]:
    """Raises the first time it sees a message id."""
    message = json.loads(value)
    with _lock:
        tries = _tries[message["id"]] = _tries.get(message["id"], 0) + 1
    if tries == 1:
        raise ConnectionError("feature store timed out")
    return predict(value)
