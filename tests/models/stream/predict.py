"""A stream model: each message value is JSON ``{"id": ..., "n": ...}`` as bytes.

``predict`` answers the id and twice ``n``; ``slow`` does the same after sleeping
``STREAM_DELAY_MS`` milliseconds (set through the endpoint's ``env``), so lag builds up.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

DELAY = float(os.environ.get("STREAM_DELAY_MS", "0")) / 1000


def predict(value: bytes) -> dict[str, Any]:
    """The id and twice ``n``."""
    if not isinstance(value, bytes):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    message = json.loads(value)
    return {"id": message["id"], "double": 2 * message.get("n", 0)}


def slow(value: bytes) -> dict[str, Any]:
    """``predict`` after a pause of ``STREAM_DELAY_MS``."""
    time.sleep(DELAY)
    return predict(value)
